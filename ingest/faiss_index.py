"""FAISS index over a document's chunk embeddings (the baseline retriever).

Exact inner-product search (IndexFlatIP) up to HNSW_THRESHOLD vectors, HNSW above it. Measured on this
2-core CPU, 384-d unit vectors, one query, k=20 (docs/BENCHMARKS.md): flat 0.8 ms at 10k vectors,
3.7 ms at 50k, 10.7 ms at 100k, 28 ms at 200k; HNSW (M=32) stays near 1 ms but costs ~32 s to build
at 100k. A book is ~1k chunks, so the flat index is exact and sub-millisecond for every real document;
HNSW only pays for collections past ~100k chunks.

A whole library (`python -m app ingest-many`, issue 6) gets one index over every document's chunks from
`build_library_index`: flat up to IVF_THRESHOLD vectors, IndexIVFFlat above it (recall@10 against the flat
index: scripts/bench_ivf.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

HNSW_THRESHOLD = 100_000
IVF_THRESHOLD = 50_000
IVF_NPROBE = 16
_TRAIN_POINTS_PER_LIST = 39  # FAISS's k-means warns below 39 training points per centroid


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """Index unit-norm float32 vectors [n, d] for inner-product (cosine) search."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = vectors.shape[1]
    if len(vectors) >= HNSW_THRESHOLD:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def build_library_index(
    embeddings: np.ndarray, kind: str = "auto", nlist: int | None = None, nprobe: int = IVF_NPROBE
) -> faiss.Index:
    """Index a library's unit-norm float32 vectors [n, d] for inner-product search.

    Args:
        kind: "flat" (exact), "ivf" (IndexIVFFlat: k-means cells, search visits the nprobe nearest
            cells) or "auto" (ivf from IVF_THRESHOLD vectors on).
        nlist: IVF cells; default 4 * sqrt(n), capped so that each cell has 39 training points.
        nprobe: cells visited per query (recall vs speed).
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = "ivf" if n >= IVF_THRESHOLD else "flat"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = nlist or max(1, min(round(4 * math.sqrt(n)), n // _TRAIN_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}: use auto, flat or ivf")
    index.add(vectors)
    return index


def all_vectors(index: faiss.Index) -> np.ndarray:
    """Every stored vector [ntotal, d], in insertion order (flat and HNSW indexes)."""
    return index.reconstruct_n(0, index.ntotal)


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k chunks for one query vector [d]. Returns (scores [k'], chunk ids [k']) with k' <= k."""
    k = min(k, index.ntotal)
    if k == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores, ids = index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
    keep = ids[0] >= 0
    return scores[0][keep], ids[0][keep]


def all_scores(index: faiss.Index, query: np.ndarray) -> np.ndarray:
    """Similarity of the query to every chunk, in chunk order (for the "where it looked" plot)."""
    vectors = index.reconstruct_n(0, index.ntotal)
    return vectors @ query.astype(np.float32)
