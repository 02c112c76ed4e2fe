"""Training data and sampling: the tensors of model.data, an index over them, and which documents,
questions and negatives each step reads (the same global batch whatever the number of ranks)."""

from __future__ import annotations

import lzma
import random
from pathlib import Path

import torch
from safetensors.torch import load, load_file
from torch.utils.data import DistributedSampler

from model.data import RETRIEVAL_ONLY

CLS_ID, SEP_ID = 101, 102


def load_data(path: str) -> dict[str, torch.Tensor]:
    """The tensors written by model.data (optionally .xz-compressed)."""
    if path.endswith(".xz"):
        return load(lzma.decompress(Path(path).read_bytes()))
    return load_file(path)


class Documents:
    """Index over the training tensors: chunks, questions and splits per document."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.chunk_ids = data["chunk_ids"].long()
        self.ranges = data["doc_ranges"].tolist()
        self.is_val = data["doc_is_val"].tolist()
        self.q_ids = data["question_ids"].long()
        self.q_doc, self.q_chunk = data["q_doc"], data["q_chunk"]
        self.q_start, self.q_end = data["q_start"], data["q_end"]
        self.readable = (self.q_start != RETRIEVAL_ONLY).tolist()  # False: trains retrieval alone
        self.questions_of = [
            torch.nonzero(self.q_doc == g).flatten().tolist() for g in range(len(self.ranges))
        ]

    def chunks(self, g: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.ranges[g]
        ids = self.chunk_ids[a:b].to(device)
        return ids, (ids != 0).long()

    def question_tokens(self, q: int) -> list[int]:
        row = self.q_ids[q]
        return row[row != 0].tolist()

    def passage_tokens(self, chunk: int) -> list[int]:
        row = self.chunk_ids[chunk]
        row = row[row != 0].tolist()
        return row[1:-1]  # drop [CLS] and [SEP]


NEAR = 8  # a reader-phase negative is, half of the time, within NEAR chunks of the gold one


class ReaderPlan:
    """Reader-phase batches (--reader-steps): questions and negatives of reader-only step s.

    Step s draws a global batch of `questions` (--reader-questions) questions of the training documents
    (those with an answer to read, not model.data's retrieval-only ones) from
    Random(f"{seed}/reader/{s}"), each with one negative chunk of its document: half of the time within
    NEAR chunks of the gold one (mostly the same article, a hard "not here"), else anywhere in it. Rank r
    of N reads every N-th pair, so the averaged gradient is the same whatever N is.
    """

    def __init__(self, docs: Documents, *, seed: int, questions: int, rank: int = 0, world: int = 1) -> None:
        self.docs, self.rank, self.world = docs, rank, world
        self.seed, self.size = seed, questions
        train_docs = [g for g, v in enumerate(docs.is_val) if not v]
        self.pool = [q for g in train_docs for q in docs.questions_of[g] if docs.readable[q]]
        if self.size % world or not 0 < self.size <= len(self.pool):
            raise ValueError(
                f"--reader-questions {self.size} must be a multiple of the {world} ranks and at most "
                f"{len(self.pool)} (the training questions)"
            )
        short = [g for g in train_docs if docs.ranges[g][1] - docs.ranges[g][0] < 2]
        if short:
            raise ValueError(f"training documents {short[:5]} have fewer than 2 chunks: no negatives")

    def __call__(self, step: int) -> tuple[list[int], list[int]]:
        """(questions, their negative chunks as global indexes) for this rank."""
        rng = random.Random(f"{self.seed}/reader/{step}")
        questions = rng.sample(self.pool, self.size)
        negatives = []
        for q in questions:
            a, b = self.docs.ranges[int(self.docs.q_doc[q])]
            gold = int(self.docs.q_chunk[q])
            lo, hi = (max(a, gold - NEAR), min(b, gold + NEAR + 1)) if rng.random() < 0.5 else (a, b)
            n = rng.randrange(lo, hi - 1)  # one of the hi - lo - 1 chunks other than the gold one
            negatives.append(n + (n >= gold))
        return questions[self.rank :: self.world], negatives[self.rank :: self.world]


class StepPlan:
    """Which documents and questions each step reads on this rank.

    With several documents per step or several ranks, the documents of step s are positions
    [s*K, (s+1)*K) of the epoch's shuffled order (a DistributedSampler with set_epoch, so rank r reads
    every N-th of them), and each document's `questions` (at most) come from
    Random(f"{seed}/{step}/{doc}"). One document per step on one process keeps the original stream: one
    Random(seed) picks the documents, the questions and the negatives.
    """

    def __init__(
        self,
        docs: Documents,
        *,
        seed: int,
        docs_per_step: int,
        questions: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.docs, self.rank, self.world = docs, rank, world
        self.seed, self.k, self.questions = seed, docs_per_step, questions
        self.train_docs = [g for g, v in enumerate(docs.is_val) if not v]
        self.legacy = self.k == 1 and world == 1
        self.rng = random.Random(seed)  # the original single-document stream
        if self.k % world or not 0 < self.k <= len(self.train_docs):
            raise ValueError(
                f"--docs-per-step {self.k} must be a multiple of the {world} ranks and at most "
                f"{len(self.train_docs)} (the training documents)"
            )
        unread = [g for g in self.train_docs if not any(docs.readable[q] for q in docs.questions_of[g])]
        if world > 1 and unread:  # DDP wants a gradient for every parameter: the span head needs rows
            raise ValueError(
                f"training documents {unread[:5]} have only retrieval-only questions: several ranks need "
                "reader questions in every document"
            )
        self.steps_per_epoch = len(self.train_docs) // self.k
        self.sampler = DistributedSampler(
            self.train_docs, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )

    def __call__(self, step: int) -> list[tuple[int, list[int], random.Random]]:
        """[(document, its questions, generator for the step's negatives)] for this rank."""
        if self.legacy:
            g = self.train_docs[self.rng.randrange(len(self.train_docs))]
            return [(g, self._sample(g, self.rng), self.rng)]
        epoch, position = divmod(step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        per_rank = self.k // self.world
        mine = list(self.sampler)[position * per_rank : (position + 1) * per_rank]
        plan = []
        for i in mine:
            g = self.train_docs[i]
            rng = random.Random(f"{self.seed}/{step}/{g}")
            plan.append((g, self._sample(g, rng), rng))
        return plan

    def _sample(self, g: int, rng: random.Random) -> list[int]:
        questions = self.docs.questions_of[g]
        return rng.sample(questions, min(self.questions, len(questions)))
