"""The document store on disk: SQLite for documents and chunks, one folder of arrays per document.

Layout under `home` (DOCQA_HOME, default ~/.cache/bsbr-docqa):
    store.sqlite3           documents, chunks, owners (who may see a document), format version
    docs/<doc_id>/          arrays of one document (faiss.index, bsbr_cache.<model>.safetensors, ...)
    tmp/                    staging area; anything left here after a crash is deleted at open

A document becomes visible only when its SQLite transaction commits, and that happens after its
arrays are in place: a crash at any point leaves either the whole document or nothing visible.
Never pickle: SQLite, JSON, safetensors and faiss.write_index only.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.types import Chunk, ParsedDocument

FORMAT_VERSION = 1
# An array folder without its row is removed at open only once it is this old: a live process moves
# the folder into place and commits the row right after (milliseconds apart).
ORPHAN_GRACE_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, filename TEXT NOT NULL, n_pages INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL, n_chunks INTEGER NOT NULL, scanned_pages TEXT NOT NULL,
    warnings TEXT NOT NULL, page_starts TEXT NOT NULL, text TEXT NOT NULL, timings TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
    char_start INTEGER NOT NULL, char_end INTEGER NOT NULL, page_start INTEGER NOT NULL,
    page_end INTEGER NOT NULL, n_tokens INTEGER NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (doc_id, idx));
CREATE TABLE IF NOT EXISTS owners (
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE, owner TEXT NOT NULL,
    added_at REAL NOT NULL, PRIMARY KEY (doc_id, owner));
"""

ArtifactWriter = Callable[[Path], None]


@dataclass
class DocumentInfo:
    """A stored document's summary (what lists and the CLI show)."""

    id: str
    title: str
    filename: str
    n_pages: int
    n_tokens: int
    n_chunks: int
    scanned_pages: list[int]
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0


class StoreError(Exception):
    """The store was asked for something it does not hold (unknown or foreign document id)."""


class DocumentStore:
    """Thread-safe document store. One SQLite connection guarded by a lock (writes are rare and short)."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        self.docs_dir = self.home / "docs"
        self.tmp_dir = self.home / "tmp"
        self.docs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.home / "store.sqlite3", check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)
            # OR IGNORE: several processes may open a new store at once (torchrun ingest-many).
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),)
            )
            row = self._db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
            if int(row[0]) != FORMAT_VERSION:
                raise StoreError(
                    f"{self.home}: store format {row[0]} is not {FORMAT_VERSION}; use another DOCQA_HOME"
                )
        self._recover()

    def _recover(self) -> None:
        """Delete what a crash can leave behind: staging files of processes that are gone, and array
        folders with no document. Another live process may share the store (the app and the CLI, or
        torchrun ranks): its staging files and a folder it is about to commit are left alone."""
        for leftover in self.tmp_dir.iterdir():
            if not _owner_alive(leftover.name):
                _remove(leftover)
        known = {r[0] for r in self._db.execute("SELECT id FROM documents")}
        for folder in self.docs_dir.iterdir():
            if folder.name not in known and time.time() - folder.stat().st_mtime > ORPHAN_GRACE_S:
                shutil.rmtree(folder, ignore_errors=True)

    def has(self, doc_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM documents WHERE id=?", (doc_id,)).fetchone() is not None

    def add_owner(self, doc_id: str, owner: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO owners VALUES (?, ?, ?)", (doc_id, owner, time.time()))

    def add(
        self,
        doc_id: str,
        parsed: ParsedDocument,
        chunks: list[Chunk],
        artifacts: dict[str, ArtifactWriter],
        owner: str,
        timings: dict[str, float],
    ) -> None:
        """Store a document atomically: arrays are staged, moved into place, then the rows commit.

        Args:
            doc_id: content-hash id.
            artifacts: file name -> function writing that file at the given path.
            owner: who may see the document (a session id, or "local" for the CLI and API).
        """
        staging = self.tmp_dir / _staging_name(doc_id)
        staging.mkdir()
        try:
            for name, write in artifacts.items():
                write(staging / name)
            with self._lock:
                final = self.docs_dir / doc_id
                if final.exists():
                    shutil.rmtree(final)
                os.replace(staging, final)
                with self._db:
                    self._insert(doc_id, parsed, chunks, timings)
                    self._db.execute("INSERT INTO owners VALUES (?, ?, ?)", (doc_id, owner, time.time()))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _insert(self, doc_id: str, parsed: ParsedDocument, chunks: list[Chunk], timings: dict) -> None:
        n_tokens = sum(c.n_tokens for c in chunks)
        self._db.execute(
            "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                doc_id,
                parsed.title,
                Path(parsed.path).name,
                parsed.n_pages,
                n_tokens,
                len(chunks),
                json.dumps(parsed.scanned_pages),
                json.dumps(parsed.warnings),
                json.dumps(parsed.page_starts),
                parsed.text,
                json.dumps(timings),
                time.time(),
            ),
        )
        self._db.executemany(
            "INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?)",
            [
                (doc_id, c.index, c.char_start, c.char_end, c.page_start, c.page_end, c.n_tokens, c.text)
                for c in chunks
            ],
        )

    def put_artifact(self, doc_id: str, name: str, write: ArtifactWriter) -> Path:
        """Add or replace one array file of a stored document atomically (write aside, then rename)."""
        final = self.docs_dir / doc_id / name
        staging = self.tmp_dir / _staging_name(f"{doc_id}.{name}")
        try:
            write(staging)
            with self._lock:
                if not self.has(doc_id):
                    raise StoreError(f"unknown document id {doc_id!r}")
                os.replace(staging, final)
        finally:
            staging.unlink(missing_ok=True)
        return final

    def artifact_path(self, doc_id: str, name: str) -> Path:
        return self.docs_dir / doc_id / name

    def remove_artifacts(self, doc_id: str, pattern: str, keep: str) -> list[str]:
        """Delete the artifact files of a document that match the glob `pattern`, except `keep`.

        Returns the names deleted."""
        with self._lock:
            stale = [p for p in (self.docs_dir / doc_id).glob(pattern) if p.name != keep]
            for path in stale:
                path.unlink(missing_ok=True)
        return sorted(p.name for p in stale)

    def list(self, owner: str | None = None) -> list[DocumentInfo]:
        """Documents visible to `owner` (all documents when owner is None), oldest first."""
        query = (
            "SELECT d.id, d.title, d.filename, d.n_pages, d.n_tokens, d.n_chunks, d.scanned_pages,"
            " d.warnings, d.timings, d.created_at FROM documents d"
        )
        args: tuple = ()
        if owner is not None:
            query += " JOIN owners o ON o.doc_id = d.id WHERE o.owner = ? ORDER BY o.added_at"
            args = (owner,)
        else:
            query += " ORDER BY d.created_at"
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [
            DocumentInfo(
                r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), json.loads(r[8]), r[9]
            )
            for r in rows
        ]

    def info(self, doc_id: str, owner: str | None = None) -> DocumentInfo:
        """One document's summary; StoreError when unknown or not visible to `owner`."""
        for doc in self.list(owner):
            if doc.id == doc_id:
                return doc
        raise StoreError(f"no document {doc_id!r}" + (" in this session" if owner else ""))

    def visible(self, doc_id: str, owner: str | None) -> bool:
        if owner is None:
            return self.has(doc_id)
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM owners WHERE doc_id=? AND owner=?", (doc_id, owner)
            ).fetchone()
        return row is not None

    def text(self, doc_id: str) -> tuple[str, list[int]]:
        """The document's cleaned text and page start offsets."""
        with self._lock:
            row = self._db.execute("SELECT text, page_starts FROM documents WHERE id=?", (doc_id,)).fetchone()
        if row is None:
            raise StoreError(f"no document {doc_id!r}")
        return row[0], json.loads(row[1])

    def chunks(self, doc_id: str) -> list[Chunk]:
        """All chunks of a document in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, char_start, char_end, page_start, page_end, n_tokens, text FROM chunks"
                " WHERE doc_id=? ORDER BY idx",
                (doc_id,),
            ).fetchall()
        return [Chunk(*r) for r in rows]

    def delete(self, doc_id: str, owner: str | None = None) -> None:
        """Remove `owner`'s claim on a document (all claims when owner is None); the document and its
        arrays go when nobody holds it any more."""
        with self._lock:
            if not self.visible(doc_id, owner):
                raise StoreError(f"no document {doc_id!r}" + (" in this session" if owner else ""))
            with self._db:
                if owner is None:
                    self._db.execute("DELETE FROM owners WHERE doc_id=?", (doc_id,))
                else:
                    self._db.execute("DELETE FROM owners WHERE doc_id=? AND owner=?", (doc_id, owner))
                left = self._db.execute("SELECT COUNT(*) FROM owners WHERE doc_id=?", (doc_id,)).fetchone()
                if left[0] == 0:
                    self._db.execute("DELETE FROM documents WHERE id=?", (doc_id,))
            if left[0] == 0:
                shutil.rmtree(self.docs_dir / doc_id, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _staging_name(suffix: str) -> str:
    """ "<pid>.<random>.<suffix>": recovery can tell whose staging file it is."""
    return f"{os.getpid()}.{uuid.uuid4().hex}.{suffix}"


def _owner_alive(name: str) -> bool:
    """Whether the process that made staging file `name` is still running (and is not this one)."""
    try:
        pid = int(name.split(".", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
