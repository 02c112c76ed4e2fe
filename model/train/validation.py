"""Validation on the held-out documents: retrieval recall, the reader's spans, the rerank weight and the
abstention threshold the shipped delta gets."""

from __future__ import annotations

import math
import random

import torch

from model.qa import DocQAModel, best_spans
from model.train.data import Documents
from model.train.losses import question_scores, read_rows


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
