"""Train the BSBR QA model on SQuAD v1.1 train as long documents (one H200: a few minutes).

    python -m model.data --out .carry/train.safetensors          # CPU, once: chunk + tokenise
    python -m model.train --data .carry/train.safetensors --out runs/qa --steps 1500
    torchrun --nproc_per_node=8 -m model.train --data .carry/train.safetensors --docs-per-step 8 ...

Each step reads one long training document (24 concatenated articles, ~750 chunks) with gradients,
then a batch of its questions: a retrieval loss (cross-entropy of the question chunk's block-retrieval
scores over all the document's chunks, gold = the chunk holding the answer) and a span loss on reader
rows for the gold chunk and one in-document negative (the best-scoring wrong chunk, or a random one),
whose target is [CLS] ("not here"). With --reader-steps N, N cheaper steps of the reader alone come first
(gold chunk and one in-document negative per question, no document pass, no cache): run 4 found the
reader under-trained by the joint steps alone (F1 75.3 -> 78.8 on dev gold chunks). --init DIR starts
from a trained delta instead (more joint steps for an earlier run, in a later call). --output-level adds
the retrieval level on the last layer's output (model/qa.py), also to an --init delta without it.
--reader-lora-rank R gives the reader rows LoRA adapters of their own (model/qa.py): the reader phase then
leaves the document and question passes as MiniLM made them, and the span loss reaches them only through
the document cache the reader rows read. Only the delta trains: LoRA adapters, meta projections, gates,
span head, retrieval temperatures. Seeded; logs JSON lines; checkpoints (safetensors, no pickle) every
--save-every steps and resumes from --out when a checkpoint is there. At the end it validates on the
held-out articles, calibrates the abstention threshold and writes the delta to --out/model.

Several GPUs (issue 6): `torchrun --nproc_per_node=N -m model.train ... --docs-per-step K` trains with
DistributedDataParallel (NCCL on GPUs, gloo on CPU). A step then reads K documents (the global batch),
K / N on each rank: a DistributedSampler over the training documents, reshuffled per epoch, picks them,
and each document's questions and negatives are drawn from a generator seeded by (seed, step, document),
so the step's work, and DDP's averaged gradient, are the same whatever N is (tests/model/test_ddp.py).
Rank 0 alone logs, checkpoints, validates and saves. --docs-per-step 1 on one process keeps the original
sampling stream (one shared generator), so earlier runs reproduce.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load, load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from model.qa import DocQAModel, QAConfig, best_spans, question_rows, reader_rows

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


def step_loss(
    model: DocQAModel,
    docs: Documents,
    g: int,
    batch: list[int],
    rng: random.Random,
    device,
    n_read: int | None = None,
):
    """Loss of one training document and a batch of its questions. Returns (loss, parts dict).

    Every question of `batch` trains retrieval; the first `n_read` of them (default all) also train the
    reader, on their gold chunk and one negative (question passes are cheap, reader rows are not).
    """
    ids, mask = docs.chunks(g, device)
    first = docs.ranges[g][0]
    C = ids.shape[1]
    cache = model.encoder(ids.view(1, -1), mask.view(1, -1), return_cache=True, chunk_size=C).cache
    q_tokens = [docs.question_tokens(q) for q in batch]
    scores = question_scores(model, q_tokens, cache, device)  # (B, N)
    gold = docs.q_chunk[batch].to(device) - first
    retrieval_loss = F.cross_entropy(scores.float(), gold)
    n_read = len(batch) if n_read is None else min(n_read, len(batch))
    gold = gold[:n_read]
    wrong = scores[:n_read].detach().float().scatter(1, gold[:, None], -math.inf)
    hard = wrong.argmax(1).tolist()
    negatives = [
        h if rng.random() < 0.5 else rng.choice([c for c in range(ids.shape[0]) if c != gl])
        for h, gl in zip(hard, gold.tolist(), strict=True)
    ]
    span_loss = reader_loss(
        model, docs, batch[:n_read], [first + c for c in negatives], cache, device, q_tokens[:n_read]
    )
    loss = span_loss + retrieval_loss
    return loss, {"span": span_loss.item(), "retrieval": retrieval_loss.item()}


# The question pass runs in groups of similar length: one batch padded to its longest question is mostly
# padding (training questions: 14 word-pieces on average; 4,096 of them padded to 40, 64% padding).
QUESTION_GROUPS = 4


def question_scores(
    model: DocQAModel, q_tokens: list[list[int]], cache, device, groups: int = QUESTION_GROUPS
):
    """Block-retrieval scores (B, N) of each question against `cache`, the question pass run on `groups`
    groups of questions of similar length, each padded to its own longest. Given the cache, a question's
    scores do not depend on the other questions of its batch, so these are one padded batch's scores."""
    order = sorted(range(len(q_tokens)), key=lambda i: len(q_tokens[i]))
    cuts = [len(order) * g // groups for g in range(groups + 1)]
    parts, index = [], []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if a == b:
            continue
        q_ids, q_mask = question_rows([q_tokens[i] for i in order[a:b]], CLS_ID, SEP_ID, device)
        parts.append(model.retrieval_scores(q_ids, q_mask, cache))
        index += order[a:b]
    return torch.cat(parts)[torch.argsort(torch.tensor(index, device=device))]


def read_rows(model: DocQAModel, q_tokens: list[list[int]], passages: list[list[int]], cache, device):
    """Span logits of "[CLS] question [SEP] passage [SEP]" rows (question/passage word-pieces paired),
    reading against `cache` (None: no document cache). Returns start, end (B, Lr) and each row's passage
    offset."""
    r_ids, r_mask, r_types, offsets = reader_rows(q_tokens, passages, CLS_ID, SEP_ID, device)
    start, end = model.read(r_ids, r_mask, r_types, cache)
    return start, end, offsets


def reader_loss(
    model: DocQAModel,
    docs: Documents,
    batch: list[int],
    negatives: list[int],
    cache,
    device,
    q_tokens: list[list[int]] | None = None,
):
    """Span loss of reader rows for each question's gold chunk (target: the answer span, or [CLS] when
    the answer is not inside it) and for its negative chunk (global index; target [CLS], "not here"),
    reading against `cache` (None: no document cache)."""
    if q_tokens is None:
        q_tokens = [docs.question_tokens(q) for q in batch]
    passages = [docs.passage_tokens(int(docs.q_chunk[q])) for q in batch]
    passages += [docs.passage_tokens(c) for c in negatives]
    start, end, offsets = read_rows(model, q_tokens + q_tokens, passages, cache, device)
    B = len(batch)
    off = torch.tensor(offsets[:B], device=device)
    s_pos, e_pos = docs.q_start[batch].to(device), docs.q_end[batch].to(device)
    has_span = s_pos >= 0
    none = torch.zeros(B, dtype=torch.long, device=device)
    t_start = torch.cat([torch.where(has_span, off + s_pos, 0), none])
    t_end = torch.cat([torch.where(has_span, off + e_pos, 0), none])
    return (F.cross_entropy(start, t_start) + F.cross_entropy(end, t_end)) / 2


NEAR = 8  # a reader-phase negative is, half of the time, within NEAR chunks of the gold one


class ReaderPlan:
    """Reader-phase batches (--reader-steps): questions and negatives of reader-only step s.

    Step s draws a global batch of --reader-questions questions of the training documents from
    Random(f"{seed}/reader/{s}"), each with one negative chunk of its document: half of the time within
    NEAR chunks of the gold one (mostly the same article, a hard "not here"), else anywhere in it. Rank r
    of N reads every N-th pair, so the averaged gradient is the same whatever N is.
    """

    def __init__(self, docs: Documents, args: argparse.Namespace, rank: int, world: int) -> None:
        self.docs, self.rank, self.world = docs, rank, world
        self.seed, self.size = args.seed, args.reader_questions
        train_docs = [g for g, v in enumerate(docs.is_val) if not v]
        self.pool = [q for g in train_docs for q in docs.questions_of[g]]
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


@torch.no_grad()
def rank_and_read(
    model: DocQAModel,
    docs: Documents,
    g: int,
    questions: list[int],
    device,
    read_k: int = 20,
    batch: int = 64,
) -> dict[str, torch.Tensor]:
    """Block retrieval + reader over the top `read_k` chunks of document g, for each question.

    Returns per question "ranking" (its top 50 chunks by block retrieval) and per candidate [q, read_k]
    "chunk", "retrieval" (block-retrieval log-probability), "reader" (has-answer score), "start", "end".
    """
    ids, mask = docs.chunks(g, device)
    first = docs.ranges[g][0]
    cache = model.document_cache(ids, mask)
    keys = ("ranking", "chunk", "retrieval", "reader", "start", "end")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for i in range(0, len(questions), batch):
        qs = questions[i : i + batch]
        q_tokens = [docs.question_tokens(q) for q in qs]
        scores = question_scores(model, q_tokens, cache, device).float().log_softmax(1)
        top = scores.topk(min(read_k, scores.shape[1]), dim=1)  # (b, k)
        out["ranking"].append(scores.argsort(1, descending=True)[:, :50].cpu() + first)
        pairs = [(j, c) for j in range(len(qs)) for c in top.indices[j].tolist()]
        passages = [docs.passage_tokens(first + c) for _, c in pairs]
        start, end, offsets = read_rows(model, [q_tokens[j] for j, _ in pairs], passages, cache, device)
        score, s, e = best_spans(
            start, end, offsets, [len(p) for p in passages], model.config.max_answer_tokens
        )
        shape = (len(qs), -1)
        out["chunk"].append(top.indices.cpu() + first)
        out["retrieval"].append(top.values.cpu())
        out["reader"].append(score.view(shape).float().cpu())
        out["start"].append(s.view(shape).cpu())
        out["end"].append(e.view(shape).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def gold_exact(
    model: DocQAModel, docs: Documents, questions: list[int], device, batch: int = 128
) -> list[float]:
    """The reader alone on each question's gold chunk (no document cache): 1.0 where its best span is
    exactly the answer's tokens. Questions whose answer is not inside one chunk are left out."""
    questions = [q for q in questions if docs.q_start[q] >= 0]
    hits = []
    for i in range(0, len(questions), batch):
        qs = questions[i : i + batch]
        passages = [docs.passage_tokens(int(docs.q_chunk[q])) for q in qs]
        q_tokens = [docs.question_tokens(q) for q in qs]
        start, end, offsets = read_rows(model, q_tokens, passages, None, device)
        _, s, e = best_spans(start, end, offsets, [len(p) for p in passages], model.config.max_answer_tokens)
        hits += ((s.cpu() == docs.q_start[qs]) & (e.cpu() == docs.q_end[qs])).float().tolist()
    return hits


RERANK_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)  # of the retrieval log-probability, tried by validate()


def pick(read: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """Each question's answer: the candidate of best reader score + weight x retrieval log-probability."""
    best = (read["reader"] + weight * read["retrieval"]).argmax(1)
    rows = torch.arange(len(best))
    return {k: read[k][rows, best] for k in ("chunk", "reader", "start", "end")}


def held_out_questions(docs: Documents, limit: int, seed: int = 0) -> dict[int, list[int]]:
    """About `limit` questions of the held-out documents, spread over them in proportion to their
    questions: {document: its sampled questions}, in document order."""
    rng = random.Random(seed)
    val_docs = [g for g, v in enumerate(docs.is_val) if v]
    total = sum(len(docs.questions_of[g]) for g in val_docs)
    return {
        g: rng.sample(qs, min(len(qs), max(1, limit * len(qs) // total)))
        for g, qs in ((g, docs.questions_of[g]) for g in val_docs)
    }


def validate(model: DocQAModel, docs: Documents, device, limit: int = 2000, seed: int = 0) -> dict:
    """On held-out docs: retrieval recall; the reader's exact span match on the gold chunks; the rerank
    weight (of RERANK_WEIGHTS) of best reranked recall@1; with it, span exact match, the abstention
    threshold (2nd percentile of the has-answer scores of exactly right answers) and the abstention
    rates that threshold gives."""
    model.eval()
    stats: dict[str, list[float]] = {}
    reads, unanswerable_reads, golds, gold_hits = [], [], [], []
    for g, qs in held_out_questions(docs, limit, seed).items():
        read = rank_and_read(model, docs, g, qs, device)
        gold = docs.q_chunk[qs]
        for k in (1, 5, 20, 50):
            hit = (read["ranking"][:, :k] == gold[:, None]).any(1).float()
            stats.setdefault(f"retrieval_recall@{k}", []).extend(hit.tolist())
        reads.append(read)
        gold_hits += gold_exact(model, docs, qs, device)
        golds.append((gold, docs.q_start[qs], docs.q_end[qs]))
        other = next(h for h in range(len(docs.ranges)) if not docs.is_val[h])  # unrelated articles
        unanswerable_reads.append(rank_and_read(model, docs, other, qs, device))
    result = {k: round(sum(v) / len(v), 4) for k, v in stats.items()}

    def reranked(weight: float) -> float:
        hits = [pick(r, weight)["chunk"] == gold for r, (gold, _, _) in zip(reads, golds, strict=True)]
        return torch.cat(hits).float().mean().item()

    by_weight = {w: reranked(w) for w in RERANK_WEIGHTS}
    weight = max(RERANK_WEIGHTS, key=lambda w: (by_weight[w], -w))  # ties: the smaller weight
    result["reranked_recall@1_by_weight"] = {str(w): round(r, 4) for w, r in by_weight.items()}
    result["rerank_retrieval_weight"] = weight
    result["reranked_recall@1"] = round(by_weight[weight], 4)
    answerable, correct_scores, exact_all = [], [], []
    for read, (gold, q_start, q_end) in zip(reads, golds, strict=True):
        best = pick(read, weight)
        exact = (best["chunk"] == gold) & (best["start"] == q_start) & (best["end"] == q_end)
        exact_all += exact.float().tolist()
        answerable += best["reader"].tolist()
        correct_scores += best["reader"][exact].tolist()
    unanswerable = [s for r in unanswerable_reads for s in pick(r, weight)["reader"].tolist()]
    result["span_exact"] = round(sum(exact_all) / len(exact_all), 4)
    result["gold_span_exact"] = round(sum(gold_hits) / max(1, len(gold_hits)), 4)
    threshold = float(torch.tensor(correct_scores).quantile(0.02)) if correct_scores else -math.inf
    result["abstain_threshold"] = round(threshold, 4) if math.isfinite(threshold) else None
    result["abstain_answerable"] = round(sum(s < threshold for s in answerable) / len(answerable), 4)
    result["abstain_unanswerable"] = round(sum(s < threshold for s in unanswerable) / len(unanswerable), 4)
    result["questions"] = len(answerable)
    model.train()
    return result


def save_checkpoint(
    model: DocQAModel, opt: torch.optim.Optimizer, step: int, folder: Path, reader_step: int = 0
) -> None:
    """Trainable weights + Adam moments and step counts as safetensors (no pickle); the joint steps and
    the reader-phase steps done in the metadata. Step counts are per parameter: the retrieval weights
    are not updated in the reader phase."""
    tensors = {f"param.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"opt.{key}.{names[id(p)]}"] = value.reshape(value.shape or (1,))
    tmp = folder / "checkpoint.safetensors.tmp"
    metadata = {"step": str(step), "reader_step": str(reader_step)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(folder / "checkpoint.safetensors")


def load_checkpoint(model: DocQAModel, opt: torch.optim.Optimizer, folder: Path) -> tuple[int, int]:
    """Restore a checkpoint of `folder` if there is one: (joint steps, reader-phase steps) done."""
    path = folder / "checkpoint.safetensors"
    if not path.exists():
        return 0, 0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    step, reader_step = int(meta["step"]), int(meta.get("reader_step", 0))
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if f"param.{name}" in tensors:
                p.copy_(tensors[f"param.{name}"])
    for name, p in params.items():
        if f"opt.exp_avg.{name}" in tensors:
            # checkpoints written before step counts were saved: the steps done in all
            done = tensors.get(f"opt.step.{name}", torch.tensor([float(step + reader_step)]))
            opt.state[p] = {
                "step": done.reshape(()).float(),
                # scalars were saved with shape (1,); CUDA's multi-tensor Adam needs the parameter's shape
                "exp_avg": tensors[f"opt.exp_avg.{name}"].reshape(p.shape).to(p.device),
                "exp_avg_sq": tensors[f"opt.exp_avg_sq.{name}"].reshape(p.shape).to(p.device),
            }
    return step, reader_step


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (steps - step) / max(1, steps - warmup))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the BSBR QA model (delta over all-MiniLM-L6-v2).")
    p.add_argument("--data", default=".carry/train.safetensors")
    p.add_argument("--out", default="runs/qa")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--questions-per-step", type=int, default=96, help="reader questions per document")
    p.add_argument(
        "--retrieval-questions",
        type=int,
        default=None,
        help="questions per document for the retrieval loss (default: --questions-per-step); the first "
        "--questions-per-step of them also train the reader",
    )
    p.add_argument(
        "--reader-steps",
        type=int,
        default=0,
        help="first train the reader alone for this many steps (no document pass: cheap, many updates)",
    )
    p.add_argument(
        "--reader-questions", type=int, default=64, help="questions per reader-phase step, over all ranks"
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from this trained delta folder (config.json + delta.safetensors) instead of a fresh "
        "delta, with a fresh optimizer and schedule: more joint steps after an earlier run (then "
        "--reader-steps 0); its config sets the LoRA rank and alpha",
    )
    p.add_argument(
        "--output-level",
        action="store_true",
        help="rank chunks with a retrieval level on the last layer's output too (added to an --init "
        "delta that lacks it)",
    )
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--lora-rank", type=int, default=None, help="LoRA rank (default 16; with --init, its rank)"
    )
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default 2 x rank)")
    p.add_argument(
        "--reader-lora-rank",
        type=int,
        default=None,
        help="give the reader rows adapters of their own, of this rank (default 0: shared with the document "
        "and question passes; with --init, its rank)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--val-questions", type=int, default=2000)
    p.add_argument("--max-minutes", type=float, default=None, help="stop early (then validate and save)")
    p.add_argument(
        "--fit-minutes",
        type=float,
        default=None,
        help="set --steps from the speed of steps 10-30 so that training ends after about this long "
        "(the learning-rate schedule then decays to zero on time); never more than --steps",
    )
    p.add_argument("--docs-per-step", type=int, default=1, help="documents per step, over all ranks")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def setup_distributed() -> tuple[int, int]:
    """(rank, world size): from torchrun's environment when WORLD_SIZE > 1, else (0, 1).

    Joins the process group (NCCL with one GPU per rank when CUDA is there, else gloo) with NCCL's
    NVLink multicast off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
            os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
            local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(local)
            # device_id binds the rank to its GPU (NCCL otherwise warns "Guessing device ID")
            dist.init_process_group("nccl", device_id=local)
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


class StepLoss(nn.Module):
    """`step_loss` as a forward pass, so that DistributedDataParallel sees the call and syncs gradients."""

    def __init__(self, model: DocQAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, docs: Documents, g: int, batch: list[int], rng: random.Random, device, n_read=None):
        return step_loss(self.model, docs, g, batch, rng, device, n_read)


class StepPlan:
    """Which documents and questions each step reads on this rank.

    With several documents per step or several ranks, the documents of step s are positions
    [s*K, (s+1)*K) of the epoch's shuffled order (a DistributedSampler with set_epoch, so rank r reads
    every N-th of them), and each document's questions come from Random(f"{seed}/{step}/{doc}").
    """

    def __init__(self, docs: Documents, args: argparse.Namespace, rank: int, world: int) -> None:
        self.docs, self.rank, self.world = docs, rank, world
        self.seed, self.k = args.seed, args.docs_per_step
        self.questions = max(args.questions_per_step, args.retrieval_questions or 0)
        self.train_docs = [g for g, v in enumerate(docs.is_val) if not v]
        self.legacy = self.k == 1 and world == 1
        self.rng = random.Random(args.seed)  # the original single-document stream
        if self.k % world or not 0 < self.k <= len(self.train_docs):
            raise ValueError(
                f"--docs-per-step {self.k} must be a multiple of the {world} ranks and at most "
                f"{len(self.train_docs)} (the training documents)"
            )
        self.steps_per_epoch = len(self.train_docs) // self.k
        self.sampler = DistributedSampler(
            self.train_docs, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    docs = Documents(load_data(args.data))
    return train(initial_model(args), docs, args)


def initial_model(args: argparse.Namespace) -> DocQAModel:
    """The packaged MiniLM with a fresh delta or, with --init, with a trained delta to go on from (its
    config.json gives the LoRA rank and alpha). A checkpoint in --out still takes precedence (resume)."""
    if args.init:
        model = DocQAModel.from_pretrained(args.init, merge=False).train()
        for flag, asked, saved in (
            ("--lora-rank", args.lora_rank, model.config.lora_rank),
            ("--lora-alpha", args.lora_alpha, model.config.lora_alpha),
            ("--reader-lora-rank", args.reader_lora_rank, model.config.reader_lora_rank),
        ):
            if asked is not None and asked != saved:
                raise ValueError(f"{flag} {asked} differs from the {saved} of --init {args.init}")
        if args.output_level and not model.config.output_level:
            model.add_output_level()
        return model
    rank = 16 if args.lora_rank is None else args.lora_rank
    alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * rank
    config = QAConfig(
        lora_rank=rank,
        lora_alpha=alpha,
        output_level=args.output_level,
        reader_lora_rank=args.reader_lora_rank or 0,
    )
    return DocQAModel.from_minilm(config)


def train(model: DocQAModel, docs: Documents, args: argparse.Namespace) -> dict:
    """Train `model` on `docs` (one process, or one rank under torchrun); rank 0 returns the metrics."""
    rank, world = setup_distributed()
    device = torch.device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    model = model.to(device)
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    step, reader_step = load_checkpoint(model, opt, out)
    log = (out / "log.jsonl").open("a") if rank == 0 else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    start_time = time.time()
    model.train()
    if step == 0 and reader_step < args.reader_steps:
        reader_step = _reader_phase(
            model, opt, docs, args, reader_step, (rank, world), autocast, device, log, start_time
        )
    plan = StepPlan(docs, args, rank, world)
    step_fn = StepLoss(model)
    if world > 1:
        step_fn = DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None
        )
    fit_start, first_step = 0.0, step
    args.cap_steps = getattr(args, "cap_steps", args.steps)  # --steps: what --fit-minutes never exceeds
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        totals = _accumulate(
            step_fn, plan(step), docs, autocast, device, args.docs_per_step, args.questions_per_step
        )
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == 1:
            if world > 1:
                dist.all_reduce(totals)
            loss, span, retrieval = (round(v, 4) for v in totals.tolist())
            _log(log, {"step": step, "loss": loss, "span": span, "retrieval": retrieval}, opt, start_time)
        if step % args.save_every == 0 and rank == 0:
            save_checkpoint(model, opt, step, out, reader_step)
        done = step - first_step
        if done == FIT_FIRST:
            fit_start = time.time() - start_time
        if args.fit_minutes and (done == FIT_LAST or (done > FIT_LAST and done % FIT_EVERY == 0)):
            fitted = _fit_steps(args, step, done, time.time() - start_time, fit_start, world, device)
            if rank == 0 and fitted != args.steps:
                print(f"--fit-minutes {args.fit_minutes}: training for {fitted} steps", flush=True)
            args.steps = fitted
        if _out_of_time(args, start_time, world, device):
            if rank == 0:
                print(f"stopping at step {step}: --max-minutes reached", flush=True)
            break
    metrics = (
        _finish(model, opt, docs, args, step, reader_step, start_time, autocast, device) if rank == 0 else {}
    )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def _log(log, row: dict, opt, start_time: float) -> None:
    """Rank 0 (the one with a log file): a JSON line with the learning rate and seconds so far, printed
    and appended to log.jsonl."""
    if log is None:
        return
    row |= {"lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - start_time, 1)}
    print(json.dumps(row), flush=True)
    log.write(json.dumps(row) + "\n")


def _reader_phase(
    model: DocQAModel,
    opt,
    docs: Documents,
    args,
    reader_step: int,
    ranks: tuple[int, int],
    autocast,
    device,
    log,
    start_time: float,
) -> int:
    """--reader-steps of the reader alone (rows without a document cache, so no document pass), before
    the joint steps: many cheap updates of the span reader. Several ranks average their gradients with
    an all-reduce (the reader leaves the retrieval weights without gradients, which DDP would reject).
    Returns the reader steps done (fewer if --max-minutes ran out)."""
    rank, world = ranks
    plan = ReaderPlan(docs, args, rank, world)
    params = model.trainable_parameters()
    out = Path(args.out)
    while reader_step < args.reader_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(reader_step, args.reader_steps, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        questions, negatives = plan(reader_step)
        with autocast:
            loss = reader_loss(model, docs, questions, negatives, None, device)
        loss.backward()
        if world > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        reader_step += 1
        if reader_step % args.log_every == 0 or reader_step == 1:
            span = loss.detach().float().reshape(1)
            if world > 1:  # every rank logs at the same steps, so all join this all-reduce
                dist.all_reduce(span)
                span /= world
            _log(log, {"reader_step": reader_step, "span": round(span.item(), 4)}, opt, start_time)
        done = reader_step == args.reader_steps or _out_of_time(args, start_time, world, device)
        if rank == 0 and (reader_step % args.save_every == 0 or done):
            save_checkpoint(model, opt, 0, out, reader_step)
        if done:
            break
    return reader_step


def _accumulate(
    step_fn, plan, docs: Documents, autocast, device, docs_per_step: int, n_read: int
) -> torch.Tensor:
    """Backward of this rank's documents, each loss / K: with DDP's average over ranks the gradient is
    the mean over the step's K documents. Returns this rank's share of (loss, span, retrieval) means."""
    totals = torch.zeros(3, device=device)
    for j, (g, batch, rng) in enumerate(plan):
        last = j == len(plan) - 1
        sync = (
            step_fn.no_sync() if isinstance(step_fn, DistributedDataParallel) and not last else nullcontext()
        )
        with sync:
            with autocast:
                loss, parts = step_fn(docs, g, batch, rng, device, n_read)
            (loss / len(plan)).backward()
        totals += torch.tensor([loss.item(), parts["span"], parts["retrieval"]], device=device)
    return totals / docs_per_step


# --fit-minutes: speed measured from step FIT_FIRST on (earlier steps pay warm-up costs), first used at
# FIT_LAST and re-measured every FIT_EVERY steps (the first steps of a run are slower than the rest).
FIT_FIRST, FIT_LAST, FIT_EVERY = 10, 30, 50


def _fit_steps(args, step: int, done: int, elapsed: float, fit_start: float, world: int, device) -> int:
    """Rank 0's estimate of how many steps fit in --fit-minutes (this run's), the same on every rank."""
    per_step = (elapsed - fit_start) / (done - FIT_FIRST)
    steps = step + int((args.fit_minutes * 60 - elapsed) / per_step)
    fitted = torch.tensor([min(args.cap_steps, max(step, steps))], device=device)
    if world > 1:
        dist.broadcast(fitted, 0)
    return int(fitted.item())


def _out_of_time(args: argparse.Namespace, start_time: float, world: int, device) -> bool:
    """--max-minutes, decided by rank 0 so that all ranks stop at the same step."""
    if not args.max_minutes:
        return False
    stop = torch.tensor([float(time.time() - start_time > args.max_minutes * 60)], device=device)
    if world > 1:
        dist.broadcast(stop, 0)
    return bool(stop.item())


def _finish(model, opt, docs, args, step: int, reader_step: int, start_time: float, autocast, device) -> dict:
    """Rank 0: last checkpoint, validation + abstention threshold, the delta and metrics.json."""
    out = Path(args.out)
    save_checkpoint(model, opt, step, out, reader_step)
    metrics: dict = {}
    if args.val_questions > 0:
        with autocast:
            metrics = validate(model, docs, device, args.val_questions, args.seed)
        if metrics["abstain_threshold"] is not None:
            model.config.abstain_threshold = metrics["abstain_threshold"]
        model.config.rerank_retrieval_weight = metrics["rerank_retrieval_weight"]
    metrics |= {"steps": step, "reader_steps": reader_step}
    metrics["train_seconds"] = round(time.time() - start_time, 1)
    meta = {"steps": step, "reader_steps": reader_step, "seed": args.seed}
    if args.init:
        meta["init"] = args.init
        metrics["init"] = args.init
    model.save_delta(out / "model", metadata=meta)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({"validation": metrics}), flush=True)
    return metrics


if __name__ == "__main__":
    main()
