"""Questions to several documents at once: each answer names its document and page; with ingest-many's
library index the `faiss` method searches it once and finds what the per-document searches find."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import DocQA
from app.ingest_many import build_library
from tests.ingest.conftest import pdf_bytes

ROOT = Path(__file__).resolve().parents[2]
BOOKS = {
    "harbour": [
        "The harbour town of Brightwater lies on a windy coast. Its fishing fleet sails at dawn.",
        "The lighthouse keeper of Brightwater is Amelia Thornbury. Her cat is called Pilot.",
    ],
    "orchard": [
        "The orchard at Kellerby grows forty kinds of apple. The cider press is older than the house.",
        "The head gardener of Kellerby is Tobias Wrenfield. He prunes the pear trees every March.",
    ],
    "mill": [
        "The old mill on the river Dane ground wheat for three villages until the flood of 1887.",
        "The miller's daughter, Hester Pike, kept the accounts and later bought the mill herself.",
    ],
}
QUESTION = "Who is the head gardener of Kellerby?"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("books")
    out = {}
    for name, pages in BOOKS.items():
        out[name] = folder / f"{name}.pdf"
        out[name].write_bytes(pdf_bytes(pages, title=name.title()))
    return out


@pytest.fixture(scope="module")
def qa(tmp_path_factory, files) -> DocQA:
    qa = DocQA(home=tmp_path_factory.mktemp("home"), device="cpu")
    for path in files.values():
        qa.add(path)
    return qa


def _seen(answer) -> list[tuple[str, int, float]]:
    return [(e.doc_id, e.chunk_index, round(e.score, 4)) for e in answer.evidence]


def test_every_document_is_asked_and_the_answer_names_its_document_and_page(qa, files):
    for method in qa.methods:
        [answer] = qa.ask(QUESTION, methods=[method], top_k=3)
        top = answer.evidence[0]
        assert top.title == "Orchard" and top.answer_page == 2, method
        assert len(answer.chunk_scores) == 3  # every document was searched
        if not answer.abstained:
            assert "Wrenfield" in answer.answer, method


def test_the_library_index_gives_the_same_faiss_candidates_as_each_documents_own(qa, files):
    library = qa.answerer.library_index
    doc_ids = [d.id for d in qa.documents()]
    assert not library.covers(doc_ids)  # no library index yet
    [alone] = qa.ask(QUESTION, methods=["faiss"], top_k=5, retrieve_k=6)
    build_library(qa.store, "flat")
    assert library.covers(doc_ids)
    found = library.top(QUESTION, doc_ids, 6)
    expected = _candidates(qa, doc_ids, 6)
    assert [(d, i) for _, d, i in found] == [(d, i) for _, d, i in expected]
    assert [s for s, _, _ in found] == pytest.approx([s for s, _, _ in expected], abs=1e-5)
    [pooled] = qa.ask(QUESTION, methods=["faiss"], top_k=5, retrieve_k=6)
    assert _seen(pooled) == _seen(alone) and pooled.answer == alone.answer
    assert set(pooled.chunk_scores) <= set(doc_ids) and pooled.chunk_scores  # the candidates' documents
    # a subset of the library's documents: only theirs come back
    two = [d for d in doc_ids if qa.store.info(d).title != "Orchard"]
    assert {d for _, d, _ in library.top(QUESTION, two, 4)} <= set(two)


def test_a_document_added_after_the_library_was_built_is_not_covered(qa, tmp_path):
    build_library(qa.store, "flat")
    late = tmp_path / "late.pdf"
    late.write_bytes(pdf_bytes(["The ferry to Inishmore leaves at noon.", "Its captain is Orla Dunne."]))
    late_id = qa.add(late)
    doc_ids = [d.id for d in qa.documents()]
    assert not qa.answerer.library_index.covers(doc_ids)
    [answer] = qa.ask("Who is the captain of the ferry to Inishmore?", methods=["faiss"], top_k=2)
    assert answer.evidence[0].doc_id == late_id  # asked of each document's own index instead
    qa.delete(late_id)


def _candidates(qa, doc_ids, k):
    """The per-document path: each document's own FAISS index, merged by score."""
    merged = []
    for d in doc_ids:
        ids, scores, _ = qa.faiss.top(QUESTION, d, k)
        merged += [(float(s), d, int(i)) for s, i in zip(scores, ids, strict=True)]
    return sorted(merged, key=lambda c: -c[0])[:k]


def test_cli_asks_several_files_or_all(files, tmp_path):
    env = {**os.environ, "DOCQA_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "DOCQA_DEVICE": "cpu"}

    def cli(*args):
        done = subprocess.run(
            [sys.executable, "-m", "app", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = json.loads(
        cli("ask", str(files["harbour"]), str(files["orchard"]), QUESTION, "--method", "faiss", "--json")
    )
    [answer] = out["answers"]
    assert answer["evidence"][0]["title"] == "Orchard"
    text = cli("ask", "all", QUESTION, "--method", "faiss")
    assert "Tobias Wrenfield (Orchard, p. 2)" in text.splitlines()[0]


def test_a_one_document_question_keeps_its_chunks_tokenized_a_library_question_does_not(tmp_path, files):
    qa = DocQA(home=tmp_path, device="cpu")
    ids = {name: qa.add(path) for name, path in files.items()}
    [pooled] = qa.ask(QUESTION, methods=["bsbr"], top_k=6)
    assert len({e.doc_id for e in pooled.evidence}) > 1  # read passages of several documents
    assert all(qa.engine.document_passages(d, None) is None for d in ids.values())
    [alone] = qa.ask(QUESTION, docs=[ids["orchard"]], methods=["bsbr"], top_k=2)
    kept = qa.engine.document_passages(ids["orchard"], None)
    assert kept is not None and len(kept) == len(qa.library.texts(ids["orchard"]))
    assert "Tobias Wrenfield" in alone.answer
    # the same passage read from the kept tokens and from its text: the same answer span
    [again] = qa.ask(QUESTION, docs=[ids["orchard"]], methods=["bsbr"], top_k=2)
    assert (again.answer, again.evidence[0].answer_start) == (alone.answer, alone.evidence[0].answer_start)
    first = next(
        e
        for e in pooled.evidence
        if e.doc_id == ids["orchard"] and e.chunk_index == alone.evidence[0].chunk_index
    )
    assert (first.answer_start, first.answer_end) == (
        alone.evidence[0].answer_start,
        alone.evidence[0].answer_end,
    )
    qa.delete(ids["orchard"])
    assert qa.engine.document_passages(ids["orchard"], None) is None
