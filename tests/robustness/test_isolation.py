"""Owners are isolated at the DocQA level, and what an upload leaves on disk is only the app's own names.

The browser-level check (two browsers, one Space) is the web UI's test; the named API endpoints are
also driven by many concurrent clients, each checking it sees only its own documents, in
scripts/load_test.py.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from ingest.store import StoreError
from tests.robustness.conftest import FACT, QUESTION

OTHER_FACT = "The harbour master of Brightwater is Tobias Reed."


@pytest.fixture(scope="module")
def docs(qa, files) -> dict[str, str]:
    """alice and bob each add their own document; carol adds nothing."""
    return {
        "alice": qa.add(files("alice.txt", FACT.encode()), owner="alice"),
        "bob": qa.add(files("bob.txt", OTHER_FACT.encode()), owner="bob"),
    }


def test_each_owner_lists_only_their_documents(qa, docs) -> None:
    assert [d.id for d in qa.documents(owner="alice")] == [docs["alice"]]
    assert [d.id for d in qa.documents(owner="bob")] == [docs["bob"]]
    assert qa.documents(owner="carol") == []


def test_asking_without_documents_sees_nothing_of_the_others(qa, docs) -> None:
    with pytest.raises(ValueError, match="no documents yet"):
        qa.ask(QUESTION, owner="carol", methods=("bm25",))


def test_asking_searches_only_the_owners_documents(qa, docs) -> None:
    for method in qa.methods:
        (answer,) = qa.ask(QUESTION, owner="bob", methods=(method,), top_k=5)
        assert {e.doc_id for e in answer.evidence} == {docs["bob"]}, method
        assert set(answer.chunk_scores) == {docs["bob"]}
        assert all(FACT not in e.text for e in answer.evidence)


def test_naming_another_owners_document_is_refused_as_unknown(qa, docs) -> None:
    with pytest.raises(StoreError, match="no document"):
        qa.ask(QUESTION, docs=[docs["alice"]], owner="bob", methods=("bm25",))
    with pytest.raises(StoreError):
        qa.store.info(docs["alice"], owner="bob")
    with pytest.raises(StoreError):
        qa.resolve(docs["alice"], owner="bob")


def test_deleting_another_owners_document_is_refused_and_changes_nothing(qa, docs) -> None:
    with pytest.raises(StoreError, match="no document"):
        qa.delete(docs["alice"], owner="bob")
    (answer,) = qa.ask(QUESTION, owner="alice", methods=("bm25",), top_k=1)
    assert FACT in answer.evidence[0].text


def test_the_same_file_added_by_two_owners_is_stored_once_and_deleted_per_owner(qa, docs, files) -> None:
    path = files("shared.txt", b"Both of them uploaded this note about the lighthouse lamp.")
    first = qa.add(path, owner="dave")
    assert qa.add(path, owner="erin") == first
    qa.delete(first, owner="dave")
    assert qa.documents(owner="dave") == []
    assert [d.id for d in qa.documents(owner="erin")] == [first]
    assert (qa.store.docs_dir / first).is_dir()
    qa.delete(first, owner="erin")
    assert not qa.store.has(first) and not (qa.store.docs_dir / first).exists()


def test_owners_stay_isolated_under_concurrent_use(qa, docs, files) -> None:
    errors: list[BaseException] = []

    def session(n: int) -> None:
        owner = f"thread-{n}"
        try:
            doc_id = qa.add(
                files(f"t{n}.txt", f"Thread {n} keeps the secret word zebra{n}.".encode()), owner=owner
            )
            for _ in range(3):
                (answer,) = qa.ask(f"What is the secret word of thread {n}?", owner=owner, methods=("bm25",))
                assert {e.doc_id for e in answer.evidence} == {doc_id}
                assert [d.id for d in qa.documents(owner=owner)] == [doc_id]
        except BaseException as err:  # collected: an assert in a thread would otherwise be lost
            errors.append(err)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_web_clients_cannot_claim_the_cli_or_sample_owner() -> None:
    """Every web request gets a prefixed owner; a forged browser id falls back to the session."""
    ui = pytest.importorskip("app.ui")

    class Request:
        session_hash = "abc123"

    for forged in ("local", "sample", "", None, "../../x", "A" * 32, "0" * 31):
        owner = ui.owner_of(forged, Request())
        assert owner == "session:abc123", forged
    assert ui.owner_of("0" * 32, Request()) == "browser:" + "0" * 32


# Files on disk: only the app's own names under DOCQA_HOME

_STORE_FILE = re.compile(
    r"store\.sqlite3(-wal|-shm)?|store\.lock|docs/[0-9a-f]{16}/(faiss\.index|bsbr_cache\.[0-9a-f]{16}\.safetensors)"
)


@pytest.mark.parametrize("name", ["../../escape.txt", "my notes (v2).txt", "résumé 東京 ✓.md", " .. .txt"])
def test_uploads_leave_only_hashed_names_under_the_data_folder(qa, tmp_path: Path, name: str) -> None:
    # A file name cannot hold "/"; "../../escape.txt" is a path that climbs out of two folders. The
    # store keeps the last part of the name as text only: on disk every name is the app's own.
    path = tmp_path / "a" / "b" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"A note called {name!r} about the lighthouse.", encoding="utf-8")
    report = qa.ingest(path, owner="uploader")
    assert report.filename == path.name and "/" not in report.filename
    home = qa.store.home
    for file in home.rglob("*"):
        if file.is_file():
            assert _STORE_FILE.fullmatch(file.relative_to(home).as_posix()), file
    qa.delete(report.doc_id, owner="uploader")
