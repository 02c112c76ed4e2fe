"""Per-document FAISS index of window vectors (format 2): chunk ids, best-window scores, unique results;
and the one-vector-per-chunk format 1 that older stores hold."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ingest import faiss_index
from ingest.faiss_index import all_scores, build_index, chunk_ids, index_format, search


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _windows(n_chunks: int, per_chunk: list[int], d: int = 16, seed: int = 0):
    """Random unit vectors, per_chunk[c % len] windows for chunk c, and the query."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_chunks), [per_chunk[c % len(per_chunk)] for c in range(n_chunks)])
    return _unit(rng.normal(size=(len(ids), d))), ids.astype(np.int64), _unit(rng.normal(size=d))


def _best_per_chunk(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The reference: each chunk's best window, by a loop."""
    sims = vectors @ query
    return np.array([sims[ids == c].max() for c in range(ids.max() + 1)], dtype=np.float32)


@pytest.mark.parametrize("k", [1, 5, 40, 100], ids=["k1", "k5", "k-all", "k-over"])
def test_search_returns_distinct_chunks_ranked_by_their_best_window(k):
    vectors, ids, query = _windows(40, [1, 3, 6, 2])
    index = build_index(vectors, ids)
    scores, found = search(index, query, k)
    best = _best_per_chunk(vectors, ids, query)
    assert len(found) == min(k, 40) and len(set(found.tolist())) == len(found)
    np.testing.assert_array_equal(found, np.argsort(-best, kind="stable")[: len(found)])
    np.testing.assert_allclose(scores, best[found], rtol=1e-5)
    np.testing.assert_allclose(all_scores(index, query), best, rtol=1e-5)


def test_search_fetches_more_when_one_chunk_holds_the_best_windows():
    """Chunk 0's 50 windows all beat every other chunk: k=3 still gets three distinct chunks."""
    rng = np.random.default_rng(1)
    query = _unit(rng.normal(size=16))
    near = _unit(query + 0.01 * rng.normal(size=(50, 16)))
    far = _unit(rng.normal(size=(10, 16)))
    far *= -np.sign(far @ query)[:, None]  # every other chunk points away from the query
    vectors = np.concatenate([near, far])
    ids = np.array([0] * 50 + list(range(1, 11)), dtype=np.int64)
    scores, found = search(build_index(vectors, ids), query, 3)
    assert found[0] == 0 and len(set(found.tolist())) == 3
    assert np.all(np.diff(scores) <= 0)


def test_format_2_survives_write_and_read_and_format_1_still_reads(tmp_path):
    vectors, ids, query = _windows(12, [2, 4])
    faiss_index.save_index(build_index(vectors, ids), tmp_path / "new.index")
    new = faiss_index.load_index(tmp_path / "new.index")
    assert index_format(new) == 2 and new.ntotal == len(ids)
    np.testing.assert_array_equal(chunk_ids(new), ids)
    np.testing.assert_array_equal(faiss_index.all_vectors(new), vectors)

    chunk_vectors = _unit(np.stack([vectors[ids == c].mean(0) for c in range(12)]))
    faiss_index.save_index(build_index(chunk_vectors), tmp_path / "old.index")  # as stores held before
    old = faiss_index.load_index(tmp_path / "old.index")
    assert index_format(old) == 1 and isinstance(old, faiss.IndexFlatIP)
    np.testing.assert_array_equal(chunk_ids(old), np.arange(12))
    scores, found = search(old, query, 4)
    np.testing.assert_array_equal(found, np.argsort(-(chunk_vectors @ query), kind="stable")[:4])
    np.testing.assert_allclose(all_scores(old, query), chunk_vectors @ query, rtol=1e-5)


def test_hnsw_past_the_threshold_counts_vectors_and_keeps_chunk_ids(monkeypatch, tmp_path):
    vectors, ids, query = _windows(30, [5])  # 150 vectors of 30 chunks
    monkeypatch.setattr(faiss_index, "HNSW_THRESHOLD", 100)
    index = build_index(vectors, ids)
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat)
    assert isinstance(faiss.downcast_index(build_index(vectors[:99], ids[:99]).index), faiss.IndexFlatIP)
    faiss_index.save_index(index, tmp_path / "hnsw.index")
    loaded = faiss_index.load_index(tmp_path / "hnsw.index")
    _, found = search(loaded, query, 5)
    best = _best_per_chunk(vectors, ids, query)
    assert len(set(found.tolist())) == 5 and found[0] == np.argmax(best)  # HNSW is exact on 150 points
    np.testing.assert_allclose(all_scores(loaded, query), best, rtol=1e-5)


def test_edge_cases():
    vectors, ids, query = _windows(3, [2])
    index = build_index(vectors, ids)
    assert [len(x) for x in search(index, query, 0)] == [0, 0]
    with pytest.raises(ValueError, match="ids"):
        build_index(vectors, ids[:-1])
    with pytest.raises(ValueError, match="ids"):
        build_index(vectors, -ids - 1)
    one = build_index(vectors[:1], np.array([0]))  # one chunk of one window
    assert search(one, query, 5)[1].tolist() == [0]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_library_index_returns_the_given_labels(kind):
    vectors, ids, query = _windows(200, [1, 2, 3])
    labels = ids + 1000  # e.g. a library row: the document's first row + its chunk
    index = faiss_index.build_library_index(vectors, kind=kind, nlist=4, nprobe=4, ids=labels)
    assert index.ntotal == len(vectors)
    _, found = search(index, query, 10)  # nprobe == nlist: the IVF search is exact
    best = _best_per_chunk(vectors, ids, query)
    np.testing.assert_array_equal(found, 1000 + np.argsort(-best, kind="stable")[:10])


def test_all_scores_from_kept_vectors_equal_those_read_from_the_index():
    vectors, ids, query = _windows(30, [2, 3])
    index = build_index(vectors, ids)
    kept = faiss_index.all_vectors(index), chunk_ids(index)
    np.testing.assert_array_equal(all_scores(index, query, *kept), all_scores(index, query))
    np.testing.assert_allclose(
        all_scores(index, query, *kept), _best_per_chunk(vectors, ids, query), rtol=1e-5
    )


def test_searches_run_on_one_openmp_thread_and_restore_the_count():
    vectors, ids, query = _windows(30, [2, 3])
    index = build_index(vectors, ids)
    before = faiss.omp_get_max_threads()
    seen = []
    real = index.search
    index.search = lambda q, k: seen.append(faiss.omp_get_max_threads()) or real(q, k)
    search(index, query, 5)
    assert seen == [1] and faiss.omp_get_max_threads() == before
