"""The trained QA model at inference: document caches, block-retrieval ranking and the span reader.

DocQA uses one QAEngine per process when trained weights are present (Settings.model_dir:
assets/qa_model by default, DOCQA_MODEL_DIR to override): BSBR ranks chunks with its block retrieval
over the document cache and reads its candidates against that cache; the FAISS and BM25 baselines
hand their candidates to the same reader without a cache, so the comparison isolates retrieval.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ingest.chunk import CHUNK_TOKENS
from ingest.tokenizer import load_tokenizer
from ingest.types import Chunk
from model.cuda_graph import GraphedCall
from model.encoder import DocumentCache
from model.qa import DocQAModel, best_spans, question_rows, reader_rows

PASSAGE_DOCUMENTS = 16  # documents whose chunks the engine keeps tokenized (~2.5 MB for a book)
# reader rows per batch on a CPU (QAEngine.read), without and with a document cache (each batch reads the
# cache's states once a layer: a book's 16 reads took 414 / 452 / 511 ms without one in batches of
# 4 / 8 / 16 rows, 548 / 504 / 570 ms with one, 2 cores)
CPU_READ_ROWS, CPU_READ_ROWS_CACHED = 4, 8
# With CUDA graphs (QAEngine's cuda_graphs) the reader's rows are padded to a multiple of GRAPH_ROWS
# rows, and every pass's rows past the next multiple of GRAPH_WIDTH tokens (always one padding token or
# more, so that a graph's warm-up and capture take the same masked path): a few shapes, one graph each
# per document, captured at a shape's GRAPH_AFTER-th use for that document (the uses before run eagerly:
# a document asked once or twice before the LRU drops it pays no capture; FairytaleQA val's 23 stories
# in random order with a capture at first use made BSBR's p50 75 ms against 26 eager, one H100).
GRAPH_ROWS, GRAPH_WIDTH, GRAPH_AFTER = 4, 32, 3
log = logging.getLogger(__name__)
CACHE_PREFIX = "bsbr_cache"  # a stored document's BSBR cache: bsbr_cache.<model fingerprint>.safetensors


@dataclass
class Reading:
    """The reader's verdict on one passage: has-answer score and the answer's char span in the passage."""

    score: float
    char_start: int
    char_end: int


@dataclass(frozen=True)
class Passage:
    """A passage as the reader takes it: its word-pieces (at most passage_tokens) and each piece's
    (start, end) char span in the passage text."""

    ids: np.ndarray  # (n,) int32
    spans: np.ndarray  # (n, 2) int32


def pad_rows(rows: tuple[torch.Tensor, ...], height: int, width: int) -> tuple[torch.Tensor, ...]:
    """(B, L) tensors (ids, mask, token types) padded to (height, width): the new columns are 0 (padding),
    the new rows copies of the last row (real rows, whose results the caller drops)."""
    out = []
    for x in rows:
        x = F.pad(x, (0, width - x.shape[1]))
        out.append(torch.cat([x, x[-1:].expand(height - x.shape[0], -1)]) if height > x.shape[0] else x)
    return tuple(out)


def model_fingerprint(folder: Path) -> str:
    """First 16 hex digits of the SHA-256 of the delta weights and config.json."""
    digest = hashlib.sha256()
    for name in ("delta.safetensors", "config.json"):
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()[:16]


class QAEngine:
    """Thread-safe wrapper of DocQAModel for the app (inference mode, LoRA merged, fp16 caches on GPU).

    With cpu_bf16 (Settings.cpu_bf16), the document pass and the reader run under bfloat16 autocast on a
    CPU; the question pass that ranks the chunks stays fp32 there (it is one short row). With
    cuda_graphs (Settings.cuda_graphs) on a GPU, the question pass and the reader are CUDA graphs, one
    per padded shape (GRAPH_ROWS, GRAPH_WIDTH) and per document the engine keeps (its caches' LRU): the
    passes are launch-bound there. A cache the engine does not keep (an evaluation's) is read eagerly.
    """

    def __init__(
        self,
        folder: Path,
        device: str = "cpu",
        cached_documents: int = 4,
        cpu_bf16: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.cpu_bf16 = cpu_bf16 and self.device.type == "cpu"
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.fingerprint = model_fingerprint(folder)
        self.model = DocQAModel.from_pretrained(folder).to(self.device)
        self.config = self.model.config
        self.tokenizer = load_tokenizer()
        self._lock = threading.Lock()
        self._caches: OrderedDict[str, DocumentCache] = OrderedDict()
        self._cached_documents = cached_documents
        self._passages: OrderedDict[str, list[Passage]] = OrderedDict()
        # id(cache) (id(None): reading without a cache) -> (that cache, {(pass, shape): GraphedCall, or
        # the eager uses of that shape so far})
        self._graphs: dict[int, tuple[DocumentCache | None, dict[tuple, GraphedCall | int]]] = {}
        self._graph_lock = threading.Lock()  # one capture or replay at a time (shared inputs and pool)
        self._graph_pool = None
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))

    @classmethod
    def load_if_present(
        cls, device: str, folder: Path, cpu_bf16: bool = False, cuda_graphs: bool = False
    ) -> QAEngine | None:
        """The engine over the weights in `folder` (Settings.model_dir), None when there are none."""
        folder = Path(folder)
        if not (folder / "delta.safetensors").exists():
            return None
        return cls(folder, device, cpu_bf16=cpu_bf16, cuda_graphs=cuda_graphs)

    @property
    def cache_file(self) -> str:
        """The artifact name of a document's cache made by this model: a cache made by other weights
        (an older model) has another name, so it is never read as this model's."""
        return f"{CACHE_PREFIX}.{self.fingerprint}.safetensors"

    @property
    def abstain_threshold(self) -> float:
        return self.config.abstain_threshold

    @property
    def rerank_retrieval_weight(self) -> float:
        return self.config.rerank_retrieval_weight

    @torch.inference_mode()
    def build_cache(
        self, chunks: list[Chunk], progress: Callable[[int, int], None] | None = None
    ) -> DocumentCache:
        """Document pass over the chunks ("[CLS] chunk [SEP]" rows of 256 tokens)."""
        tok = self.tokenizer
        ids = torch.zeros(len(chunks), CHUNK_TOKENS, dtype=torch.long)
        pieces = tok([c.text for c in chunks], add_special_tokens=False)["input_ids"]
        for i, p in enumerate(pieces):
            row = [tok.cls_token_id, *p[: CHUNK_TOKENS - 2], tok.sep_token_id]
            ids[i, : len(row)] = torch.tensor(row)
        ids = ids.to(self.device)
        with self._autocast(), self._cpu_autocast():
            cache = self.model.document_cache(ids, (ids != 0).long(), progress=progress)
        return cache.to("cpu", torch.float16)

    def cache(self, doc_id: str, path: Path) -> DocumentCache:
        """A document's cache from disk, kept in a small LRU on the compute device."""
        with self._lock:
            if doc_id in self._caches:
                self._caches.move_to_end(doc_id)
                return self._caches[doc_id]
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        cache = DocumentCache.load(path).to(self.device, dtype)
        with self._lock:
            replaced = self._caches.get(doc_id)  # another thread's load of the same document
            if replaced is not None:
                self._graphs.pop(id(replaced), None)
            self._caches[doc_id] = cache
            while len(self._caches) > self._cached_documents:
                _, old = self._caches.popitem(last=False)
                self._graphs.pop(id(old), None)
        return cache

    def forget(self, doc_id: str) -> None:
        with self._lock:
            old = self._caches.pop(doc_id, None)
            if old is not None:
                self._graphs.pop(id(old), None)
            self._passages.pop(doc_id, None)

    def _graphed(
        self,
        name: str,
        fn: Callable,
        cache: DocumentCache | None,
        rows: tuple[torch.Tensor, ...],
        row_step: int = GRAPH_ROWS,
    ) -> tuple[torch.Tensor, ...] | None:
        """fn(*rows) (fn reading `cache`) replayed as the CUDA graph of this pass, document and padded
        shape, captured at its GRAPH_AFTER-th use; rows are (B, L) and padded here (pad_rows) to a
        multiple of row_step rows, so the outputs' first B rows and L columns are the real ones. None
        where the engine uses no graph for this call (cuda_graphs off, a cache it does not keep, rows too
        wide to pad, a shape used fewer times): the caller runs fn itself."""
        if not self.cuda_graphs:
            return None
        B, L = rows[0].shape
        height = -(-B // row_step) * row_step
        width = (L // GRAPH_WIDTH + 1) * GRAPH_WIDTH
        if width > self.model.encoder.config.max_position_embeddings:
            return None
        with self._lock:
            if cache is not None and not any(c is cache for c in self._caches.values()):
                return None  # its graphs would keep it alive: evaluation builds caches by the hundred
            _, graphs = self._graphs.setdefault(id(cache), (cache, {}))
        key = (name, height, width)
        with self._graph_lock:
            graph = graphs.get(key, 0)
            if isinstance(graph, int) and graph + 1 < GRAPH_AFTER:
                graphs[key] = graph + 1
                return None
            padded = pad_rows(rows, height, width)
            if isinstance(graph, int):
                graph = self._capture(name, fn, padded)
                if graph is None:
                    return None
                graphs[key] = graph
            return graph(*padded)

    def _capture(self, name: str, fn: Callable, rows: tuple[torch.Tensor, ...]) -> GraphedCall | None:
        """fn over these rows as a CUDA graph in the engine's pool; None, and graphs off from now on, where
        torch cannot capture it."""

        def run(*xs):
            # no autocast weight cache: its casts would be freed after the capture (torch's CUDA graph notes)
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                return fn(*xs)

        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        try:
            return GraphedCall(run, rows, self._graph_pool)
        except RuntimeError as err:  # an op this torch cannot capture: answer eagerly from now on
            log.warning("CUDA graphs turned off, the %s pass could not be captured: %s", name, err)
            self.cuda_graphs = False
            return None

    def tokenize(self, passages: list[str]) -> list[Passage]:
        """The passages as the reader takes them (one batched call of the fast tokenizer)."""
        enc = self.tokenizer(passages, add_special_tokens=False, return_offsets_mapping=True)
        n = self.config.passage_tokens
        return [
            Passage(np.asarray(ids[:n], dtype=np.int32), np.asarray(spans[:n], dtype=np.int32).reshape(-1, 2))
            for ids, spans in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]

    def document_passages(self, doc_id: str, texts: Callable[[], list[str]] | None) -> list[Passage] | None:
        """Every chunk of a document tokenized for the reader, once per document: `texts()` gives the
        chunk texts in order the first time (a book's 800 chunks take ~0.2 s on 2 CPU cores; 20 of
        them, which each question would otherwise tokenize, 6-10 ms). The last PASSAGE_DOCUMENTS
        documents are kept; texts=None: only what is kept (None if the document is not)."""
        with self._lock:
            if doc_id in self._passages:
                self._passages.move_to_end(doc_id)
                return self._passages[doc_id]
        if texts is None:
            return None
        passages = self.tokenize(texts())
        with self._lock:
            self._passages[doc_id] = passages
            while len(self._passages) > PASSAGE_DOCUMENTS:
                self._passages.popitem(last=False)
        return passages

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _cpu_autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)

    def _question(self, question: str) -> list[int]:
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
        return ids[: self.config.question_tokens]

    @torch.inference_mode()
    def retrieval_scores(self, question: str, cache: DocumentCache) -> torch.Tensor:
        """Block-retrieval score of every document chunk for the question: (N,) float32 on the CPU."""
        tok = self.tokenizer
        q_ids, q_mask = question_rows(
            [self._question(question)], tok.cls_token_id, tok.sep_token_id, self.device
        )
        graphed = self._graphed(
            "question",
            lambda ids, mask: (self.model.retrieval_scores(ids, mask, cache),),
            cache,
            (q_ids, q_mask),
            row_step=1,
        )
        if graphed is not None:
            scores = graphed[0]
        else:
            with self._autocast():
                scores = self.model.retrieval_scores(q_ids, q_mask, cache)
        return scores[0].float().cpu()

    @torch.inference_mode()
    def read(
        self, question: str, passages: list[str] | list[Passage], cache: DocumentCache | None
    ) -> list[Reading]:
        """Best answer span and has-answer score of each passage (against the cache, if given); the
        passages as text or already tokenized (`tokenize`, `document_passages`).

        On a GPU the rows go in one batch (its time is launches); on a CPU shortest first, in batches
        of CPU_READ_ROWS (CPU_READ_ROWS_CACHED with a cache), each padded to its own longest row: less
        padding, and a small batch's activations stay in the processor's caches."""
        if not passages:
            return []
        if isinstance(passages[0], str):
            passages = self.tokenize(passages)
        q = self._question(question)
        if self.device.type != "cpu":
            return self._read_rows(q, passages, cache)
        order = sorted(range(len(passages)), key=lambda i: len(passages[i].ids))
        out: list[Reading | None] = [None] * len(passages)
        rows = CPU_READ_ROWS if cache is None else CPU_READ_ROWS_CACHED
        for k in range(0, len(order), rows):
            batch = order[k : k + rows]
            for i, reading in zip(
                batch, self._read_rows(q, [passages[i] for i in batch], cache), strict=True
            ):
                out[i] = reading
        return out

    def _read_rows(self, q: list[int], passages: list[Passage], cache: DocumentCache | None) -> list[Reading]:
        """`read` of one batch of rows (question word-pieces `q`)."""
        tok = self.tokenizer
        pieces = [p.ids for p in passages]
        ids, mask, types, offsets = reader_rows(
            [q] * len(pieces), pieces, tok.cls_token_id, tok.sep_token_id, self.device
        )
        graphed = self._graphed(
            "read", lambda i, m, t: self.model.read(i, m, t, cache), cache, (ids, mask, types)
        )
        if graphed is not None:
            start, end = (x[: ids.shape[0], : ids.shape[1]] for x in graphed)
        else:
            with self._autocast(), self._cpu_autocast():
                start, end = self.model.read(ids, mask, types, cache)
        score, s, e = best_spans(start, end, offsets, [len(p) for p in pieces], self.config.max_answer_tokens)
        out = []
        for p, sc, a, b in zip(passages, score.tolist(), s.tolist(), e.tolist(), strict=True):
            if not len(p.ids):  # a passage of no word-pieces holds no answer
                out.append(Reading(float("-inf"), 0, 0))
                continue
            out.append(Reading(sc, int(p.spans[a, 0]), int(p.spans[b, 1])))
        return out
