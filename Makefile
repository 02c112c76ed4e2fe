# Common commands. The README's two set-up commands are the reference; these are shortcuts.
PY ?= .venv/bin/python

.PHONY: install test lint format serve bench sample-pdf

install:
	python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check app model ingest tests scripts app.py

format:
	$(PY) -m ruff format app model ingest tests scripts app.py

serve:
	$(PY) app.py

bench:
	$(PY) -m model.bench --device cuda --backward --json docs/bench.json --plot docs/bench.png

sample-pdf:
	$(PY) -m scripts.make_sample_pdf
