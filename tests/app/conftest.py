"""Shared fixtures for the web-app tests: small generated PDFs and one running app per test session.

The app runs in-process (a real DocQA over a temporary DOCQA_HOME, Gradio in a server thread) so that
its sample button can point at a tiny PDF instead of the whole novel (2 CPU cores: keep ingest small).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fpdf import FPDF

FACT = "The lighthouse keeper of Brightwater is Amelia Thornbury."
QUESTION = "Who is the lighthouse keeper of Brightwater?"
ANSWER_NAME = "Amelia Thornbury"
MAX_FILE_MB = 1  # small, so that the upload limit can be tested with a small file
_FILLER = {
    1: (
        "The village of Brightwater lies on a rocky coast. Fishing boats leave the harbour at dawn and "
        "come back at dusk with mackerel and crab. The market on the square sells bread, cheese and "
        "smoked fish, and the baker opens before anyone else is awake."
    ),
    2: (
        f"{FACT} She climbs the tower every evening to light the great lamp, and she keeps a logbook of "
        "every ship that passes the headland. Her cottage stands at the foot of the tower."
    ),
    3: (
        "In winter the storms are fierce. The school closes for a week in January and the children build "
        "snowmen on the green near the old church, whose bell was cast two hundred years ago."
    ),
}


def _pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF(format=(148, 210))  # A5 in mm
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        for _ in range(3):  # long enough pages that chunks do not all span the whole document
            pdf.multi_cell(0, 6, text)
            pdf.ln(3)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="session")
def brightwater_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three pages; the distinctive fact is on page 2."""
    folder = tmp_path_factory.mktemp("docs")
    return _pdf(folder / "brightwater.pdf", [_FILLER[1], _FILLER[2], _FILLER[3]])


@pytest.fixture(scope="session")
def notes_md(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("notes") / "harbour_notes.md"
    path.write_text(
        "# Harbour notes\n\nThe harbour master of Brightwater is Tobias Reed.\n", encoding="utf-8"
    )
    return path


@pytest.fixture(scope="session")
def sample_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for the sample novel (ingesting the real book takes minutes on 2 cores)."""
    folder = tmp_path_factory.mktemp("sample")
    return _pdf(
        folder / "tiny_novel.pdf",
        [
            "It is a truth universally acknowledged that Netherfield Park "
            "is let at last, to a young man named Mr. Bingley."
        ],
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RunningApp:
    url: str
    methods: tuple[str, ...]  # what the page answers with by default (DocQA.shown; not BM25 alone)


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path) -> Iterator[RunningApp]:
    """A running app (real DocQA, DOCQA_HOME in a temp folder, sample pre-ingest started)."""
    from app.serve import create_app, launch
    from app.settings import Settings

    settings = dataclasses.replace(
        Settings.from_env(),
        home=tmp_path_factory.mktemp("docqa-home"),
        host="127.0.0.1",
        port=free_port(),
        max_file_mb=MAX_FILE_MB,
    )
    qa, demo = create_app(settings, sample_path=sample_pdf, preingest=True)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield RunningApp(f"http://127.0.0.1:{settings.port}/", tuple(qa.shown))
    finally:
        demo.close()
        qa.store.close()
