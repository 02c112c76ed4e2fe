"""The answering methods, in one table that the CLI, the web page, the evaluation and the tests read.

Each method is a retrieval stage (which chunks to read) followed by the same trained span reader:

- `bsbr`: the BSBR model's block retrieval over the whole document (needs the trained weights).
- `faiss`: the FAISS baseline, MiniLM sentence embeddings in a FAISS index, alone.
- `hybrid`: FAISS's ranking fused with BM25's by reciprocal rank.
- `bm25`: keyword search alone.

`dense` (FAISS alone) is accepted for one release as an alias of `faiss`, with a deprecation line.
Until that release `faiss` meant the fused method, which is now `hybrid`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One answering method.

    Attributes:
        name: what the CLI, the API and the eval JSON call it.
        label: its name on the web page and in tables.
        description: one line saying how it finds passages.
        retriever: the DocQA retriever that ranks the chunks ("bsbr", "faiss", "hybrid", "bm25").
        normalisation: how the page's "where it looked" plot scales its chunk scores ("softmax" for a
            distribution's logits, "min-max" for scores without such a reading).
        stage: the ingest stage whose seconds the eval charges it ("bsbr", "embed" or "bm25").
        needs_model: only offered when the trained BSBR weights are loaded.
        shown: ticked by default on the web page.
    """

    name: str
    label: str
    description: str
    retriever: str
    normalisation: str
    stage: str
    needs_model: bool = False
    shown: bool = True


METHODS: tuple[Method, ...] = (
    Method("bsbr", "BSBR", "block retrieval over the whole document", "bsbr", "softmax", "bsbr", True),
    Method("faiss", "FAISS", "sentence-embedding search (the FAISS baseline)", "faiss", "min-max", "embed"),
    Method("hybrid", "FAISS + BM25", "sentence-embedding search fused with keyword search", "hybrid",
           "min-max", "embed"),
    Method("bm25", "BM25", "keyword search", "bm25", "min-max", "bm25", shown=False),
)  # fmt: skip
BY_NAME = {m.name: m for m in METHODS}
ALIASES = {"dense": "faiss"}  # deprecated names -> current ones (remove after one release)
NAMES = tuple(BY_NAME)


def canonical(name: str) -> str:
    """The current name of a method; a deprecated alias is mapped, with a FutureWarning (shown to users).

    Raises:
        ValueError: for a name that is neither a method nor an alias.
    """
    if name in BY_NAME:
        return name
    if name in ALIASES:
        new = ALIASES[name]
        warnings.warn(f"method {name!r} is deprecated and will be removed: use {new!r}", FutureWarning, 3)
        return new
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(NAMES)}")


def get(name: str) -> Method:
    """The method called `name` (or its deprecated alias)."""
    return BY_NAME[canonical(name)]


def label(name: str) -> str:
    """A method's label, the name itself in capitals for anything unknown (e.g. eval's `reader`)."""
    method = BY_NAME.get(ALIASES.get(name, name))
    return method.label if method else name.upper()


def ordered(names: Iterable[str]) -> list[str]:
    """Names in the table's order (BSBR, FAISS, hybrid, BM25), anything else after in the order given."""
    names = list(names)
    rank = {m: i for i, m in enumerate(NAMES)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), names.index(m)))


def available(with_model: bool) -> tuple[str, ...]:
    """Names of the methods that can answer: all, or all but BSBR when no trained weights are loaded."""
    return tuple(m.name for m in METHODS if with_model or not m.needs_model)
