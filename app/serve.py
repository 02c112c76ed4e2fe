"""Start the web app: `python -m app serve` and `python app.py` both end up in `launch` here.

The sample novel is ingested in a background thread at start-up (owner "sample"), so that a visitor's
"load the sample" click usually only adds them as an owner of the stored copy.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from app.docqa import DocQA, StageProgress
from app.settings import Settings
from app.types import IngestReport
from ingest.errors import IngestError

if TYPE_CHECKING:
    import gradio as gr

SAMPLE_PDF = Path(__file__).resolve().parent.parent / "assets" / "pride_and_prejudice.pdf"
log = logging.getLogger(__name__)


class SampleBook:
    """The sample document, shared by every visitor: ingested once, each visitor added as an owner.

    Args:
        qa: the app's library object.
        path: the sample file (the app hides its sample button when the file is missing).
    """

    OWNER = "sample"

    def __init__(self, qa: DocQA, path: Path = SAMPLE_PDF) -> None:
        self.qa = qa
        self.path = Path(path)
        self._thread: threading.Thread | None = None
        self._stage: tuple[str, int, int] | None = None

    @property
    def available(self) -> bool:
        return self.path.is_file()

    def start(self) -> threading.Thread | None:
        """Ingest the sample in a daemon thread (once); returns the thread, None without a sample file."""
        if self._thread is None and self.available:
            self._thread = threading.Thread(target=self._ingest, name="sample-ingest", daemon=True)
            self._thread.start()
        return self._thread

    def _ingest(self) -> None:
        try:
            self.qa.ingest(self.path, progress=self._record, owner=self.OWNER)
        except IngestError as err:  # a visitor's click retries and shows the message
            log.warning("sample pre-ingest failed: %s", err)

    def _record(self, stage: str, done: int, total: int) -> None:
        self._stage = (stage, done, total)

    def wait(self, progress: StageProgress | None = None) -> None:
        """Block until the background ingest is over, relaying its progress (DocQA ingests one file at
        a time, so any other ingest waits for it too)."""
        thread = self._thread
        while thread is not None and thread.is_alive():
            if progress is not None and self._stage is not None:
                progress(*self._stage)
            thread.join(timeout=0.5)

    def load(self, owner: str, progress: StageProgress | None = None) -> IngestReport:
        """Make the sample visible to `owner` (after the background ingest, if one is running)."""
        self.wait(progress)
        return self.qa.ingest(self.path, progress=progress, owner=owner)


def create_app(
    settings: Settings | None = None, sample_path: str | Path = SAMPLE_PDF, preingest: bool = False
) -> tuple[DocQA, gr.Blocks]:
    """Build the library object and the web page over it.

    Args:
        sample_path: the document behind the "try the sample" button.
        preingest: start ingesting the sample in the background now.
    """
    settings = settings or Settings.from_env()
    # Uploads land in the app data folder, not in the system's /tmp/gradio (an explicit setting wins);
    # set before gradio is imported, which reads it.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.home / "uploads"))
    from app.ui import build_ui

    qa = DocQA(settings=settings)
    sample = SampleBook(qa, Path(sample_path))
    if preingest:
        sample.start()
    return qa, build_ui(qa, settings, sample=sample)


def launch(
    demo: gr.Blocks, settings: Settings, host: str | None = None, port: int | None = None, **kwargs
) -> int:
    """Serve `demo` (blocking unless kwargs say prevent_thread_lock=True); host/port default to settings."""
    from app.ui import launch_options

    demo.queue().launch(
        server_name=host or settings.host,
        server_port=port or settings.port,
        **launch_options(settings),
        **kwargs,
    )
    return 0


def serve(host: str | None = None, port: int | None = None) -> int:
    """`python -m app serve`: build the app, pre-ingest the sample, serve until interrupted."""
    settings = Settings.from_env()
    _, demo = create_app(settings, preingest=True)
    return launch(demo, settings, host, port)
