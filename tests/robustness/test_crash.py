"""kill -9 during an ingest: after a restart no half document is visible, the same file ingests again,
and the store never needs a manual repair.

Each scenario runs a child process that stores one document, starts a second one and is killed with
SIGKILL at a chosen point: by itself at an exact step of DocumentStore.add (deterministic), or by this
process from outside while it embeds. The store-level children skip the models (fake arrays, a fraction
of a second each); the DocQA-level ones run the real ingest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.store import ORPHAN_GRACE_S, DocumentStore
from ingest.types import Chunk, ParsedDocument
from tests.robustness.conftest import FACT, QUESTION

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 120

# argv: mode (store|docqa), home, kill point, first file, second file. Prints one JSON line per event.
CHILD = r"""
import dataclasses, json, os, signal, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
mode, home, point, first, second = sys.argv[1:6]

def say(**event):
    print(json.dumps(event), flush=True)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Os:
    # ingest.store's view of os: the same module, with one call wrapped (os itself stays untouched).
    def __init__(self, name, when):
        self.name, self.when = name, when
    def __getattr__(self, attr):
        real = getattr(os, attr)
        if attr != self.name:
            return real
        def wrapped(*args, **kwargs):
            if self.when == "before":
                die()
            real(*args, **kwargs)
            die()
        return wrapped

from ingest import store as store_module

def arm():
    # Called once the first document is stored: the kill is for the second.
    if point == "staged":
        store_module.os = Os("replace", "before")
    elif point == "renamed":
        store_module.os = Os("replace", "after")
    elif point == "inserted":
        real_insert = store_module.DocumentStore._insert
        def insert_then_die(self, *args):
            real_insert(self, *args)
            die()
        store_module.DocumentStore._insert = insert_then_die

if mode == "store":
    from ingest.types import Chunk, ParsedDocument
    st = store_module.DocumentStore(home)
    def add(doc_id):
        text = f"document {doc_id}"
        parsed = ParsedDocument(path=f"{doc_id}.txt", title=doc_id, text=text, page_starts=[0], n_pages=1)
        chunks = [Chunk(0, 0, len(text), 1, 1, 2, text)]
        names = ("faiss.index", "bsbr_cache.safetensors")
        artifacts = {n: (lambda p, n=n: p.write_bytes(n.encode() * 1000)) for n in names}
        st.add(doc_id, parsed, chunks, artifacts, "local", {})
    add(first)
    say(committed=first)
    arm()
    if point == "deleted":
        add(second)
        say(committed=second)
        store_module.shutil = type("Shutil", (), {"rmtree": staticmethod(lambda *a, **k: die())})
        st.delete(second)
    elif point == "artifact":
        store_module.os = Os("replace", "before")
        st.put_artifact(first, "faiss.index", lambda p: p.write_bytes(b"new" * 1000))
    else:
        add(second)
        say(committed=second)
        die()
else:
    from app.docqa import DocQA
    from app.settings import Settings
    qa = DocQA(settings=dataclasses.replace(Settings.from_env(), home=home, device="cpu"))
    say(committed=qa.add(first))
    arm()
    def progress(stage, done, total):
        if stage == "embed":
            say(stage=stage)
            if point == "embed":
                die()
    say(committed=qa.add(second, progress=progress))
    die()
"""

HARBOUR = "The harbour log says the boats came in with mackerel and crab at dusk. "
STORE_POINTS = ["staged", "renamed", "inserted", "committed", "deleted", "artifact"]
DOCQA_POINTS = ["embed", "renamed", "external"]


def start_child(mode: str, home: Path, point: str, first: str, second: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(home), point, first, second],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen) -> list[dict]:
    """Wait for the child; it must have died of SIGKILL. Returns its events."""
    out, err = child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == -signal.SIGKILL, err[-2000:]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def committed(events: list[dict]) -> list[str]:
    return [e["committed"] for e in events if "committed" in e]


def raw_ids(home: Path) -> set[str]:
    """Document ids in the SQLite file, read without DocumentStore (which would recover)."""
    with sqlite3.connect(f"file:{home / 'store.sqlite3'}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT id FROM documents")}


def assert_consistent(store: DocumentStore, expected: set[str]) -> None:
    """After a restart: exactly the committed documents, each whole; no staging debris; SQLite intact.

    An array folder without its row is left alone while it is fresh (ORPHAN_GRACE_S: another live
    process may be about to commit it); it is never visible, and `age_orphans` shows it goes later.
    """
    ids = {d.id for d in store.list()}
    assert ids == expected
    assert list(store.tmp_dir.iterdir()) == []
    for folder in store.docs_dir.iterdir():
        assert folder.name in ids or time.time() - folder.stat().st_mtime < ORPHAN_GRACE_S
    for info in store.list():
        assert len(store.chunks(info.id)) == info.n_chunks
        assert any((store.docs_dir / info.id).iterdir()), f"{info.id} has no arrays"
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def age_orphans(home: Path, known: set[str]) -> int:
    """Make every folder without a row look older than the grace period; returns how many."""
    old = time.time() - 2 * ORPHAN_GRACE_S
    orphans = [f for f in (home / "docs").iterdir() if f.name not in known]
    for folder in orphans:
        os.utime(folder, (old, old))
    return len(orphans)


# Store level: every step of DocumentStore.add (and delete, put_artifact), deterministic


@pytest.fixture(scope="module")
def store_crashes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[dict]]]:
    """point -> (home, events), the children run side by side."""
    homes = {point: tmp_path_factory.mktemp(f"store-{point}") for point in STORE_POINTS}
    children = {p: start_child("store", homes[p], p, "aaaa000000000001", "bbbb000000000002") for p in homes}
    return {point: (homes[point], finish(child)) for point, child in children.items()}


# What each kill leaves on disk before the restart (proof that the kill hit the step it names).
def _debris(home: Path) -> dict:
    return {
        "tmp": sorted(p.name for p in (home / "tmp").iterdir()),
        "folders": sorted(p.name for p in (home / "docs").iterdir()),
        "rows": sorted(raw_ids(home)),
    }


@pytest.mark.parametrize("point", STORE_POINTS)
def test_store_recovers_from_a_kill_at_each_step(point: str, store_crashes) -> None:
    home, events = store_crashes[point]
    first, second = "aaaa000000000001", "bbbb000000000002"
    debris = _debris(home)
    if point == "staged":
        assert debris["folders"] == [first] and debris["tmp"][0].endswith(second)
    elif point in ("renamed", "inserted"):
        assert debris["folders"] == [first, second] and debris["rows"] == [first]
    elif point == "committed":
        assert debris["rows"] == [first, second]
    elif point == "deleted":
        assert debris["folders"] == [first, second] and debris["rows"] == [first]
    else:
        assert debris["tmp"] and debris["rows"] == [first]

    expected = {first, second} if point == "committed" else {first}
    assert committed(events)[: len(expected)] == sorted(expected)
    store = DocumentStore(home)
    assert_consistent(store, expected)
    if point == "artifact":
        assert (store.docs_dir / first / "faiss.index").read_bytes() == b"faiss.index" * 1000
    store.close()
    left = age_orphans(home, expected)
    assert left == (1 if point in ("renamed", "inserted", "deleted") else 0)
    store = DocumentStore(home)  # a later restart sweeps the old orphan
    assert_consistent(store, expected)
    assert {p.name for p in store.docs_dir.iterdir()} == expected
    store.close()


def test_the_killed_document_can_be_added_again(store_crashes) -> None:
    home, _ = store_crashes["renamed"]
    store = DocumentStore(home)
    text = "document again"
    parsed = ParsedDocument(path="again.txt", title="again", text=text, page_starts=[0], n_pages=1)
    store.add(
        "bbbb000000000002",
        parsed,
        [Chunk(0, 0, len(text), 1, 1, 2, text)],
        {"faiss.index": lambda p: p.write_bytes(b"x")},
        "local",
        {},
    )
    assert_consistent(store, {"aaaa000000000001", "bbbb000000000002"})
    store.close()


# DocQA level: the real ingest, killed by itself mid-embedding or after the rename, and from outside


@pytest.fixture(scope="module")
def docqa_crashes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, list[dict]]]:
    """point -> (home, second file, events); the three children run side by side."""
    folder = tmp_path_factory.mktemp("crash-docs")
    first = folder / "keeper.txt"
    first.write_text(FACT + " She lights the lamp every evening.", encoding="utf-8")
    small = folder / "harbour.txt"
    small.write_text(HARBOUR, encoding="utf-8")
    # Long enough (~25 chunks) that an outside kill lands while the ingest is still running.
    large = folder / "harbour-log.txt"
    large.write_text("\n\n".join(f"Entry {i}. {HARBOUR * 6}" for i in range(25)), encoding="utf-8")
    seconds = {"embed": small, "renamed": small, "external": large}
    children, homes = {}, {}
    for point in DOCQA_POINTS:
        homes[point] = tmp_path_factory.mktemp(f"docqa-{point}")
        children[point] = start_child("docqa", homes[point], point, str(first), str(seconds[point]))
    early = _kill_when_embedding(children["external"])
    return {
        p: (homes[p], seconds[p], (early if p == "external" else []) + finish(child))
        for p, child in children.items()
    }


def _kill_when_embedding(child: subprocess.Popen) -> list[dict]:
    """SIGKILL from outside, a random moment (0-300 ms) after the second document starts embedding.
    Returns the events read until then."""
    assert child.stdout is not None
    events = []
    for line in child.stdout:
        events.append(json.loads(line))
        if events[-1].get("stage") == "embed":
            time.sleep(random.uniform(0, 0.3))
            child.send_signal(signal.SIGKILL)
            return events
    pytest.fail("the child ended before it started embedding")


@pytest.mark.parametrize("point", DOCQA_POINTS)
def test_docqa_restart_after_kill_shows_no_half_document_and_reingests(point: str, docqa_crashes) -> None:
    from app.docqa import DocQA
    from app.settings import Settings

    home, second, events = docqa_crashes[point]
    stored = committed(events)
    # The outside kill may (rarely) land after the second document committed: then it is whole.
    assert len(stored) == 1 or point == "external"
    restarted = DocQA(settings=dataclasses.replace(Settings.from_env(), home=home, device="cpu"))
    try:
        assert_consistent(restarted.store, set(stored))
        (answer,) = restarted.ask(QUESTION, docs=[stored[0]], methods=("faiss",), top_k=1)
        assert FACT in answer.evidence[0].text
        report = restarted.ingest(second)
        assert report.new == (len(stored) == 1) and report.chunks >= 1
        assert_consistent(restarted.store, {stored[0], report.doc_id})
        (answer,) = restarted.ask("What did the boats bring in?", docs=[report.doc_id], methods=("bm25",))
        assert "mackerel" in answer.evidence[0].text
    finally:
        restarted.store.close()
