"""Hugging Face Space / local entry point: `python app.py` does what `python -m app serve` does.

Builds the library object and the page over it (app.serve.create_app) and serves them; host and port
come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT / PORT (see app/settings.py). At module level `demo`
exists for tools that look for it (e.g. `gradio app.py` reload mode).
"""

from __future__ import annotations

from app.serve import create_app, launch
from app.settings import Settings

settings = Settings.from_env()
qa, demo = create_app(settings, preingest=__name__ == "__main__")

if __name__ == "__main__":
    raise SystemExit(launch(demo, settings))
