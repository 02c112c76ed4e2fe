"""Training losses: block retrieval over a document's chunks and the span reader on gold and negative
chunks."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from model.qa import DocQAModel, passage_mask, question_rows, reader_rows
from model.train.data import CLS_ID, SEP_ID, Documents


def step_loss(
    model: DocQAModel,
    docs: Documents,
    g: int,
    batch: list[int],
    rng: random.Random,
    device,
    n_read: int | None = None,
    n_negatives: int = 1,
    shared_norm: float = 0.0,
):
    """Loss of one training document and a batch of its questions. Returns (loss, parts dict).

    Every question of `batch` trains retrieval; the first `n_read` of them (default all) that have an
    answer to read (not model.data's retrieval-only questions) also train the reader, on their gold chunk
    and `n_negatives` negatives (question passes are cheap, reader rows are not): the first is the
    hardest wrong chunk by retrieval half of the time, else a random one; the others are the next
    hardest. Without any readable question, the span loss is 0. `shared_norm`: see reader_loss.
    """
    ids, mask = docs.chunks(g, device)
    first = docs.ranges[g][0]
    C = ids.shape[1]
    cache = model.encoder(ids.view(1, -1), mask.view(1, -1), return_cache=True, chunk_size=C).cache
    q_tokens = [docs.question_tokens(q) for q in batch]
    scores = question_scores(model, q_tokens, cache, device)  # (B, N)
    gold = docs.q_chunk[batch].to(device) - first
    retrieval_loss = F.cross_entropy(scores.float(), gold)
    read = [i for i, q in enumerate(batch) if docs.readable[q]][: len(batch) if n_read is None else n_read]
    if not read:
        return retrieval_loss, {"span": 0.0, "retrieval": retrieval_loss.item()}
    rows = torch.tensor(read, device=device)
    gold = gold[rows]
    wrong = scores[rows].detach().float().scatter(1, gold[:, None], -math.inf)
    k = min(n_negatives, ids.shape[0] - 1)
    hard = wrong.topk(k, dim=1).indices.tolist()  # (R, k) the hardest wrong chunks first
    negatives = [
        h[0] if rng.random() < 0.5 else rng.choice([c for c in range(ids.shape[0]) if c != gl])
        for h, gl in zip(hard, gold.tolist(), strict=True)
    ]
    for j in range(1, k):  # block j: every question's j-th hardest wrong chunk
        negatives += [h[j] for h in hard]
    span_loss = reader_loss(
        model,
        docs,
        [batch[i] for i in read],
        [first + c for c in negatives],
        cache,
        device,
        [q_tokens[i] for i in read],
        shared_norm,
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
    shared_norm: float = 0.0,
):
    """Span loss of reader rows for each question's gold chunk (target: the answer span, or [CLS] when
    the answer is not inside it) and for its negative chunks (global indexes, K blocks of len(batch):
    block j holds every question's j-th negative; target [CLS], "not here"), reading against `cache`
    (None: no document cache).

    With shared_norm > 0, plus shared_norm x a loss across each question's passages: one softmax over
    the start logits minus [CLS]'s of its gold and negative passages (passage tokens only), and the same
    for the end, the gold span the target (questions whose answer is in the gold chunk). The app ranks
    passages by span minus [CLS] scores (model.qa.best_spans), which the per-passage loss leaves
    uncalibrated across passages; this loss makes the right passage's span beat the others' spans."""
    if q_tokens is None:
        q_tokens = [docs.question_tokens(q) for q in batch]
    B = len(batch)
    if not negatives or len(negatives) % B:
        raise ValueError(f"{len(negatives)} negatives for {B} questions: need K blocks of {B}")
    blocks = 1 + len(negatives) // B
    passages = [docs.passage_tokens(int(docs.q_chunk[q])) for q in batch]
    passages += [docs.passage_tokens(c) for c in negatives]
    start, end, offsets = read_rows(model, q_tokens * blocks, passages, cache, device)
    off = torch.tensor(offsets[:B], device=device)
    s_pos, e_pos = docs.q_start[batch].to(device), docs.q_end[batch].to(device)
    has_span = s_pos >= 0
    none = torch.zeros(B * (blocks - 1), dtype=torch.long, device=device)
    t_start = torch.cat([torch.where(has_span, off + s_pos, 0), none])
    t_end = torch.cat([torch.where(has_span, off + e_pos, 0), none])
    loss = (F.cross_entropy(start, t_start) + F.cross_entropy(end, t_end)) / 2
    if shared_norm > 0 and has_span.any():
        lengths = [len(p) for p in passages]
        inside = passage_mask(offsets, lengths, start.shape[1], device)  # (blocks * B, Lr)
        shared = []
        for logits, target in ((start, off + s_pos), (end, off + e_pos)):
            relative = (logits.float() - logits[:, :1].float()).masked_fill(~inside, -math.inf)
            across = relative.view(blocks, B, -1).transpose(0, 1).flatten(1)  # (B, blocks * Lr)
            shared.append(F.cross_entropy(across[has_span], target[has_span]))  # gold block: first Lr
        loss = loss + shared_norm * (shared[0] + shared[1]) / 2
    return loss
