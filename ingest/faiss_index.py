"""FAISS index over a document's chunk embeddings (the baseline retriever).

Format 2 (now): several vectors per chunk, one per window of the chunk (model.embed.encode_windows),
in a faiss.IndexIDMap whose ids are chunk indexes, so a search returns chunk indexes (repeated when
several windows of a chunk match); `search` keeps each chunk's best window. Format 1 (stored before):
the bare index, one vector per chunk, row == chunk index. `index_format` tells them apart; the
retriever re-embeds a format-1 document on first use.

Exact inner-product search (IndexFlatIP) up to HNSW_THRESHOLD vectors, HNSW above it. Measured on this
2-core CPU, 384-d unit vectors, one query, k=20 (docs/BENCHMARKS.md): flat 0.8 ms at 10k vectors,
3.7 ms at 50k, 10.7 ms at 100k, 28 ms at 200k; HNSW (M=32) stays near 1 ms but costs ~32 s to build
at 100k. A book is ~1k chunks, a few thousand window vectors, so the flat index is exact and
sub-millisecond for every real document; HNSW only pays for collections past ~100k vectors.

A whole library (`python -m app ingest-many`, issue 6) gets one index over every document's vectors from
`build_library_index`: flat up to IVF_THRESHOLD vectors, IndexIVFFlat above it (recall@10 against the flat
index: scripts/bench_ivf.py).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import faiss
import numpy as np

FORMAT_VERSION = 2  # of a per-document index written now; index_format() reads it back from the type
HNSW_THRESHOLD = 100_000
IVF_THRESHOLD = 50_000
IVF_NPROBE = 16
_TRAIN_POINTS_PER_LIST = 39  # FAISS's k-means warns below 39 training points per centroid
_OVERFETCH = 4  # vectors searched per chunk wanted: a chunk has a few windows, most of them weak


def build_index(embeddings: np.ndarray, chunk_ids: np.ndarray | None = None) -> faiss.Index:
    """Index unit-norm float32 vectors [n, d] for inner-product (cosine) search.

    Args:
        chunk_ids: int64 [n], the chunk each vector belongs to (format 2: an IndexIDMap over the flat or
            HNSW index); None for format 1 (a bare index, vector i is chunk i).
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = vectors.shape[1]
    if len(vectors) >= HNSW_THRESHOLD:  # counts vectors: search time grows with them, not with chunks
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        index = faiss.IndexFlatIP(dim)
    if chunk_ids is None:
        index.add(vectors)
        return index
    mapped = faiss.IndexIDMap(index)
    mapped.add_with_ids(vectors, _ids(chunk_ids, len(vectors)))
    return mapped


def build_library_index(
    embeddings: np.ndarray,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int = IVF_NPROBE,
    ids: np.ndarray | None = None,
) -> faiss.Index:
    """Index a library's unit-norm float32 vectors [n, d] for inner-product search.

    Args:
        kind: "flat" (exact), "ivf" (IndexIVFFlat: k-means cells, search visits the nprobe nearest
            cells) or "auto" (ivf from IVF_THRESHOLD vectors on).
        nlist: IVF cells; default 4 * sqrt(n), capped so that each cell has 39 training points.
        nprobe: cells visited per query (recall vs speed).
        ids: int64 [n], what a search returns for each vector (repeats allowed); None: its row.
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = "ivf" if n >= IVF_THRESHOLD else "flat"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        if ids is not None:
            index = faiss.IndexIDMap(index)
    elif kind == "ivf":
        nlist = nlist or max(1, min(round(4 * math.sqrt(n)), n // _TRAIN_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}: use auto, flat or ivf")
    if ids is None:
        index.add(vectors)
    else:  # IVF lists keep ids natively; the flat index is wrapped in an IndexIDMap above
        index.add_with_ids(vectors, _ids(ids, n))
    return index


def index_format(index: faiss.Index) -> int:
    """FORMAT_VERSION (2) for a per-document index of window vectors with chunk ids, 1 for one vector
    per chunk (the bare index that stores held before)."""
    return FORMAT_VERSION if isinstance(index, faiss.IndexIDMap) else 1


def all_vectors(index: faiss.Index) -> np.ndarray:
    """Every stored vector [ntotal, d], in insertion order (flat and HNSW indexes, either format): a
    copy (a view of the index's memory would outlive the wrapper that `downcast_index` returns)."""
    storage = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return storage.reconstruct_n(0, index.ntotal)


@contextlib.contextmanager
def one_thread():
    """FAISS's OpenMP on one thread for this thread's searches (OpenMP's thread count is per calling
    thread). One query against a document's flat index takes 0.27 ms on one thread and 0.67 ms on two
    here; on a 16-core GPU host the idle OpenMP workers kept spinning after each search and slowed the
    tokenizer and PyTorch that run next in the same question (docs/BENCHMARKS.md, issue 22)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def chunk_ids(index: faiss.Index) -> np.ndarray:
    """The chunk of every stored vector, int64 [ntotal], in insertion order (either format)."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return np.arange(index.ntotal, dtype=np.int64)


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k distinct chunks for one query vector [d], each scored by its best vector.

    Searches _OVERFETCH * k vectors first, and more while fewer than k distinct chunks come back.
    Returns:
        (scores [k'], chunk ids [k']) with k' <= k, best first, ids unique.
    """
    query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    fetch = min(k * _OVERFETCH, index.ntotal)
    while True:
        if fetch <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        with one_thread():
            scores, ids = index.search(query, fetch)
        keep = ids[0] >= 0
        scores, ids = scores[0][keep], ids[0][keep]
        _, first = np.unique(ids, return_index=True)  # results come best first: keep each id's first
        first = np.sort(first)
        if len(first) >= k or fetch >= index.ntotal:
            first = first[:k]
            return scores[first], ids[first].astype(np.int64)
        fetch = min(fetch * _OVERFETCH, index.ntotal)


def all_scores(
    index: faiss.Index, query: np.ndarray, vectors: np.ndarray | None = None, ids: np.ndarray | None = None
) -> np.ndarray:
    """Similarity of the query to every chunk (its best vector), in chunk order ("where it looked").

    vectors, ids: all_vectors(index) and chunk_ids(index), if the caller keeps them (a book's few
    thousand vectors are then not copied out of the index for every question)."""
    vectors = all_vectors(index) if vectors is None else vectors
    ids = chunk_ids(index) if ids is None else ids
    # einsum, not `@`: numpy hands a matrix-vector product to its BLAS, whose worker threads (one per
    # core) then spin and slow the tokenizer that runs next; einsum's one-thread loop is also faster here
    # (0.20 against 0.65 ms for a book's 3,473 vectors on this project's CPU)
    sims = np.einsum("ij,j->i", vectors, query.astype(np.float32))
    if len(ids) == 0:
        return sims
    order = np.argsort(ids, kind="stable")
    ids, sims = ids[order], sims[order]
    scores = np.full(int(ids[-1]) + 1, -1.0, dtype=np.float32)  # the cosine floor, finite for JSON
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    scores[ids[starts]] = np.maximum.reduceat(sims, starts)
    return scores


def _ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,) or (n and ids.min() < 0):
        raise ValueError(f"need {n} non-negative ids, one per vector, got shape {ids.shape}")
    return ids
