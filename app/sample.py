"""The sample novel shared by every visitor: ingested once in the background, each visitor added as an
owner of the stored copy (so "load the sample" usually only adds the visitor)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from app.docqa import DocQA
from app.types import IngestReport
from ingest.errors import IngestError
from ingest.pipeline import StageProgress

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
