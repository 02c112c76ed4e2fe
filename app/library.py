"""The library: who sees which stored document, deletion, and the stored chunks as evidence passages.

Every call names an owner (a browser, "local" for the CLI and the API; None means every document).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

from app.types import Evidence
from ingest.store import DocumentInfo, DocumentStore, StoreError
from ingest.types import Chunk

MEMO_DOCUMENTS = 32  # documents whose chunks stay in memory (answers read them many times)


class Library:
    """Documents of the store seen by owners, and their chunks as Evidence. Thread-safe.

    Args:
        store: the document store.
        on_forget: called with a document id once its last owner is gone (the retrievers drop what
            they hold in memory for it).
    """

    def __init__(self, store: DocumentStore, on_forget: Sequence[Callable[[str], None]] = ()) -> None:
        self.store = store
        self.on_forget = list(on_forget)
        self._memo_lock = threading.Lock()
        self._memo: dict[str, tuple[str, list[Chunk], list[int]]] = {}

    def documents(self, owner: str | None = "local") -> list[DocumentInfo]:
        """Documents visible to `owner` (every document when owner is None), newest first."""
        return self.store.list(owner)

    def delete(self, doc_id: str, owner: str | None = "local") -> None:
        """Forget a document for `owner`; its data goes when no owner is left."""
        self.store.delete(doc_id, owner)
        if not self.store.has(doc_id):
            for forget in self.on_forget:
                forget(doc_id)
            with self._memo_lock:
                self._memo.pop(doc_id, None)

    def doc_ids(self, docs: Sequence[str] | None, owner: str | None) -> list[str]:
        """The documents a question is asked of: `docs` (each must be visible to `owner`), or all of the
        owner's. ValueError when the owner has none; StoreError for an unknown or foreign id."""
        if docs is None:
            ids = [d.id for d in self.store.list(owner)]
            if not ids:
                raise ValueError("no documents yet: add one first")
            return ids
        for doc_id in docs:
            if not self.store.visible(doc_id, owner):
                raise StoreError(f"no document {doc_id!r}")
        return list(docs)

    def evidence(self, doc_id: str, idx: int, score: float) -> Evidence:
        """Chunk `idx` of a document as an evidence passage with `score`."""
        title, chunks, _ = self._chunks(doc_id)
        chunk = chunks[idx]
        return Evidence(
            doc_id=doc_id,
            title=title,
            chunk_index=idx,
            text=chunk.text,
            page_start=chunk.page_start,
            page_end=chunk.page_end,
            char_start=chunk.char_start,
            char_end=chunk.char_end,
            score=score,
        )

    def texts(self, doc_id: str) -> list[str]:
        """The text of every chunk of a document, in order."""
        return [c.text for c in self._chunks(doc_id)[1]]

    def page_of(self, doc_id: str, offset: int) -> int:
        """1-based page of a char offset in the document text."""
        return bisect.bisect_right(self._chunks(doc_id)[2], offset)

    def _chunks(self, doc_id: str) -> tuple[str, list[Chunk], list[int]]:
        """(title, chunks, page starts) of a document, memoised."""
        with self._memo_lock:
            if doc_id not in self._memo:
                page_starts = self.store.text(doc_id)[1]
                self._memo[doc_id] = (self.store.info(doc_id).title, self.store.chunks(doc_id), page_starts)
                while len(self._memo) > MEMO_DOCUMENTS:
                    self._memo.pop(next(iter(self._memo)))
            return self._memo[doc_id]
