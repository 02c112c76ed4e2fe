import os
import sqlite3
import time

import numpy as np
import pytest

from ingest.store import DocumentStore, StoreError
from ingest.types import Chunk, ParsedDocument


def _doc(text="Alpha beta.\n\nGamma delta."):
    return ParsedDocument(path="/x/a.txt", title="a", text=text, page_starts=[0], n_pages=1)


def _chunks(doc):
    half = doc.text.index("\n\n")
    return [
        Chunk(0, 0, half, 1, 1, 3, doc.text[:half]),
        Chunk(1, half + 2, len(doc.text), 1, 1, 3, doc.text[half + 2 :]),
    ]


def _writer(value):
    return lambda path: np.save(path.open("wb"), np.array([value]))


def test_add_list_read_back(tmp_path):
    store = DocumentStore(tmp_path)
    doc = _doc()
    store.add("d1", doc, _chunks(doc), {"x.npy": _writer(1)}, owner="alice", timings={"chunk": 0.5})
    [info] = store.list("alice")
    assert (info.id, info.n_chunks, info.n_tokens, info.timings) == ("d1", 2, 6, {"chunk": 0.5})
    assert store.chunks("d1") == _chunks(doc)
    assert store.text("d1") == (doc.text, [0])
    assert np.load(store.artifact_path("d1", "x.npy"))[0] == 1


def test_owners_isolate_and_delete_frees_only_when_nobody_holds_it(tmp_path):
    store = DocumentStore(tmp_path)
    doc = _doc()
    store.add("d1", doc, _chunks(doc), {"x.npy": _writer(1)}, owner="alice", timings={})
    assert store.list("bob") == []
    assert not store.visible("d1", "bob")
    with pytest.raises(StoreError):
        store.delete("d1", "bob")
    store.add_owner("d1", "bob")
    store.delete("d1", "alice")
    assert store.has("d1") and store.list("alice") == []
    store.delete("d1", "bob")
    assert not store.has("d1")
    assert not (tmp_path / "docs" / "d1").exists()


def test_failed_artifact_write_leaves_nothing(tmp_path):
    store = DocumentStore(tmp_path)
    doc = _doc()

    def broken(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.add("d1", doc, _chunks(doc), {"a.npy": _writer(1), "b.npy": broken}, owner="o", timings={})
    assert not store.has("d1")
    assert list((tmp_path / "docs").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_reopen_removes_crash_leftovers(tmp_path):
    store = DocumentStore(tmp_path)
    doc = _doc()
    store.add("kept", doc, _chunks(doc), {"x.npy": _writer(1)}, owner="o", timings={})
    store.close()
    # what a crash can leave: staging folders of dead processes, and arrays moved into place before the
    # rows committed
    (tmp_path / "tmp" / "half.123").mkdir()
    (tmp_path / "tmp" / f"{_dead_pid()}.abc.d9").mkdir()
    orphan = tmp_path / "docs" / "orphan"
    orphan.mkdir()
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    reopened = DocumentStore(tmp_path)
    assert [d.id for d in reopened.list()] == ["kept"]
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["kept"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_reopen_leaves_another_live_process_alone(tmp_path):
    DocumentStore(tmp_path).close()
    staging = tmp_path / "tmp" / f"{os.getppid()}.abc.d1"  # the parent process is alive
    staging.mkdir()
    committing = tmp_path / "docs" / "d2"  # just moved into place, its row about to commit
    committing.mkdir()
    DocumentStore(tmp_path)
    assert staging.exists() and committing.exists()


def test_two_processes_can_open_a_new_store_at_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=DocumentStore, args=(tmp_path,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_put_artifact_replaces_atomically_and_checks_the_id(tmp_path):
    store = DocumentStore(tmp_path)
    doc = _doc()
    store.add("d1", doc, _chunks(doc), {"x.npy": _writer(1)}, owner="o", timings={})
    store.put_artifact("d1", "x.npy", _writer(2))
    assert np.load(store.artifact_path("d1", "x.npy"))[0] == 2
    with pytest.raises(StoreError):
        store.put_artifact("nope", "x.npy", _writer(3))


def test_format_version_is_checked(tmp_path):
    DocumentStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        db.execute("UPDATE meta SET value='999' WHERE key='format_version'")
    with pytest.raises(StoreError, match="format"):
        DocumentStore(tmp_path)
