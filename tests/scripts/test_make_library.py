"""scripts/make_library.py and scripts/scale_ingest.sh (issue 6): the book library for the ingest
throughput runs, made from source files given as paths, and the runs themselves on CPU."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import make_library

ROOT = Path(__file__).resolve().parents[2]

NOVEL = "Title line\n\nChapter 1\n\n" + "\n\n".join(
    f"Paragraph {i} of the novel, in which Elizabeth walks to Netherfield for the {i}th time."
    for i in range(60)
)
CONTEXTS = [
    f"Context {i}: the Normans gave their name to Normandy, a region in France, in year {i}."
    for i in range(40)
]


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny novel and a tiny SQuAD file in the real layouts, standing in for ../shared/data."""
    novel, squad = tmp_path / "novel.txt", tmp_path / "squad.json.gz"
    novel.write_text(NOVEL, encoding="utf-8")
    data = {"data": [{"title": "Normans", "paragraphs": [{"context": c, "qas": []} for c in CONTEXTS]}]}
    with gzip.open(squad, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    return novel, squad


def test_books_are_seeded_shuffles_of_both_sources(sources):
    pool = make_library.paragraphs(*sources)
    assert len(pool) == 60 + 40 and pool[0].startswith("Paragraph 0") and pool[-1].startswith("Context 39")
    first, again, second = (make_library.book_blocks(pool, i, seed=0, pages=2) for i in (0, 0, 1))
    assert first == again and first != second
    assert first[0] == ("title", "Library Book 001") and ("chapter", "Chapter 1") in first
    text = [t for kind, t in first if kind == "paragraph"]
    assert sum(map(len, text)) >= 2 * make_library.CHARS_PER_PAGE
    assert len(set(text)) == len(text)  # a book shorter than the sources repeats no paragraph


def test_a_book_longer_than_its_sources_repeats_them(sources):
    pool = make_library.paragraphs(*sources)
    blocks = make_library.book_blocks(pool, 0, seed=0, pages=20)
    assert sum(len(t) for k, t in blocks if k == "paragraph") >= 20 * make_library.CHARS_PER_PAGE


@pytest.mark.slow
def test_library_then_scale_run_on_cpu(tmp_path, sources):
    from ingest.extract import extract

    novel, squad = sources
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    make = [sys.executable, "-m", "scripts.make_library", "--books", "3", "--pages", "2", "--jobs", "2"]
    make += ["--novel", str(novel), "--squad", str(squad), "--out"]
    done = subprocess.run(
        [*make, str(tmp_path / "lib")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 3 books" in done.stdout and "to render one" in done.stdout
    books = sorted((tmp_path / "lib").glob("*.pdf"))
    assert [b.name for b in books] == ["book_000.pdf", "book_001.pdf", "book_002.pdf"]
    assert len({b.read_bytes() for b in books}) == 3
    subprocess.run([*make, str(tmp_path / "again")], cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert [b.read_bytes() for b in books] == [
        b.read_bytes() for b in sorted((tmp_path / "again").glob("*.pdf"))
    ]
    parsed = extract(books[1])
    assert parsed.title == "Library Book 002" and parsed.n_pages >= 2

    env |= {
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
    }
    env |= {"DOCQA_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    command = ["bash", "scripts/scale_ingest.sh", str(tmp_path / "lib"), "1", "--workers", "1"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    header, line = done.stdout.splitlines()
    assert header.split()[:5] == ["gpus", "documents", "seconds", "documents/s", "tokens/s"]
    run = json.loads((tmp_path / "out" / "ingest_scale_1.json").read_text())
    assert (run["gpus"], run["exit_code"], run["new"], run["failed"], run["workers"]) == (1, 0, 3, [], [1])
    assert run["documents_per_s"] > 0 and run["tokens_per_s"] > 0 and "documents" not in run
    assert line.split()[:2] == ["1", "3"]
    assert not list(tmp_path.glob("scale_ingest.*"))  # the throwaway store is gone
