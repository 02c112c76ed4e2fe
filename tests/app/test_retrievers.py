"""The FAISS baseline retriever on a real PDF (fpdf2) and the real MiniLM: a short fact inside a long chunk
about something else is found through its window; results are distinct chunks; documents stored with
the older one-vector-per-chunk index are re-embedded on first use."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from fpdf import FPDF

from app.retrievers import FAISS_FILE, FaissRetriever
from ingest import faiss_index
from ingest.chunk import chunk_document
from ingest.extract import extract
from ingest.store import DocumentStore

ISLANDS = (
    "Inishmore is the largest of the Aran Islands. Visitors to Inishmore hire bicycles at the pier and "
    "ride to the stone fort on the cliffs. Ferries to the islands are busy all summer, and the crossing "
    "to Inishmore is rough when the wind is from the west. "
)
KITCHEN = (
    "The soup is made from leeks, potatoes and butter, simmered slowly and blended until smooth. Bread "
    "is baked each morning with flour, salt, yeast and warm water, and the dough rests for an hour "
    "before it is shaped. Cream, parsley and black pepper finish the dish at the table. "
)
FACT = "The night ferry to Inishmore sails from Rossaveel at ten. "
QUESTION = "Where does the night ferry to Inishmore sail from?"
# Page 2 is one long chunk about cooking with the fact in its middle; pages 1 and 3 are about Inishmore.
PAGES = [ISLANDS * 3, KITCHEN * 2 + FACT + KITCHEN * 2, ISLANDS * 3, KITCHEN * 3]


def _pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF(format=(148, 210))
    pdf.set_font("Helvetica", size=10)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 5, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> FaissRetriever:
    return FaissRetriever(DocumentStore(tmp_path_factory.mktemp("home")), "cpu")


@pytest.fixture(scope="module")
def ferry_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pdf(tmp_path_factory.mktemp("docs") / "ferry.pdf", PAGES)


@pytest.fixture(scope="module")
def ferry_doc(retriever: FaissRetriever, ferry_pdf: Path) -> str:
    return _add(retriever, ferry_pdf, "f" * 16)


def _add(retriever: FaissRetriever, path: Path, doc_id: str, old_format: bool = False) -> str:
    """Extract, chunk and store `path` with its FAISS index (format 1, as stored before, if asked)."""
    parsed = extract(path)
    chunks = chunk_document(parsed)
    if old_format:
        index = faiss_index.build_index(retriever.embedder.encode([c.text for c in chunks]))
        writer = lambda p: faiss_index.save_index(index, p)  # noqa: E731
    else:
        writer = retriever.build(chunks)
    retriever.store.add(doc_id, parsed, chunks, {FAISS_FILE: writer}, "local", {})
    return doc_id


def test_a_fact_inside_a_long_chunk_is_found_by_its_window(retriever, ferry_doc):
    chunks = retriever.store.chunks(ferry_doc)
    [fact_chunk] = [c for c in chunks if "Rossaveel" in c.text]
    assert fact_chunk.n_tokens > 200 and fact_chunk.page_start == fact_chunk.page_end == 2
    ids, _, _ = retriever.top(QUESTION, ferry_doc, 3)
    assert ids[0] == fact_chunk.index
    # one vector per whole chunk (the old baseline) ranks an Inishmore page above it
    whole = retriever.embedder.encode([c.text for c in chunks]) @ retriever.embed_query(QUESTION)
    assert np.argmax(whole) != fact_chunk.index


def test_results_are_distinct_chunks_best_first(retriever, ferry_doc):
    n = len(retriever.store.chunks(ferry_doc))
    ids, scores, every = retriever.top(QUESTION, ferry_doc, n + 3)
    assert sorted(ids.tolist()) == list(range(n))  # every chunk once, k larger than the document
    assert np.all(np.diff(scores) <= 0) and every.shape == (n,)
    np.testing.assert_allclose(scores, every[ids], rtol=1e-5)


def test_a_document_stored_with_one_vector_per_chunk_is_re_embedded_once(retriever, ferry_pdf, caplog):
    doc_id = "e" * 16
    _add(retriever, ferry_pdf, doc_id, old_format=True)
    path = retriever.store.artifact_path(doc_id, FAISS_FILE)
    assert faiss_index.index_format(faiss_index.load_index(path)) == 1
    with caplog.at_level(logging.WARNING, logger="app.retrievers"):
        ids, _, _ = retriever.top(QUESTION, doc_id, 3)
    assert "re-embedding" in caplog.text and doc_id in caplog.text
    assert faiss_index.index_format(faiss_index.load_index(path)) == 2  # stored, not redone next time
    fresh = FaissRetriever(retriever.store, "cpu")
    fresh._embedder = retriever.embedder  # share the loaded model
    caplog.clear()
    assert fresh.top(QUESTION, doc_id, 3)[0].tolist() == ids.tolist()
    assert "re-embedding" not in caplog.text
    chunks = retriever.store.chunks(doc_id)
    assert "Rossaveel" in chunks[ids[0]].text
