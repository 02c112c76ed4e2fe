"""First-stage retrievers of the methods (app/methods.py): each scores every chunk of a document.

`top(question, doc_id, k)` -> (chunk ids [k], their scores [k], scores of every chunk [n]), best first.

- `BsbrRetriever` (`bsbr`): the BSBR model's block retrieval over the document cache (app/engine.py).
- `FaissRetriever` (`faiss`, the FAISS baseline): MiniLM embeddings in a FAISS index, alone.
- `Bm25Retriever` (`bm25`): keyword search.
- `HybridRetriever` (`hybrid`): the FAISS and BM25 rankings fused by reciprocal rank (MiniLM alone misses
  passages a question names by rare words: "What estate has been let at last?" puts the novel's
  "Netherfield Park is let at last" at FAISS rank 28).

The ones that keep files per document (FAISS, BSBR) are also the ingest pipeline's indexers (`index`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingest import faiss_index
from ingest.store import ArtifactWriter, DocumentStore
from ingest.types import Chunk

if TYPE_CHECKING:
    from app.engine import QAEngine

FAISS_FILE = "faiss.index"
ProgressFn = Callable[[int, int], None]

log = logging.getLogger(__name__)


def import_bm25s():
    """bm25s, imported so that it leaves the GPU alone.

    Where JAX is installed, bm25s runs a JAX op at import (its top-k backend), and JAX then claims 75% of
    every GPU's memory for itself. BM25 here never uses JAX, so JAX is kept on the CPU (JAX_PLATFORMS=cpu)
    unless the environment already chose its platforms.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s

    return bm25s


class FaissRetriever:
    """The FAISS baseline (`faiss`): all-MiniLM-L6-v2 mean-pooled embeddings in a FAISS inner-product
    index, one index per document.

    Each chunk is embedded as several overlapping windows of up to 64 tokens (model.embed.WINDOW_TOKENS)
    and scores as its best window, so a short fact inside a long chunk can still be found. With
    cpu_bf16 (Settings.cpu_bf16) the encoder is kept in bfloat16 on a CPU.
    """

    stage = "embed"

    def __init__(self, store: DocumentStore, device: str, cpu_bf16: bool = False) -> None:
        self.store = store
        self.device = device
        self.cpu_bf16 = cpu_bf16
        self._lock = threading.Lock()
        self._embedder = None
        self._indexes: dict[str, tuple[object, np.ndarray, np.ndarray]] = {}
        self._asking = threading.local()  # .vectors inside one_question()

    @property
    def embedder(self):
        with self._lock:
            if self._embedder is None:
                from model.embed import SentenceEmbedder

                self._embedder = SentenceEmbedder(self.device, cpu_bf16=self.cpu_bf16)
            return self._embedder

    def index(self, chunks: list[Chunk], progress: ProgressFn | None = None) -> dict[str, ArtifactWriter]:
        """Embed the chunks (at ingest); the writer of their FAISS index file."""
        index = self._build_index(chunks, progress)
        return {FAISS_FILE: lambda path: faiss_index.save_index(index, path)}

    def _build_index(self, chunks: list[Chunk], progress: ProgressFn | None = None):
        vectors, owners = self.embedder.encode_windows([c.text for c in chunks], progress=progress)
        return faiss_index.build_index(vectors, np.array([c.index for c in chunks], np.int64)[owners])

    def _index(self, doc_id: str):
        return self._loaded(doc_id)[0]

    def _loaded(self, doc_id: str) -> tuple[object, np.ndarray, np.ndarray]:
        """A document's index, with its vectors and their chunk ids read out once (for all_scores)."""
        if doc_id not in self._indexes:
            index = faiss_index.load_index(self.store.artifact_path(doc_id, FAISS_FILE))
            if faiss_index.index_format(index) == 1:
                index = self._upgrade(doc_id)
            self._indexes[doc_id] = (index, faiss_index.all_vectors(index), faiss_index.chunk_ids(index))
        return self._indexes[doc_id]

    def _upgrade(self, doc_id: str):
        """Re-embed a document stored with one vector per chunk (format 1) as windows, and store it."""
        chunks = self.store.chunks(doc_id)
        log.warning(
            "document %s was stored with the older one-vector-per-chunk FAISS index: "
            "re-embedding its %d chunks as windows (once)",
            doc_id,
            len(chunks),
        )
        index = self._build_index(chunks)
        self.store.put_artifact(doc_id, FAISS_FILE, lambda path: faiss_index.save_index(index, path))
        return index

    @contextlib.contextmanager
    def one_question(self) -> Iterator[None]:
        """Within it (one ask, in this thread), each question is embedded once: the `faiss` and
        `hybrid` methods and the library search share the vector."""
        self._asking.vectors = {}
        try:
            yield
        finally:
            del self._asking.vectors

    def embed_query(self, question: str) -> np.ndarray:
        vectors = getattr(self._asking, "vectors", None)
        if vectors is not None and question in vectors:
            return vectors[question]
        vector = self.embedder.encode([question])[0]
        if vectors is not None:
            vectors[question] = vector
        return vector

    def top(self, question: str, doc_id: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (chunk ids [k], their scores [k], scores of every chunk [n]): distinct chunks, best
        first, each scored by its best window."""
        query = self.embed_query(question)
        index, vectors, chunk_ids = self._loaded(doc_id)
        scores, ids = faiss_index.search(index, query, k)
        return ids, scores, faiss_index.all_scores(index, query, vectors, chunk_ids)

    def scores(self, question: str, doc_id: str) -> np.ndarray:
        """Scores of every chunk [n] (its best window), without a top-k search."""
        index, vectors, chunk_ids = self._loaded(doc_id)
        return faiss_index.all_scores(index, self.embed_query(question), vectors, chunk_ids)

    def forget(self, doc_id: str) -> None:
        self._indexes.pop(doc_id, None)


class Bm25Retriever:
    """BM25 (bm25s, English stop words) over the chunk texts; built in memory on first use per document."""

    def __init__(self, store: DocumentStore) -> None:
        self.store = store

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one retriever per app; bounded cache of small indexes
    def _index(self, doc_id: str):
        bm25s = import_bm25s()
        texts = [c.text for c in self.store.chunks(doc_id)]
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        if not tokens.vocab:  # only one-letter words or stop words: bm25s cannot index it, nothing matches
            return None
        index = bm25s.BM25()
        index.index(tokens, show_progress=False)
        return index

    def top(self, question: str, doc_id: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scores = self.scores(question, doc_id)
        ids = np.argsort(-scores, kind="stable")[:k]
        return ids, scores[ids], scores

    def scores(self, question: str, doc_id: str) -> np.ndarray:
        """BM25 score of every chunk [n] (0 where no query word occurs)."""
        bm25s = import_bm25s()
        index = self._index(doc_id)
        query = bm25s.tokenize([question], stopwords="en", show_progress=False, return_ids=False)[0]
        scores = np.zeros(0, np.float32)
        if query and index is not None:
            scores = index.get_scores(query).astype(np.float32)
        if scores.size == 0:
            scores = np.zeros(len(self.store.chunks(doc_id)), np.float32)
        return scores

    def forget(self, doc_id: str) -> None:
        self._index.cache_clear()


RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al., 2009): rank r adds 1 / (RRF_K + r)


def reciprocal_rank_fusion(dense: np.ndarray, sparse: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """Fused score of every chunk from two score vectors over the same chunks.

    A chunk at 1-based rank r of a ranking adds 1 / (k + r). Chunks the sparse ranking does not match at
    all (score <= 0) add nothing from it, so unmatched chunks do not get an arbitrary order.
    """
    fused = np.zeros(len(dense), np.float64)
    for scores, matched in ((dense, np.ones(len(dense), bool)), (sparse, sparse > 0)):
        order = np.argsort(-scores, kind="stable")
        ranks = np.empty(len(scores), np.int64)
        ranks[order] = np.arange(1, len(scores) + 1)
        fused += np.where(matched, 1.0 / (k + ranks), 0.0)
    return fused.astype(np.float32)


class HybridRetriever:
    """The `hybrid` method: the FAISS and BM25 rankings fused by reciprocal rank."""

    def __init__(self, dense: FaissRetriever, sparse: Bm25Retriever) -> None:
        self.dense, self.sparse = dense, sparse

    def top(self, question: str, doc_id: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fused = reciprocal_rank_fusion(
            self.dense.scores(question, doc_id), self.sparse.scores(question, doc_id)
        )
        ids = np.argsort(-fused, kind="stable")[:k]
        return ids, fused[ids], fused

    def forget(self, doc_id: str) -> None:
        self.dense.forget(doc_id)
        self.sparse.forget(doc_id)


class BsbrRetriever:
    """The `bsbr` method: log-probabilities of BSBR's block-retrieval distribution over the chunks.

    Its index is the document cache (the model's pass over the whole document), one file per model:
    documents stored before these weights were there get theirs built on first use."""

    stage = "bsbr"

    def __init__(self, store: DocumentStore, engine: QAEngine) -> None:
        self.store, self.engine = store, engine

    def index(self, chunks: list[Chunk], progress: ProgressFn | None = None) -> dict[str, ArtifactWriter]:
        return {self.engine.cache_file: self.engine.build_cache(chunks, progress=progress).save}

    def cache(self, doc_id: str):
        """The document's cache made by the loaded model (built now if missing; other models' removed)."""
        from app.engine import CACHE_PREFIX

        name = self.engine.cache_file
        path = self.store.artifact_path(doc_id, name)
        if not path.exists():
            cache = self.engine.build_cache(self.store.chunks(doc_id))
            self.store.put_artifact(doc_id, name, cache.save)
            self.store.remove_artifacts(doc_id, f"{CACHE_PREFIX}*", keep=name)
        return self.engine.cache(doc_id, path)

    def top(self, question: str, doc_id: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        every = self.engine.retrieval_scores(question, self.cache(doc_id)).log_softmax(0).numpy()
        ids = np.argsort(-every, kind="stable")[:k]
        return ids, every[ids], every

    def forget(self, doc_id: str) -> None:
        self.engine.forget(doc_id)


class FaissLibrary:
    """`ingest-many`'s library index (app/ingest_many.py: LIBRARY_INDEX + LIBRARY_MAP under the store's
    home), read by the `faiss` method when a question goes to several documents that it covers: one
    search over the library instead of one per document (the same candidates with a flat index; IVF's
    are approximate). Reloaded when ingest-many writes it again; documents stored after it was built,
    or changed since, are not covered, and such questions search each document's own index."""

    def __init__(self, store: DocumentStore, faiss: FaissRetriever) -> None:
        self.store, self.faiss = store, faiss
        self._lock = threading.Lock()
        self._loaded: tuple[float, object, dict[str, tuple[int, int]], np.ndarray, list[str]] | None = None

    def _load(self):
        """(index, doc id -> (first row, chunks), first rows [D], doc ids [D]) or None without a library."""
        from app.ingest_many import LIBRARY_INDEX, LIBRARY_MAP

        home = Path(self.store.home)
        index_path, map_path = home / LIBRARY_INDEX, home / LIBRARY_MAP
        if not (index_path.is_file() and map_path.is_file()):
            return None
        stamp = index_path.stat().st_mtime_ns + map_path.stat().st_mtime_ns
        with self._lock:
            if self._loaded is None or self._loaded[0] != stamp:
                mapping = json.loads(map_path.read_text())
                docs = mapping["documents"]
                spans = {d["doc_id"]: (d["first_row"], d["chunks"]) for d in docs}
                firsts = np.array([d["first_row"] for d in docs], np.int64)
                self._loaded = (
                    stamp,
                    faiss_index.load_index(index_path),
                    spans,
                    firsts,
                    [d["doc_id"] for d in docs],
                )
            return self._loaded[1:]

    def covers(self, doc_ids: list[str]) -> bool:
        """True when every document is in the library with the chunks it has in the store now."""
        loaded = self._load()
        if loaded is None:
            return False
        spans = loaded[1]
        return all(d in spans and spans[d][1] == self.store.info(d).n_chunks for d in doc_ids)

    def top(self, question: str, doc_ids: list[str], k: int) -> list[tuple[float, str, int]]:
        """The best k (score, doc id, chunk index) of `doc_ids` (which `covers` must accept), best first."""
        index, _, firsts, order = self._load()
        wanted = set(doc_ids)
        query, fetch = self.faiss.embed_query(question), k
        while True:
            scores, rows = faiss_index.search(index, query, fetch)
            owner = np.searchsorted(firsts, rows, side="right") - 1
            found = [
                (float(s), order[o], int(r - firsts[o]))
                for s, r, o in zip(scores, rows, owner, strict=True)
                if order[o] in wanted
            ]
            if len(found) >= k or len(rows) < fetch:  # enough, or the whole library came back
                return found[:k]
            fetch *= 4
