"""Pure data shaping and HTML for the web page: no gradio here, so all of it is unit-testable.

- "Where it looked": each method's per-chunk scores -> one normalised score per page.
- Answer cards: the answer, its score or abstention, evidence with the answer highlighted, page citations.

Every piece of document text goes through `html.escape` before it reaches the page.
"""

from __future__ import annotations

import bisect
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from app import methods
from app.types import Answer, Evidence

SNIPPET_CHARS = 240


class PageSpan(Protocol):
    page_start: int
    page_end: int


def normalise(scores: Sequence[float], how: str) -> np.ndarray:
    """Scale one method's chunk scores to [0, 1], 1 being the method's best chunk.

    Args:
        how: "softmax" (logits -> probabilities, shown relative to the most probable chunk; scores that
            already form a distribution are kept as they are) or "min-max".
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    if how == "softmax":
        is_distribution = s.min() >= 0 and abs(s.sum() - 1.0) < 1e-3
        p = s if is_distribution else np.exp(s - s.max())
        return p / p.max() if p.max() > 0 else np.zeros_like(p)
    if how != "min-max":
        raise ValueError(f"unknown normalisation {how!r}")
    low, high = s.min(), s.max()
    if high - low < 1e-12:
        return np.full_like(s, 1.0 if high > 0 else 0.0)
    return (s - low) / (high - low)


def page_max(values: Sequence[float], spans: Sequence[PageSpan], n_pages: int) -> np.ndarray:
    """Per page (index 0 = page 1) the best value of the chunks touching it; 0 for pages no chunk covers."""
    if len(values) != len(spans):
        raise ValueError(f"{len(values)} scores for {len(spans)} chunks")
    pages = np.zeros(n_pages, dtype=np.float64)
    for value, span in zip(values, spans, strict=True):
        lo, hi = max(span.page_start, 1) - 1, min(span.page_end, n_pages)
        pages[lo:hi] = np.maximum(pages[lo:hi], value)
    return pages


def _normalisation(method: str) -> str:
    """BSBR's scores are block-retrieval logits (a softmax makes them the model's distribution over
    chunks); fused ranks, FAISS cosine similarities and BM25 scores have no such reading: min-max."""
    known = methods.BY_NAME.get(method)
    return known.normalisation if known else "min-max"


def method_label(method: str) -> str:
    return f"{methods.label(method)} ({_normalisation(method)})"


def where_it_looked(
    scores_by_method: Mapping[str, Sequence[float]], spans: Sequence[PageSpan], n_pages: int
) -> pd.DataFrame:
    """Long table for a line plot: one row per (method, page) with the normalised best chunk score.

    Args:
        scores_by_method: method -> score of every chunk of one document (Answer.chunk_scores[doc_id]).
        spans: that document's chunks, in order (anything with page_start/page_end).
    Returns:
        DataFrame with columns page (1-based), score (in [0, 1]), method (name + normalisation).
    """
    frames = []
    for method in methods.ordered(scores_by_method):
        scaled = normalise(scores_by_method[method], _normalisation(method))
        per_page = page_max(scaled, spans, n_pages)
        frames.append(
            pd.DataFrame(
                {"page": np.arange(1, n_pages + 1), "score": per_page, "method": method_label(method)}
            )
        )
    if not frames:
        return pd.DataFrame(
            {"page": pd.Series(dtype=int), "score": pd.Series(dtype=float), "method": pd.Series(dtype=str)}
        )
    return pd.concat(frames, ignore_index=True)


def page_citation(first: int, last: int) -> str:
    return f"page {first}" if first == last else f"pages {first}\u2013{last}"


def answer_page(evidence: Evidence, page_starts: Sequence[int] | None) -> int | None:
    """The page the highlighted answer sits on (None when the passage has no answer span)."""
    if evidence.answer_start is None or not page_starts:
        return None
    offset = evidence.char_start + evidence.answer_start
    page = bisect.bisect_right(page_starts, offset)
    return min(max(page, evidence.page_start), evidence.page_end)


def highlight_html(evidence: Evidence) -> str:
    """The passage as safe HTML, the answer span wrapped in <mark>."""
    text, start, end = evidence.text, evidence.answer_start, evidence.answer_end
    if start is None or end is None or not 0 <= start < end <= len(text):
        return html.escape(text)
    return f"{html.escape(text[:start])}<mark>{html.escape(text[start:end])}</mark>{html.escape(text[end:])}"


def _evidence_html(evidence: Evidence, page_starts: Sequence[int] | None, open_: bool) -> str:
    page = answer_page(evidence, page_starts)
    cite = page_citation(page, page) if page else page_citation(evidence.page_start, evidence.page_end)
    meta = f'<span class="cite">{cite}</span> · {html.escape(evidence.title)} · score {evidence.score:.3f}'
    if page and evidence.page_start != evidence.page_end:
        meta += f" · passage on {page_citation(evidence.page_start, evidence.page_end)}"
    body = f'<div class="passage">{highlight_html(evidence)}</div>'
    return f'<details class="evidence"{" open" if open_ else ""}><summary>{meta}</summary>{body}</details>'


def answer_card_html(answer: Answer, page_starts: Mapping[str, Sequence[int]]) -> str:
    """One method's card: name, answer (or why it abstains), score, latency, evidence passages."""
    known = methods.BY_NAME.get(answer.method)
    name = html.escape(methods.label(answer.method))
    blurb = html.escape(known.description if known else "")
    if answer.abstained:
        main = '<div class="answer abstain">The document does not seem to contain the answer.</div>'
    else:
        main = f'<div class="answer">{html.escape(answer.answer)}</div>'
    note = f'<div class="note">{html.escape(answer.message)}</div>' if answer.message else ""
    stats = f"score {answer.score:.3f} · {answer.latency_ms:.0f} ms"
    passages = "".join(
        _evidence_html(e, page_starts.get(e.doc_id), open_=i == 0) for i, e in enumerate(answer.evidence)
    )
    return (
        f'<div class="card method-{html.escape(answer.method)}"><div class="card-head">'
        f'<span class="method">{name}</span><span class="blurb">{blurb}</span>'
        f'<span class="stats">{stats}</span></div>{main}{note}{passages}</div>'
    )


def answers_html(answers: Sequence[Answer], page_starts: Mapping[str, Sequence[int]]) -> str:
    """Every method's card side by side (a responsive grid: stacked on phones)."""
    cards = "".join(answer_card_html(a, page_starts) for a in answers)
    return f'<div class="qa-cards">{cards}</div>'


def chat_summary(answers: Sequence[Answer], page_starts: Mapping[str, Sequence[int]]) -> str:
    """A short Markdown reply for the chat: one line per method with its page citation and latency."""
    lines = []
    for a in answers:
        if a.abstained or not a.evidence:
            lines.append(f"**{methods.label(a.method)}** · _no answer found_ · {a.latency_ms:.0f} ms")
            continue
        top = a.evidence[0]
        page = answer_page(top, page_starts.get(top.doc_id))
        cite = page_citation(page, page) if page else page_citation(top.page_start, top.page_end)
        text = a.answer if len(a.answer) <= SNIPPET_CHARS else a.answer[:SNIPPET_CHARS].rstrip() + "…"
        lines.append(
            f"**{methods.label(a.method)}** · {_escape_markdown(text)} — _{cite}, "
            f"{html.escape(top.title)}_ · {a.latency_ms:.0f} ms"
        )
    return "\n\n".join(lines)


def _escape_markdown(text: str) -> str:
    escaped = html.escape(" ".join(text.split()))
    return "".join("\\" + c if c in "\\`*_[]#|~" else c for c in escaped)


def document_rows(docs: Iterable) -> list[list]:
    """Rows for the document table: title, pages, tokens, chunks, notes (warnings such as scanned pages)."""
    return [[d.title, d.n_pages, d.n_tokens, d.n_chunks, "; ".join(d.warnings)] for d in docs]
