"""One document's way into the store: extract -> clean -> chunk -> index -> store.

- `prepare_file` / `prepare_text` run the CPU stages (extraction with cleaning, chunking) and time them.
  DocQA runs them in its own process; `ingest-many` runs them in worker processes.
- `Pipeline.store` runs the index stages (each `Indexer`: FAISS windows, the BSBR cache) and the
  store's atomic write. The same bytes are stored once: a second ingest only adds an owner.

Nothing here imports the models: the indexers are handed in (app/retrievers.py makes them).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ingest.errors import EmptyDocumentError, FileMissingError, LimitExceededError
from ingest.store import ArtifactWriter, DocumentInfo, DocumentStore
from ingest.types import Chunk, ParsedDocument

StageProgress = Callable[[str, int, int], None]  # progress(stage, done, total)


class Limits(Protocol):
    """The input limits a pipeline enforces (app.settings.Settings has them)."""

    max_file_mb: int
    max_pages: int
    max_chars: int
    max_extract_seconds: int


class Indexer(Protocol):
    """One index stage: the files it adds to a document's folder, built from its chunks."""

    stage: str  # its name in progress callbacks and in the document's timings

    def index(
        self, chunks: list[Chunk], progress: Callable[[int, int], None] | None
    ) -> dict[str, ArtifactWriter]:
        """File name -> writer of that file, for a document made of `chunks`."""
        ...


@dataclass
class Prepared:
    """A document after the CPU stages: what the index stages and the store need."""

    doc_id: str
    parsed: ParsedDocument
    chunks: list[Chunk]
    timings: dict[str, float]  # seconds of each stage run so far ("extract", "chunk")


@dataclass
class Stored:
    """The outcome of an ingest: the stored document, the seconds it took, and whether it is new."""

    info: DocumentInfo
    seconds: float
    new: bool


def check_file(path: Path, limits: Limits) -> Path:
    """`path` if it is a file within the size limit; else FileMissingError / LimitExceededError."""
    if not path.is_file():
        raise FileMissingError(str(path), "no such file")
    size_mb = path.stat().st_size / 2**20
    if size_mb > limits.max_file_mb:
        raise LimitExceededError(
            str(path), f"file is {size_mb:.0f} MB, over the {limits.max_file_mb} MB limit"
        )
    return path


def file_id(path: Path) -> str:
    """Content-hash document id: the same bytes give the same id, whatever the file is called."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def text_id(text: str) -> str:
    """Content-hash id of a raw text document."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def extract_file(path: Path, limits: Limits, password: str | None = None) -> ParsedDocument:
    """pypdf/text extraction and cleaning of `path` under the limits (too many pages are refused before
    any is read)."""
    from ingest.extract import extract

    return extract(
        path,
        password=password,
        max_pages=limits.max_pages,
        max_chars=limits.max_chars,
        max_seconds=limits.max_extract_seconds,
    )


def chunk_parsed(parsed: ParsedDocument) -> list[Chunk]:
    """The document's chunks; EmptyDocumentError when no chunk holds a word-piece (e.g. only zero-width
    or replacement characters)."""
    from ingest.chunk import chunk_document

    chunks = chunk_document(parsed)
    if not any(c.n_tokens for c in chunks):
        raise EmptyDocumentError(parsed.path, "no readable words to index")
    return chunks


def prepare_file(
    path: Path,
    limits: Limits,
    password: str | None = None,
    progress: StageProgress | None = None,
    doc_id: str | None = None,
) -> Prepared:
    """Check, extract (with cleaning) and chunk a file. Raises IngestError for unreadable input."""
    check_file(path, limits)
    t = time.perf_counter()
    parsed = extract_file(path, limits, password)
    _tick(progress, "extract", parsed.n_pages)
    return _chunked(doc_id or file_id(path), parsed, {"extract": time.perf_counter() - t}, progress)


def prepare_text(text: str, title: str = "text", progress: StageProgress | None = None) -> Prepared:
    """Raw text as a one-page document, kept exactly as given (offsets into it stay valid)."""
    if not text.strip():
        raise EmptyDocumentError(title, "the text is empty")
    parsed = ParsedDocument(path=f"{title}.txt", title=title, text=text, page_starts=[0], n_pages=1)
    return _chunked(text_id(text), parsed, {"extract": 0.0}, progress)


def _chunked(doc_id: str, parsed: ParsedDocument, timings: dict, progress: StageProgress | None) -> Prepared:
    t = time.perf_counter()
    chunks = chunk_parsed(parsed)
    timings["chunk"] = time.perf_counter() - t
    _tick(progress, "chunk", len(chunks))
    return Prepared(doc_id, parsed, chunks, timings)


class Pipeline:
    """Ingests documents into `store`, building every indexer's files. Thread-safe: the same document
    ingested twice at once is stored once, while different documents ingest side by side (a visitor's
    upload never waits for the sample book).

    The indexers run in turn: running them at once in threads made the book's ingest slower on an H100
    (2.5-2.7 s against 1.75-1.86 s, docs/BENCHMARKS.md)."""

    def __init__(self, store: DocumentStore, indexers: Sequence[Indexer], limits: Limits) -> None:
        self.store = store
        self.indexers = list(indexers)
        self.limits = limits
        self._locks_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, doc_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(doc_id, threading.Lock())

    def ingest_file(
        self,
        path: Path,
        owner: str,
        password: str | None = None,
        progress: StageProgress | None = None,
    ) -> Stored:
        """Every stage for a file; a stored copy of the same bytes is only claimed for `owner`."""
        path = check_file(Path(path), self.limits)
        start = time.perf_counter()
        doc_id = file_id(path)
        with self._lock(doc_id):
            if self.store.has(doc_id):
                return self._claim(doc_id, owner, start)
            prepared = prepare_file(path, self.limits, password, progress, doc_id=doc_id)
            return self._store(prepared, owner, progress, start)

    def ingest_text(self, text: str, title: str, owner: str, progress: StageProgress | None = None) -> Stored:
        """Every stage for raw text (one page)."""
        if not text.strip():
            raise EmptyDocumentError(title, "the text is empty")
        start = time.perf_counter()
        doc_id = text_id(text)
        with self._lock(doc_id):
            if self.store.has(doc_id):
                return self._claim(doc_id, owner, start)
            return self._store(prepare_text(text, title, progress), owner, progress, start)

    def store_prepared(self, prepared: Prepared, owner: str) -> Stored:
        """The index stages and the store write of a document prepared elsewhere (ingest-many's
        workers); its seconds include the CPU stages' timings. A copy stored meanwhile is only claimed."""
        start = time.perf_counter() - sum(prepared.timings.values())
        with self._lock(prepared.doc_id):
            if self.store.has(prepared.doc_id):
                return self._claim(prepared.doc_id, owner, time.perf_counter())
            prepared = Prepared(prepared.doc_id, prepared.parsed, prepared.chunks, dict(prepared.timings))
            return self._store(prepared, owner, None, start)

    def claim(self, doc_id: str, owner: str) -> bool:
        """Add `owner` to a stored document; False when there is no such document."""
        if not self.store.has(doc_id):
            return False
        self.store.add_owner(doc_id, owner)
        return True

    def _store(self, prepared: Prepared, owner: str, progress: StageProgress | None, start: float) -> Stored:
        timings, artifacts = prepared.timings, {}

        def run(indexer: Indexer) -> tuple[dict[str, ArtifactWriter], float]:
            t = time.perf_counter()
            return indexer.index(prepared.chunks, _stage(progress, indexer.stage)), time.perf_counter() - t

        for indexer in self.indexers:
            writers, seconds = run(indexer)
            artifacts.update(writers)
            timings[indexer.stage] = seconds
        self.store.add(prepared.doc_id, prepared.parsed, prepared.chunks, artifacts, owner, timings)
        return Stored(self.store.info(prepared.doc_id), time.perf_counter() - start, new=True)

    def _claim(self, doc_id: str, owner: str, start: float) -> Stored:
        self.store.add_owner(doc_id, owner)
        return Stored(self.store.info(doc_id), time.perf_counter() - start, new=False)


def _tick(progress: StageProgress | None, stage: str, total: int) -> None:
    if progress is not None:
        progress(stage, total, total)


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
