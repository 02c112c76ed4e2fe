"""The FAISS baseline retrievers on a real PDF (fpdf2) and the real MiniLM: a short fact inside a long chunk
about something else is found through its window; results are distinct chunks; documents stored with
the older one-vector-per-chunk index are re-embedded on first use; the `faiss` method fuses the dense
ranking with BM25's."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from fpdf import FPDF

from app.retrievers import FAISS_FILE, Bm25Retriever, FaissRetriever, HybridRetriever, reciprocal_rank_fusion
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
        [(name, writer)] = retriever.index(chunks).items()
        assert name == FAISS_FILE
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


def test_reciprocal_rank_fusion_adds_one_over_k_plus_rank():
    dense = np.array([0.9, 0.5, 0.1, 0.3])
    sparse = np.array([0.0, 3.0, 1.0, 0.0])  # chunks 0 and 3 do not match the keywords at all
    fused = reciprocal_rank_fusion(dense, sparse, k=60)
    expected = [1 / 61, 1 / 62 + 1 / 61, 1 / 64 + 1 / 62, 1 / 63]
    np.testing.assert_allclose(fused, expected, rtol=1e-6)


ESTATE = (
    "The estate was entailed on a distant cousin, and the family would lose the house and its land. "
    "Estates in the county were often let to tenants for a year at a time, and an agent kept the rents. "
    "A large estate needed stewards, gardeners and grooms, and the owner let the farms on long leases. "
)
NEWS = (
    "Mrs. Bennet talked of her daughters and of the balls of the winter. 'My dear Mr. Bennet,' said his "
    "lady to him one day, 'have you heard that Netherfield Park is let at last?' Mr. Bennet replied that "
    "he had not. The girls wondered about bonnets, ribbons and the officers in the town. "
    + "Kitty coughed. Lydia laughed at the officers, and Mary read her book. "
    * 6
)


def test_the_faiss_method_fuses_dense_and_bm25_ranks(retriever, tmp_path):
    """MiniLM ranks the "estate" pages above the page that answers by name; BM25's rank lifts it."""
    doc_id = _add(
        retriever, _pdf(tmp_path / "news.pdf", [ESTATE * 3, NEWS, ESTATE * 3, ESTATE * 2]), "d" * 16
    )
    question = "What estate has been let at last?"
    chunks = retriever.store.chunks(doc_id)
    [news] = [c.index for c in chunks if "Netherfield" in c.text]
    sparse = Bm25Retriever(retriever.store)
    fused = HybridRetriever(retriever, sparse)
    dense_ids, _, dense_every = retriever.top(question, doc_id, len(chunks))
    _, _, sparse_every = sparse.top(question, doc_id, len(chunks))
    ids, scores, every = fused.top(question, doc_id, len(chunks))
    np.testing.assert_allclose(every, reciprocal_rank_fusion(dense_every, sparse_every), rtol=1e-6)
    np.testing.assert_allclose(scores, every[ids], rtol=1e-6)
    assert dense_ids.tolist().index(news) == len(chunks) - 1  # dense alone: last
    assert ids.tolist().index(news) < len(chunks) - 1  # fused: lifted by its keyword rank


def test_bm25s_is_imported_with_jax_kept_off_the_gpu(monkeypatch):
    import os

    from app.retrievers import import_bm25s

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert import_bm25s().BM25 is not None
    assert os.environ["JAX_PLATFORMS"] == "cpu"  # so JAX, if installed, claims no GPU memory
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    import_bm25s()
    assert os.environ["JAX_PLATFORMS"] == "cuda"  # a platform the environment chose stands


def test_a_question_is_embedded_once_per_ask_and_afresh_in_the_next(retriever, monkeypatch):
    calls = []
    real = retriever.embedder.encode
    monkeypatch.setattr(retriever.embedder, "encode", lambda texts: calls.append(texts) or real(texts))
    question = "Which ferry leaves at noon?"
    with retriever.one_question():
        first = retriever.embed_query(question)
        assert retriever.embed_query(question) is first and len(calls) == 1
        retriever.embed_query("another question")
        assert len(calls) == 2
    np.testing.assert_allclose(first, real([question])[0], rtol=1e-5, atol=1e-6)
    retriever.embed_query(question)  # outside an ask: no memo
    with retriever.one_question():
        retriever.embed_query(question)
    assert len(calls) == 4
