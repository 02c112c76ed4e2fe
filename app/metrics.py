"""QA metrics: SQuAD answer normalisation, exact match, token F1, recall@k of gold passages."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Iterable[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def f1_score(prediction: str, references: Iterable[str]) -> float:
    """Best token-overlap F1 of the prediction against any reference."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for ref in references:
        gold = normalize_answer(ref).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def recall_at_k(ranking: Sequence, gold: set, k: int) -> float:
    """1.0 when any of the first k ranked items is gold."""
    return float(any(item in gold for item in ranking[:k]))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else 0.0


def rouge_l(prediction: str, references: Iterable[str]) -> float:
    """Best ROUGE-L F1 against any reference: FairytaleQA's and NarrativeQA's answer metric.

    Tokens as the `rouge-score` package makes them (lower case, runs of letters and digits, no
    stemming), so articles count, unlike in SQuAD's F1."""
    pred = _ROUGE_TOKEN.findall(prediction.lower())
    best = 0.0
    for ref in references:
        gold = _ROUGE_TOKEN.findall(ref.lower())
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        lcs = _lcs_length(pred, gold)
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one row of the dynamic programme at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
