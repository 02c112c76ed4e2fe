"""What the library returns: answers with evidence, and ingest reports. Plain data, JSON-ready."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


def _finite(x: float) -> float | None:
    """A score for JSON: rounded; None for -inf (a passage with no words), so the output stays valid."""
    return round(float(x), 4) if math.isfinite(x) else None


@dataclass
class Evidence:
    """One passage shown to the user as support for an answer.

    Attributes:
        text: the passage (a chunk of the document).
        page_start, page_end: 1-based pages the passage spans.
        char_start, char_end: the passage is document_text[char_start:char_end].
        score: the method's score for this passage (higher is better; comparable within a method).
        answer_start, answer_end: where the answer sits inside `text`, when it does.
        answer_page: 1-based page of the answer's first character (the citation to show).
    """

    doc_id: str
    title: str
    chunk_index: int
    text: str
    page_start: int
    page_end: int
    char_start: int
    char_end: int
    score: float
    answer_start: int | None = None
    answer_end: int | None = None
    answer_page: int | None = None

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "page_start": self.page_start,
            "page_end": self.page_end,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "score": _finite(self.score),
            "answer_page": self.answer_page,
            "doc_id": self.doc_id,
            "title": self.title,
        }


@dataclass
class Answer:
    """One method's answer to a question.

    Attributes:
        method: "bsbr", "faiss" (FAISS fused with BM25), "bm25" or "dense" (FAISS alone).
        answer: the answer text ("" when abstained).
        kind: "span" (a reader extracted it) or "sentence" (best-matching sentence, no reader loaded).
        abstained: True when the document does not seem to contain the answer.
        message: a one-line explanation for the user (why it abstained, what kind of answer this is).
        chunk_scores: per document id, the method's score for every chunk (where it looked).
        retrieved: chunk indexes proposed by the retrieval stage, best first (before any reranking).
    """

    method: str
    answer: str
    score: float
    abstained: bool
    latency_ms: float
    evidence: list[Evidence]
    kind: str = "span"
    message: str = ""
    chunk_scores: dict[str, list[float]] = field(default_factory=dict, repr=False)
    retrieved: list[int] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "answer": self.answer,
            "score": _finite(self.score),
            "abstained": self.abstained,
            "latency_ms": round(self.latency_ms, 1),
            "kind": self.kind,
            "message": self.message,
            "evidence": [e.to_json() for e in self.evidence],
        }


@dataclass
class IngestReport:
    """What `DocQA.ingest` did with one file."""

    doc_id: str
    title: str
    filename: str
    pages: int
    tokens: int
    chunks: int
    seconds: float
    new: bool
    scanned_pages: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out
