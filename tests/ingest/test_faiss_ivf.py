"""The library index (issue 6): flat below IVF_THRESHOLD, IVF above; IVF visiting every cell is exact."""

import faiss
import numpy as np
import pytest

from ingest import faiss_index
from ingest.faiss_index import build_index, build_library_index


def _clustered(n: int, d: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_auto_is_flat_below_the_threshold_and_ivf_above(monkeypatch):
    vectors = _clustered(1000)
    assert isinstance(build_library_index(vectors), faiss.IndexFlatIP)
    monkeypatch.setattr(faiss_index, "IVF_THRESHOLD", 500)
    ivf = build_library_index(vectors)
    assert isinstance(ivf, faiss.IndexIVFFlat) and ivf.ntotal == 1000
    assert 1 <= ivf.nlist <= 1000 // 39 and ivf.nprobe == min(faiss_index.IVF_NPROBE, ivf.nlist)
    assert isinstance(build_index(vectors), faiss.IndexFlatIP)  # per-document indexes are unchanged


def test_ivf_visiting_every_cell_matches_flat_and_default_nprobe_recalls_well():
    vectors, queries = _clustered(4000), _clustered(50, seed=1)
    _, truth = build_library_index(vectors, kind="flat").search(queries, 10)
    ivf = build_library_index(vectors, kind="ivf", nlist=64, nprobe=64)
    np.testing.assert_array_equal(ivf.search(queries, 10)[1], truth)
    ivf.nprobe = 16
    found = ivf.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall > 0.8


def test_library_index_edge_cases():
    with pytest.raises(ValueError, match="unknown index kind"):
        build_library_index(_clustered(10), kind="hnsw")
    one = build_library_index(_clustered(1), kind="ivf")  # a single vector still trains one cell
    assert one.nlist == 1 and one.search(_clustered(1), 1)[1][0, 0] == 0
