"""From a question to an answer: retrieve candidates with a method's retriever, read them, aggregate.

The reader (app/engine.py) rescores the top `read_k` candidates with its has-answer score (for BSBR plus
a weight x the block-retrieval log-probability); answers found in several passages pool their scores
(`answer_order`); below the calibrated threshold the method abstains. Without trained weights the
answer is the sentence of the best passage closest to the question.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence

import numpy as np

from app import methods as registry
from app.library import Library
from app.types import Answer, Evidence

# Candidates the reader rescores (FINDINGS.md: reading the top 20 lifted R@1 0.69 -> 0.86); on a CPU
# fewer, to keep a question under half a second: 12 read as well as 16 on FairytaleQA val and SQuAD dev
# (BSBR ROUGE-L / F1 within 0.002, docs/BENCHMARKS.md) in 3/4 of the reader's time
# (settings.read_k / DOCQA_READ_K overrides both).
READ_K_GPU, READ_K_CPU = 20, 12
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")

Candidate = tuple[float, str, int]  # (retrieval score, doc id, chunk index)


class Answerer:
    """Answers with each method over a library.

    Args:
        library: documents and their chunks.
        retrievers: retriever name (app/methods.py Method.retriever) -> object with top(question, doc_id, k).
        engine: the trained reader (app.engine.QAEngine), or None (then the FAISS retriever's sentence
            encoder picks a sentence).
        read_k: candidates read per method and question.
        aggregate: pool the scores of the same answer found in several passages.
        library_index: ingest-many's library index (app.retrievers.FaissLibrary), searched once by
            `faiss` for a question to several documents it covers; None: each document's own index.
    """

    def __init__(
        self, library: Library, retrievers: Mapping, engine, read_k: int, aggregate: bool, library_index=None
    ) -> None:
        self.library = library
        self.retrievers = retrievers
        self.engine = engine
        self.read_k = read_k
        self.aggregate = aggregate
        self.library_index = library_index

    def answer(
        self,
        method: str,
        question: str,
        doc_ids: list[str],
        top_k: int,
        depth: int,
        readings: dict | None = None,
    ) -> Answer:
        """One method's answer over `doc_ids`: `depth` candidates retrieved, `top_k` passages shown.

        `readings` (a dict kept over the methods of one question) memoises the reader's verdicts on
        passages read without the BSBR cache: FAISS and its BM25 fusion mostly read the same chunks."""
        start = time.perf_counter()
        candidates, chunk_scores = self._retrieve(method, question, doc_ids, depth)
        if self.engine is None:
            evidence = [
                self.library.evidence(doc_id, idx, score) for score, doc_id, idx in candidates[:top_k]
            ]
            answer = self._sentence_answer(question, evidence, method)
        else:
            answer = self._read(method, question, candidates, top_k, readings)
        answer.latency_ms = (time.perf_counter() - start) * 1000
        answer.chunk_scores = chunk_scores
        answer.retrieved = [idx for _, _, idx in candidates]
        return answer

    def _retrieve(
        self, method: str, question: str, doc_ids: list[str], depth: int
    ) -> tuple[list[Candidate], dict[str, list[float]]]:
        """The best `depth` candidates over the documents, and the score of every chunk of each document
        (of the documents the candidates come from, where the library index answered)."""
        name = registry.BY_NAME[method].retriever
        library = self.library_index
        if name == "faiss" and len(doc_ids) > 1 and library is not None and library.covers(doc_ids):
            candidates = library.top(question, doc_ids, depth)
            faiss = self.retrievers["faiss"]
            hit = dict.fromkeys(d for _, d, _ in candidates)
            return candidates, {d: faiss.scores(question, d).tolist() for d in hit}
        candidates: list[Candidate] = []
        chunk_scores: dict[str, list[float]] = {}
        for doc_id in doc_ids:
            ids, scores, every = self.retrievers[name].top(question, doc_id, depth)
            candidates += [(float(s), doc_id, int(i)) for s, i in zip(scores, ids, strict=True)]
            chunk_scores[doc_id] = every.tolist()
        candidates.sort(key=lambda c: -c[0])
        return candidates[:depth], chunk_scores

    def _read(
        self, method: str, question: str, candidates: list[Candidate], top_k: int, memo: dict | None = None
    ) -> Answer:
        """Read the top read_k candidates, rerank them, answer or abstain.

        The rank is the reader's has-answer score; for BSBR plus rerank_retrieval_weight x the
        candidate's block-retrieval log-probability. With `aggregate`, passages whose answers agree pool
        their ranks (`answer_order`). The has-answer score of the chosen answer's best passage decides
        whether to abstain (the threshold was calibrated on one passage's score)."""
        read = candidates[: self.read_k]
        bsbr = method == "bsbr"
        weight = self.engine.rerank_retrieval_weight if bsbr else 0.0
        readings: list[tuple[float, Evidence]] = []
        documents = list(dict.fromkeys(d for _, d, _ in read))
        for doc_id in documents:
            mine = [(s, i) for s, d, i in read if d == doc_id]
            evidence = [self.library.evidence(doc_id, i, s) for s, i in mine]
            passages = self._passages(doc_id, [i for _, i in mine], evidence, whole=len(documents) == 1)
            if bsbr:
                verdicts = self.engine.read(question, passages, self.retrievers["bsbr"].cache(doc_id))
            else:
                verdicts = self._read_plain(question, doc_id, [i for _, i in mine], passages, memo)
            for ev, r in zip(evidence, verdicts, strict=True):
                rank = r.score + weight * ev.score if weight else r.score  # ev.score: retrieval's
                ev.answer_start, ev.answer_end, ev.score = r.char_start, r.char_end, r.score
                ev.answer_page = self.library.page_of(doc_id, ev.char_start + r.char_start)
                readings.append((rank, ev))
        if not readings:
            return Answer(method, "", 0.0, True, 0.0, [], message="no passage matched the question")
        if self.aggregate:
            order = answer_order([(rank, ev.text[ev.answer_start : ev.answer_end]) for rank, ev in readings])
        else:
            order = sorted(range(len(readings)), key=lambda i: -readings[i][0])
        evidence = [readings[i][1] for i in order]
        best = evidence[0]
        evidence += [self.library.evidence(d, i, s) for s, d, i in candidates[self.read_k :]]
        evidence = evidence[:top_k]
        best_score = best.score  # the reader's has-answer score of the answer's best passage
        if best_score < self.engine.abstain_threshold:
            message = "the document does not seem to say (the best passage is shown below)"
            return Answer(method, "", best_score, True, 0.0, evidence, kind="span", message=message)
        text = best.text[best.answer_start : best.answer_end]
        return Answer(method, text, best_score, False, 0.0, evidence, kind="span")

    def _passages(self, doc_id: str, indexes: list[int], evidence: list[Evidence], whole: bool) -> list:
        """Chunks `indexes` (`evidence`: their passages) as the reader takes them: their tokens from the
        engine's memo of whole documents, where a question that reads one document has its document
        tokenized once, for every later question. A question that reads several (a library question,
        whose documents may be many) gets the texts, which the reader tokenizes as it reads them,
        unless their document is in the memo already."""
        texts = (lambda: self.library.texts(doc_id)) if whole else None
        tokens = self.engine.document_passages(doc_id, texts)
        if tokens is None:
            return [e.text for e in evidence]
        return [tokens[i] for i in indexes]

    def _read_plain(
        self, question: str, doc_id: str, indexes: list[int], passages: list, memo: dict | None
    ) -> list:
        """The reader's verdicts on chunks of one document read without a cache (`passages`: their
        tokens or texts), each chunk read once over the methods of one question that share `memo` ((doc
        id, chunk) -> verdict; None: none)."""
        memo = {} if memo is None else memo
        todo = [k for k, i in enumerate(indexes) if (doc_id, i) not in memo]
        fresh = self.engine.read(question, [passages[k] for k in todo], None)
        for k, verdict in zip(todo, fresh, strict=True):
            memo[(doc_id, indexes[k])] = verdict
        return [memo[(doc_id, i)] for i in indexes]

    def _sentence_answer(self, question: str, evidence: list[Evidence], method: str) -> Answer:
        """Without a trained reader: the sentence of the best passage closest to the question."""
        if not evidence:
            return Answer(
                method, "", 0.0, True, 0.0, [], kind="sentence", message="no passage matched the question"
            )
        top = evidence[0]
        spans = sentence_spans(top.text)
        vectors = self.retrievers["faiss"].embedder.encode([top.text[a:b] for a, b in spans] + [question])
        sims = vectors[:-1] @ vectors[-1]
        best = int(np.argmax(sims))
        top.answer_start, top.answer_end = spans[best]
        top.answer_page = self.library.page_of(top.doc_id, top.char_start + top.answer_start)
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
