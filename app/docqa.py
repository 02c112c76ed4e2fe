"""DocQA: the library API behind the CLI and the web app.

from app import DocQA
qa = DocQA()                       # store under DOCQA_HOME (default ~/.cache/bsbr-docqa)
doc_id = qa.add("book.pdf")        # extract pages -> clean -> chunk -> index; same file twice = once
answers = qa.ask("Who rents Netherfield?", methods=("bsbr", "faiss"))
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from app.engine import CACHE_PREFIX, QAEngine
from app.settings import Settings, resolve_device
from app.types import Answer, Evidence, IngestReport
from ingest.errors import FileMissingError, LimitExceededError
from ingest.store import DocumentInfo, DocumentStore, StoreError
from ingest.types import Chunk

StageProgress = Callable[[str, int, int], None]
# "faiss": MiniLM/FAISS ranks fused with BM25's (app/retrievers.py); "dense": FAISS alone, for comparison
METHODS = ("bsbr", "faiss", "bm25", "dense")
MAX_QUESTION_CHARS = 1000
# Candidates the reader rescores (FINDINGS.md: reading the top 20 lifted R@1 0.69 -> 0.86); on a CPU
# fewer, to keep a question near a second (settings.read_k / DOCQA_READ_K overrides both).
READ_K_GPU, READ_K_CPU = 20, 16
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def check_file(path: Path, settings: Settings) -> Path:
    """`path` if it is a file within the size limit; else FileMissingError / LimitExceededError."""
    if not path.is_file():
        raise FileMissingError(str(path), "no such file")
    size_mb = path.stat().st_size / 2**20
    if size_mb > settings.max_file_mb:
        raise LimitExceededError(
            str(path), f"file is {size_mb:.0f} MB, over the {settings.max_file_mb} MB limit"
        )
    return path


def extract_file(path: Path, settings: Settings, password: str | None = None):
    """pypdf/text extraction of `path` under the settings' limits (pages are refused before any is read)."""
    from ingest.extract import extract

    return extract(
        path,
        password=password,
        max_pages=settings.max_pages,
        max_chars=settings.max_chars,
        max_seconds=settings.max_extract_seconds,
    )


def chunk_parsed(parsed) -> list[Chunk]:
    """The document's chunks; EmptyDocumentError when no chunk holds a word-piece (e.g. only zero-width
    or replacement characters)."""
    from ingest.chunk import chunk_document
    from ingest.errors import EmptyDocumentError

    chunks = chunk_document(parsed)
    if not any(c.n_tokens for c in chunks):
        raise EmptyDocumentError(parsed.path, "no readable words to index")
    return chunks


def file_id(path: Path) -> str:
    """Content-hash document id: the same bytes give the same id, whatever the file is called."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class DocQA:
    """Documents in, answers with evidence out. Thread-safe; one instance serves a whole app.

    Args:
        home: data folder (default: settings.home, i.e. DOCQA_HOME).
        device: "cpu", "cuda" or "auto" (default: DOCQA_DEVICE, else auto).
        settings: limits and defaults (default: read from the environment).
    """

    def __init__(
        self, home: str | Path | None = None, device: str | None = None, settings: Settings | None = None
    ) -> None:
        from app.retrievers import Bm25Retriever, FaissRetriever, FusedRetriever

        self.settings = settings or Settings.from_env()
        self.device = resolve_device(device or self.settings.device)
        self.store = DocumentStore(home or self.settings.home)
        self.faiss = FaissRetriever(self.store, self.device)
        self.bm25 = Bm25Retriever(self.store)
        self.fused = FusedRetriever(self.faiss, self.bm25)
        self.engine = QAEngine.load_if_present(self.device)
        self.read_k = self.settings.read_k or (READ_K_GPU if self.device.startswith("cuda") else READ_K_CPU)
        self._ingest_lock = threading.Lock()  # guards _doc_locks
        self._doc_locks: dict[str, threading.Lock] = {}
        self._memo_lock = threading.Lock()
        self._memo: dict[str, tuple[str, list[Chunk], list[int]]] = {}

    def _doc_lock(self, doc_id: str) -> threading.Lock:
        """One lock per document id: the same file ingested twice at once is stored once, while
        different files ingest side by side (a visitor's upload never waits for the sample book)."""
        with self._ingest_lock:
            return self._doc_locks.setdefault(doc_id, threading.Lock())

    @property
    def methods(self) -> tuple[str, ...]:
        """Methods shown by default (the app's choices): BSBR needs the trained weights (assets/qa_model)."""
        return ("bsbr", "faiss", "bm25") if self.engine is not None else ("faiss", "bm25")

    @property
    def askable(self) -> tuple[str, ...]:
        """Every method ask() takes here: the default ones and "dense" (FAISS without the BM25 fusion)."""
        return (*self.methods, "dense")

    def add(
        self,
        path: str | Path,
        progress: StageProgress | None = None,
        owner: str = "local",
        password: str | None = None,
    ) -> str:
        """Ingest a file (PDF, .txt, .md) and return its document id. See `ingest` for details."""
        return self.ingest(path, progress=progress, owner=owner, password=password).doc_id

    def ingest(
        self,
        path: str | Path,
        progress: StageProgress | None = None,
        owner: str = "local",
        password: str | None = None,
    ) -> IngestReport:
        """Extract, clean, chunk and index a file; store it for `owner`.

        Args:
            progress: called as progress(stage, done, total) with stage in
                "extract", "chunk", "embed", "bsbr".
        Raises:
            ingest.errors.IngestError (one-line message naming the file) for unreadable input.
        """
        path = check_file(Path(path), self.settings)
        start = time.perf_counter()
        doc_id = file_id(path)
        with self._doc_lock(doc_id):
            if self.store.has(doc_id):
                return self._claim(doc_id, owner, start)
            t = time.perf_counter()
            parsed = extract_file(path, self.settings, password)
            _tick(progress, "extract", parsed.n_pages)
            return self._index_and_store(doc_id, parsed, owner, progress, start, time.perf_counter() - t)

    def add_text(
        self, text: str, title: str = "text", owner: str = "local", progress: StageProgress | None = None
    ) -> IngestReport:
        """Ingest raw text as a one-page document, kept exactly as given (offsets into it stay valid)."""
        from ingest.errors import EmptyDocumentError
        from ingest.types import ParsedDocument

        if not text.strip():
            raise EmptyDocumentError(title, "the text is empty")
        start = time.perf_counter()
        doc_id = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        with self._doc_lock(doc_id):
            if self.store.has(doc_id):
                return self._claim(doc_id, owner, start)
            parsed = ParsedDocument(path=f"{title}.txt", title=title, text=text, page_starts=[0], n_pages=1)
            return self._index_and_store(doc_id, parsed, owner, progress, start, 0.0)

    def _index_and_store(
        self,
        doc_id: str,
        parsed,
        owner: str,
        progress: StageProgress | None,
        start: float,
        extract_seconds: float,
    ) -> IngestReport:
        timings = {"extract": extract_seconds}
        t = time.perf_counter()
        chunks = chunk_parsed(parsed)
        timings["chunk"] = time.perf_counter() - t
        _tick(progress, "chunk", len(chunks))
        return self._store_chunked(doc_id, parsed, chunks, timings, owner, progress, start)

    def add_chunked(
        self, doc_id: str, parsed, chunks: list[Chunk], timings: dict[str, float], owner: str = "local"
    ) -> IngestReport:
        """The model stages (FAISS embedding, BSBR pass) and the store write of a document whose CPU
        stages (extract, chunk, with their `timings`) ran elsewhere, e.g. in `ingest-many`'s workers.
        A document stored meanwhile (the same bytes) is only claimed for `owner`."""
        start = time.perf_counter() - sum(timings.values())
        with self._doc_lock(doc_id):
            if self.store.has(doc_id):
                return self._claim(doc_id, owner, time.perf_counter())
            return self._store_chunked(doc_id, parsed, chunks, dict(timings), owner, None, start)

    def _store_chunked(self, doc_id, parsed, chunks, timings, owner, progress, start) -> IngestReport:
        artifacts = self._build_artifacts(chunks, progress, timings)
        self.store.add(doc_id, parsed, chunks, artifacts, owner, timings)
        return self._report(self.store.info(doc_id), time.perf_counter() - start, new=True)

    def _claim(self, doc_id: str, owner: str, start: float) -> IngestReport:
        """The document is stored already (same content): add `owner` to it and report it as not new."""
        self.store.add_owner(doc_id, owner)
        return self._report(self.store.info(doc_id), time.perf_counter() - start, new=False)

    def _build_artifacts(self, chunks: list[Chunk], progress: StageProgress | None, timings: dict) -> dict:
        from app.retrievers import FAISS_FILE

        t = time.perf_counter()
        artifacts = {FAISS_FILE: self.faiss.build(chunks, progress=_stage(progress, "embed"))}
        timings["embed"] = time.perf_counter() - t
        if self.engine is not None:
            t = time.perf_counter()
            cache = self.engine.build_cache(chunks, progress=_stage(progress, "bsbr"))
            artifacts[self.engine.cache_file] = cache.save
            timings["bsbr"] = time.perf_counter() - t
        return artifacts

    def _bsbr_cache(self, doc_id: str):
        """The document's BSBR cache made by the loaded model; built now for documents stored before these
        weights were there (none, or another model's), whose stale caches are then removed."""
        name = self.engine.cache_file
        path = self.store.artifact_path(doc_id, name)
        if not path.exists():
            cache = self.engine.build_cache(self.store.chunks(doc_id))
            self.store.put_artifact(doc_id, name, cache.save)
            self.store.remove_artifacts(doc_id, f"{CACHE_PREFIX}*", keep=name)
        return self.engine.cache(doc_id, path)

    @staticmethod
    def _report(info: DocumentInfo, seconds: float, new: bool) -> IngestReport:
        return IngestReport(
            doc_id=info.id,
            title=info.title,
            filename=info.filename,
            pages=info.n_pages,
            tokens=info.n_tokens,
            chunks=info.n_chunks,
            seconds=seconds,
            new=new,
            scanned_pages=info.scanned_pages,
            warnings=info.warnings,
            timings=info.timings,
        )

    def documents(self, owner: str | None = "local") -> list[DocumentInfo]:
        """Documents visible to `owner` (every document when owner is None)."""
        return self.store.list(owner)

    def delete(self, doc_id: str, owner: str | None = "local") -> None:
        """Forget a document for `owner`; its data goes when no owner is left."""
        self.store.delete(doc_id, owner)
        if not self.store.has(doc_id):
            self.faiss.forget(doc_id)
            self.bm25.forget(doc_id)
            with self._memo_lock:
                self._memo.pop(doc_id, None)
            if self.engine is not None:
                self.engine.forget(doc_id)

    def resolve(self, doc: str, owner: str | None = "local", progress: StageProgress | None = None) -> str:
        """A document id, or a file path that is ingested on first use, -> document id."""
        if self.store.visible(doc, owner):
            return doc
        path = Path(doc)
        if path.exists():
            return self.add(path, progress=progress, owner=owner or "local")
        raise StoreError(f"{doc}: neither a stored document id nor an existing file")

    def ask(
        self,
        question: str,
        docs: Sequence[str] | None = None,
        methods: Sequence[str] = ("faiss",),
        top_k: int = 5,
        owner: str | None = "local",
        retrieve_k: int | None = None,
    ) -> list[Answer]:
        """Answer `question` from `docs` (default: every document of `owner`) with each method.

        Args:
            top_k: evidence passages returned per answer.
            retrieve_k: candidates kept from the retrieval stage (default max(top_k, self.read_k));
                Answer.retrieved lists them in retrieval order.
        Returns:
            one Answer per method, in the order asked, each with up to `top_k` evidence passages.
        """
        question = " ".join(question.split())
        if not question:
            raise ValueError("the question is empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question is over {MAX_QUESTION_CHARS} characters")
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        unavailable = [m for m in methods if m not in self.askable]
        if unavailable:
            raise ValueError(f"method {unavailable[0]!r} is not available (no trained weights loaded)")
        doc_ids = self._doc_ids(docs, owner)
        if self.engine is None or {"faiss", "dense"} & set(methods):
            self.faiss.embedder  # noqa: B018 - load the encoder before any answer's clock starts
        depth = max(top_k, retrieve_k or self.read_k)
        return [self._answer(m, question, doc_ids, top_k, depth) for m in methods]

    def _doc_ids(self, docs: Sequence[str] | None, owner: str | None) -> list[str]:
        if docs is None:
            ids = [d.id for d in self.store.list(owner)]
            if not ids:
                raise ValueError("no documents yet: add one first")
            return ids
        for doc_id in docs:
            if not self.store.visible(doc_id, owner):
                raise StoreError(f"no document {doc_id!r}")
        return list(docs)

    def _answer(self, method: str, question: str, doc_ids: list[str], top_k: int, depth: int) -> Answer:
        start = time.perf_counter()
        candidates: list[tuple[float, str, int]] = []
        chunk_scores: dict[str, list[float]] = {}
        for doc_id in doc_ids:
            ids, scores, every = self._retrieve(method, question, doc_id, depth)
            candidates += [(float(s), doc_id, int(i)) for s, i in zip(scores, ids, strict=True)]
            chunk_scores[doc_id] = every.tolist()
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[:depth]
        if self.engine is None:
            evidence = [self._evidence(doc_id, idx, score) for score, doc_id, idx in candidates[:top_k]]
            answer = self._sentence_answer(question, evidence, method)
        else:
            answer = self._read(method, question, candidates, top_k)
        answer.latency_ms = (time.perf_counter() - start) * 1000
        answer.chunk_scores = chunk_scores
        answer.retrieved = [idx for _, _, idx in candidates]
        return answer

    def _retrieve(self, method: str, question: str, doc_id: str, depth: int):
        """(chunk ids [k], scores [k], scores of every chunk [n]) of one retrieval stage."""
        if method == "bsbr":  # log-probabilities of the block-retrieval distribution over the chunks
            every = self.engine.retrieval_scores(question, self._bsbr_cache(doc_id)).log_softmax(0).numpy()
            ids = np.argsort(-every, kind="stable")[:depth]
            return ids, every[ids], every
        retriever = {"faiss": self.fused, "dense": self.faiss, "bm25": self.bm25}[method]
        return retriever.top(question, doc_id, depth)

    def _read(
        self, method: str, question: str, candidates: list[tuple[float, str, int]], top_k: int
    ) -> Answer:
        """Read the top read_k candidates, rerank them, answer or abstain.

        The rank is the reader's has-answer score; for BSBR plus rerank_retrieval_weight x the
        candidate's block-retrieval log-probability. With settings.aggregate, passages whose answers
        agree pool their ranks (`answer_order`). The has-answer score of the chosen answer's best passage
        decides whether to abstain (the threshold was calibrated on one passage's score)."""
        read = candidates[: self.read_k]
        weight = self.engine.rerank_retrieval_weight if method == "bsbr" else 0.0
        readings: list[tuple[float, Evidence]] = []
        for doc_id in dict.fromkeys(d for _, d, _ in read):
            mine = [(s, i) for s, d, i in read if d == doc_id]
            evidence = [self._evidence(doc_id, i, s) for s, i in mine]
            cache = self._bsbr_cache(doc_id) if method == "bsbr" else None
            for ev, r in zip(
                evidence, self.engine.read(question, [e.text for e in evidence], cache), strict=True
            ):
                rank = r.score + weight * ev.score if weight else r.score  # ev.score: retrieval's
                ev.answer_start, ev.answer_end, ev.score = r.char_start, r.char_end, r.score
                ev.answer_page = self._page_of(doc_id, ev.char_start + r.char_start)
                readings.append((rank, ev))
        if not readings:
            return Answer(method, "", 0.0, True, 0.0, [], message="no passage matched the question")
        if self.settings.aggregate:
            order = answer_order([(rank, ev.text[ev.answer_start : ev.answer_end]) for rank, ev in readings])
        else:
            order = sorted(range(len(readings)), key=lambda i: -readings[i][0])
        evidence = [readings[i][1] for i in order]
        best = evidence[0]
        evidence += [self._evidence(d, i, s) for s, d, i in candidates[self.read_k :]]
        evidence = evidence[:top_k]
        best_score = best.score  # the reader's has-answer score of the answer's best passage
        text = best.text[best.answer_start : best.answer_end]
        if best_score < self.engine.abstain_threshold:
            return Answer(
                method,
                "",
                best_score,
                True,
                0.0,
                evidence,
                kind="span",
                message="the document does not seem to say (the best passage is shown below)",
            )
        return Answer(method, text, best_score, False, 0.0, evidence, kind="span")

    def _evidence(self, doc_id: str, idx: int, score: float) -> Evidence:
        title, chunks, _ = self._chunks(doc_id)
        chunk = chunks[idx]
        return Evidence(
            doc_id=doc_id,
            title=title,
            chunk_index=idx,
            text=chunk.text,
            page_start=chunk.page_start,
            page_end=chunk.page_end,
            char_start=chunk.char_start,
            char_end=chunk.char_end,
            score=score,
        )

    def _chunks(self, doc_id: str) -> tuple[str, list[Chunk], list[int]]:
        """(title, chunks, page starts) of a document, memoised: answers read them many times."""
        with self._memo_lock:
            if doc_id not in self._memo:
                page_starts = self.store.text(doc_id)[1]
                self._memo[doc_id] = (self.store.info(doc_id).title, self.store.chunks(doc_id), page_starts)
                while len(self._memo) > 32:
                    self._memo.pop(next(iter(self._memo)))
            return self._memo[doc_id]

    def _page_of(self, doc_id: str, offset: int) -> int:
        page_starts = self._chunks(doc_id)[2]
        return bisect.bisect_right(page_starts, offset)

    def _sentence_answer(self, question: str, evidence: list[Evidence], method: str) -> Answer:
        """Without a trained reader: the sentence of the best passage closest to the question."""
        if not evidence:
            return Answer(
                method, "", 0.0, True, 0.0, [], kind="sentence", message="no passage matched the question"
            )
        top = evidence[0]
        spans = sentence_spans(top.text)
        vectors = self.faiss.embedder.encode([top.text[a:b] for a, b in spans] + [question])
        sims = vectors[:-1] @ vectors[-1]
        best = int(np.argmax(sims))
        top.answer_start, top.answer_end = spans[best]
        top.answer_page = self._page_of(top.doc_id, top.char_start + top.answer_start)
        return Answer(
            method,
            top.text[slice(*spans[best])],
            float(sims[best]),
            False,
            0.0,
            evidence,
            kind="sentence",
            message="best-matching sentence of the top passage (no reader)",
        )


def answer_order(readings: Sequence[tuple[float, str]]) -> list[int]:
    """Order of read passages, given each one's (rank score, answer text): the answers found in several
    passages gain (the log-sum-exp of their passages' scores, answers compared after SQuAD
    normalisation), the best answer's passages first, best first, then the others' the same way.
    (FINDINGS.md: summing an answer's evidence over passages gave about +8 F1 in open QA.)"""
    from app.metrics import normalize_answer

    groups: dict[str, list[int]] = {}
    for i, (_, text) in enumerate(readings):
        groups.setdefault(normalize_answer(text) or f"\0{i}", []).append(i)  # empty answers never pool
    for members in groups.values():
        members.sort(key=lambda i: -readings[i][0])

    def total(members: list[int]) -> float:
        top = readings[members[0]][0]
        if math.isinf(top):
            return top
        return top + math.log(sum(math.exp(readings[i][0] - top) for i in members))

    ranked = sorted(groups.values(), key=lambda m: (-total(m), m[0]))
    return [i for members in ranked for i in members]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace excluded."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start() + len(match.group(0).rstrip())))
        start = match.end()
    if start < len(text.rstrip()):
        spans.append((start, len(text.rstrip())))
    return [(a, b) for a, b in spans if text[a:b].strip()] or [(0, len(text))]


def _tick(progress: StageProgress | None, stage: str, total: int) -> None:
    if progress is not None:
        progress(stage, total, total)


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
