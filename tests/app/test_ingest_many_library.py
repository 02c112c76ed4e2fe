"""The library index (build_library) with several vectors per chunk: every vector's search label is its
document's first_row + its chunk, documents stored with one vector per chunk (format 1) included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.ingest_many import LIBRARY_INDEX, LIBRARY_MAP, build_library
from app.retrievers import FAISS_FILE
from ingest import faiss_index
from ingest.store import DocumentStore
from ingest.types import Chunk, ParsedDocument

# doc id -> windows per chunk; None: a format-1 document (one vector per chunk) of that many chunks
DOCS = {"aaaa000000000000": [2, 1, 3], "bbbb000000000000": None, "cccc000000000000": [4]}
FORMAT_1_CHUNKS = 2


def _store_docs(store: DocumentStore, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Store DOCS with random unit vectors; returns doc id -> (vectors, chunk ids) as stored."""
    rng = np.random.default_rng(seed)
    stored = {}
    for doc_id, windows in DOCS.items():
        per_chunk = windows or [1] * FORMAT_1_CHUNKS
        ids = np.repeat(np.arange(len(per_chunk)), per_chunk)
        vectors = rng.normal(size=(len(ids), 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = faiss_index.build_index(vectors, None if windows is None else ids)
        chunks = [Chunk(i, 10 * i, 10 * i + 9, 1, 1, 3, "x" * 9) for i in range(len(per_chunk))]
        parsed = ParsedDocument(f"{doc_id}.txt", doc_id, "x" * 10 * len(chunks), [0], 1)
        writer = {FAISS_FILE: lambda path, index=index: faiss_index.save_index(index, path)}
        store.add(doc_id, parsed, chunks, writer, "local", {})
        stored[doc_id] = (vectors, ids)
    return stored


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_library_rows_are_chunks_and_every_window_is_labelled_with_its_row(tmp_path, kind):
    store = DocumentStore(tmp_path)
    stored = _store_docs(store)
    summary = build_library(store, kind)
    mapping = json.loads((tmp_path / LIBRARY_MAP).read_text())
    index = faiss_index.load_index(tmp_path / LIBRARY_INDEX)
    n_chunks = sum(len(w) if w else FORMAT_1_CHUNKS for w in DOCS.values())
    n_vectors = sum(len(v) for v, _ in stored.values())
    assert summary == {"kind": kind, "rows": n_chunks, "vectors": n_vectors, "documents": len(DOCS)}
    assert (mapping["rows"], mapping["vectors"], index.ntotal) == (n_chunks, n_vectors, n_vectors)
    assert [d["doc_id"] for d in mapping["documents"]] == sorted(DOCS)
    for entry in mapping["documents"]:
        vectors, ids = stored[entry["doc_id"]]
        assert (entry["chunks"], entry["vectors"]) == (ids.max() + 1, len(vectors))
        for vector, chunk in zip(vectors, ids, strict=True):  # each window finds itself, as its row
            _, labels = faiss_index.search(index, vector, 1)
            assert labels.tolist() == [entry["first_row"] + chunk]
        if kind == "flat":  # the document's vectors are index entries first_vector.. in its order
            rows = slice(entry["first_vector"], entry["first_vector"] + entry["vectors"])
            np.testing.assert_array_equal(faiss_index.all_vectors(index)[rows], vectors)
            np.testing.assert_array_equal(faiss_index.chunk_ids(index)[rows], entry["first_row"] + ids)


def test_library_search_returns_each_row_once(tmp_path):
    store = DocumentStore(tmp_path)
    stored = _store_docs(store)
    build_library(store, "flat")
    index = faiss_index.load_index(tmp_path / LIBRARY_INDEX)
    vectors, _ = stored["aaaa000000000000"]
    _, labels = faiss_index.search(index, vectors[0], 100)
    assert sorted(labels.tolist()) == list(range(6))  # 6 rows (chunks), 12 vectors
