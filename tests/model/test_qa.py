import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.data import RETRIEVAL_ONLY
from model.encoder import BSBRConfig, BSBREncoder
from model.qa import DocQAModel, LoRALinear, QAConfig, best_spans, merge_lora, question_rows, reader_rows
from model.train.checkpoint import load_checkpoint
from model.train.config import TrainConfig
from model.train.data import CLS_ID, SEP_ID, Documents, ReaderPlan, StepPlan, load_data
from model.train.losses import question_scores, read_rows, reader_loss, step_loss
from model.train.train import initial_model, train
from model.train.validation import RERANK_WEIGHTS, gold_exact, pick, validate

TINY = dict(
    vocab_size=200,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
    chunk_size=16,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def tiny_model(rank=4, seed=0):
    torch.manual_seed(seed)
    config = QAConfig(lora_rank=rank, question_tokens=8, passage_tokens=14, max_answer_tokens=5)
    return DocQAModel(config, BSBREncoder(BSBRConfig(**TINY))).eval()


def test_lora_starts_as_the_base_layer_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6)
    x = torch.randn(3, 8)
    expected = base(x)
    lora = LoRALinear(base, rank=2, alpha=4.0)
    torch.testing.assert_close(lora(x), expected)
    with torch.no_grad():
        lora.lora_b.normal_()
    adapted = lora(x)
    assert not torch.allclose(adapted, expected)
    holder = torch.nn.Sequential(lora)
    merge_lora(holder)
    assert isinstance(holder[0], torch.nn.Linear)
    torch.testing.assert_close(holder(x), adapted, atol=1e-5, rtol=1e-5)


def test_only_the_delta_trains():
    model = tiny_model()
    names = {n for n, p in model.named_parameters() if p in set(model.trainable_parameters())}
    assert any("lora_" in n for n in names) and any("meta_query" in n for n in names)
    assert "span_head.weight" in names and "retrieval_log_scale" in names
    assert not any(n.endswith("query.base.weight") or "embeddings" in n for n in names)


def test_reader_rows_place_passage_tokens_at_their_offsets():
    ids, mask, types, offsets = reader_rows([[5, 6], [7]], [[10, 11, 12], [13]], cls_id=1, sep_id=2)
    assert ids[0].tolist() == [1, 5, 6, 2, 10, 11, 12, 2]
    assert ids[1].tolist()[:5] == [1, 7, 2, 13, 2] and mask[1].tolist() == [1] * 5 + [0] * 3
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert offsets == [4, 3] and ids[0, offsets[0] + 2] == 12
    q_ids, q_mask = question_rows([[5, 6], [7]], 1, 2)
    assert q_ids.tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]] and q_mask.sum().item() == 7
    # word-pieces as arrays (the app's tokenized chunks) and an empty passage give the same rows
    as_arrays = reader_rows(
        [np.array([5, 6]), [7]], [np.array([10, 11, 12]), np.array([], dtype=np.int64)], 1, 2
    )
    assert as_arrays[0].tolist() == [[1, 5, 6, 2, 10, 11, 12, 2], [1, 7, 2, 2, 0, 0, 0, 0]]
    assert as_arrays[2][1].tolist() == [0, 0, 0, 1, 0, 0, 0, 0] and as_arrays[3] == [4, 3]


def test_best_spans_picks_the_best_legal_span_and_scores_against_cls():
    start = torch.full((1, 8), -5.0)
    end = torch.full((1, 8), -5.0)
    start[0, 0], end[0, 0] = 1.0, 1.0  # [CLS]
    start[0, 1], end[0, 1] = 9.0, 9.0  # a question token: never part of an answer
    start[0, 5], end[0, 6] = 4.0, 3.0  # passage tokens 1..2
    end[0, 4] = 8.0  # an end before the start: illegal
    score, s, e = best_spans(start, end, offsets=[4], lengths=[3], max_answer_tokens=5)
    assert (s.item(), e.item()) == (1, 2)
    assert score.item() == pytest.approx(4.0 + 3.0 - 2.0)
    _, s, e = best_spans(start, end, offsets=[4], lengths=[3], max_answer_tokens=1)
    assert s.item() == e.item()  # width limit


def test_retrieval_scores_cover_document_chunks_only():
    model = tiny_model()
    ids = torch.randint(5, 200, (6, 16))
    mask = torch.ones_like(ids)
    mask[5] = 0  # an all-padding chunk is never retrieved
    ids[5] = 0
    cache = model.document_cache(ids, mask)
    q_ids, q_mask = question_rows([[7, 8, 9], [10]], 1, 2)
    scores = model.retrieval_scores(q_ids, q_mask, cache)
    assert scores.shape == (2, 6)
    assert torch.isinf(scores[:, 5]).all() and torch.isfinite(scores[:, :5]).all()


def test_output_level_adds_scaled_cosines_of_mean_last_layer_outputs():
    model = tiny_model()
    ids = torch.randint(5, 200, (6, 16))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    mask[5], ids[5] = 0, 0
    ids[2, 9:] = 0
    q_ids, q_mask = question_rows([[7, 8, 9], [10]], 1, 2)
    cache, hidden = model.encoder.encode_document(ids, mask, return_hidden=True)
    blocks = model.retrieval_scores(q_ids, q_mask, cache)  # the six BSBR levels alone
    model.add_output_level()
    assert model.config.output_level and "output_log_scale" in model.delta_state_dict()
    with torch.no_grad():
        model.output_log_scale.fill_(math.log(3.0))
    scores = model.retrieval_scores(q_ids, q_mask, cache)
    with torch.no_grad():
        q_out = model.encoder(q_ids, q_mask, cache=cache, chunk_size=q_ids.shape[1]).last_hidden_state

    def means(x, m):
        return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)

    cosine = F.cosine_similarity(means(q_out, q_mask)[:, None], means(hidden, mask)[None], dim=-1)  # (2, 6)
    assert scores.dtype == torch.float32 and torch.isinf(scores[:, 5]).all()
    torch.testing.assert_close(scores[:, :5], blocks[:, :5] + 3.0 * cosine[:, :5])
    scores[:, :5].sum().backward()
    assert model.output_log_scale.grad is not None and model.output_log_scale.grad.abs() > 0
    cache.outputs = None
    with pytest.raises(ValueError, match="cache with outputs"):
        model.retrieval_scores(q_ids, q_mask, cache)


def test_output_level_with_windows_scores_each_chunk_by_its_best_window():
    torch.manual_seed(0)
    config = QAConfig(lora_rank=4, output_level=True, question_tokens=8, passage_tokens=14)
    model = DocQAModel(config, BSBREncoder(BSBRConfig(**TINY, output_window=5))).eval()
    ids = torch.randint(5, 200, (6, 16))
    mask = torch.ones_like(ids)
    mask[2, 9:], ids[2, 9:] = 0, 0  # chunk 2: windows 3 and 4 (of 5, 5, 5 and 1 tokens) are empty
    mask[5], ids[5] = 0, 0
    q_ids, q_mask = question_rows([[7, 8, 9], [10]], 1, 2)
    cache, hidden = model.encoder.encode_document(ids, mask, return_hidden=True)
    assert cache.outputs.shape == (1, 6, 4, 32)
    with torch.no_grad():
        model.output_log_scale.fill_(math.log(3.0))
        scores = model.retrieval_scores(q_ids, q_mask, cache)
        q_out = model.encoder(q_ids, q_mask, cache=cache, chunk_size=q_ids.shape[1]).last_hidden_state
        model.output_log_scale.fill_(-60.0)  # the six BSBR levels alone
        blocks = model.retrieval_scores(q_ids, q_mask, cache)
    q_mean = (q_out * q_mask[..., None]).sum(1) / q_mask.sum(1, keepdim=True)
    expected = torch.full((2, 6), -math.inf)
    for c in range(5):
        for a in range(0, 16, 5):
            m = mask[c, a : a + 5].float()
            if m.sum() == 0:
                continue
            window = (hidden[c, a : a + 5] * m[:, None]).sum(0) / m.sum()
            cos = F.cosine_similarity(q_mean, window[None], dim=-1)
            expected[:, c] = torch.maximum(expected[:, c], cos)
    torch.testing.assert_close(scores[:, :5], blocks[:, :5] + 3.0 * expected[:, :5], atol=1e-5, rtol=1e-5)
    assert torch.isinf(scores[:, 5]).all()


def test_question_pass_in_length_groups_gives_one_batch_scores_and_gradients():
    model = tiny_model(rank=4)
    params = model.trainable_parameters()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    docs = Documents(synthetic_documents())
    ids, mask = docs.chunks(0, "cpu")
    g = torch.Generator().manual_seed(0)
    q_tokens = [torch.randint(20, 120, (n,), generator=g).tolist() for n in (1, 6, 2, 6, 4, 3, 5)]

    def scores_and_grads(fn):
        model.zero_grad(set_to_none=True)
        cache = model.encoder(ids.view(1, -1), mask.view(1, -1), return_cache=True, chunk_size=16).cache
        scores = fn(cache)
        (scores.softmax(1)[:, 0] * torch.arange(1.0, 8.0)).sum().backward()  # rows weighted differently
        return scores.detach(), {
            n: p.grad.clone() for n, p in zip(names, params, strict=True) if p.grad is not None
        }

    expected, expected_grads = scores_and_grads(
        lambda cache: model.retrieval_scores(*question_rows(q_tokens, CLS_ID, SEP_ID), cache)
    )
    for groups in (1, 3, 7, 10):
        got, grads = scores_and_grads(
            lambda cache, k=groups: question_scores(model, q_tokens, cache, "cpu", k)
        )
        torch.testing.assert_close(got, expected)
        assert grads.keys() == expected_grads.keys() and any("meta_key" in n for n in grads)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], msg=name)


def test_delta_round_trip(tmp_path, monkeypatch):
    model = tiny_model()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.config.abstain_threshold = 0.25
    model.save_delta(tmp_path)
    monkeypatch.setattr(
        BSBREncoder, "from_minilm", classmethod(lambda cls, **kw: BSBREncoder(BSBRConfig(**TINY)))
    )
    torch.manual_seed(0)  # same base weights as tiny_model(seed=0)
    loaded = DocQAModel.from_pretrained(tmp_path)
    assert loaded.config.abstain_threshold == 0.25
    ids, mask, types, _ = reader_rows([[5, 6]], [[10, 11, 12]], 1, 2)
    expected = model.read(ids, mask, types, None)[0]
    got = loaded.read(ids, mask, types, None)[0]
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], atol=2e-2, rtol=2e-2)  # fp16 delta


def test_config_round_trip_keeps_never_abstain():
    config = QAConfig()
    assert math.isinf(QAConfig.from_dict(config.to_dict()).abstain_threshold)
    with pytest.raises(ValueError):
        QAConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError):
        QAConfig(question_tokens=300)


def synthetic_documents(n_docs=2, chunks=6, questions=8, seed=0):
    """Each question asks for a token that appears only in its gold chunk (a learnable task)."""
    g = torch.Generator().manual_seed(seed)
    chunk_ids = torch.zeros(n_docs * chunks, 16, dtype=torch.int16)
    q = []
    for c in range(n_docs * chunks):
        body = torch.randint(20, 120, (10,), generator=g)
        body[3] = 150 + c  # the chunk's unique "answer" token
        chunk_ids[c, :12] = torch.cat([torch.tensor([1]), body, torch.tensor([2])])
    for d in range(n_docs):
        for i in range(questions):
            c = d * chunks + i % chunks
            q.append((d, c, 150 + c))
    return {
        "chunk_ids": chunk_ids,
        "doc_ranges": torch.tensor([[d * chunks, (d + 1) * chunks] for d in range(n_docs)]),
        "doc_is_val": torch.tensor([False] * n_docs),
        "question_ids": torch.tensor([[7, tok, 8] + [0] * 5 for _, _, tok in q], dtype=torch.int16),
        "q_doc": torch.tensor([d for d, _, _ in q]),
        "q_chunk": torch.tensor([c for _, c, _ in q]),
        "q_start": torch.tensor([3] * len(q)),
        "q_end": torch.tensor([3] * len(q)),
    }


def synthetic_file(path: Path, **kw) -> str:
    """synthetic_documents(**kw) saved where --data reads them, as model.data writes them."""
    save_file(synthetic_documents(**kw), str(path))
    return str(path)


@pytest.fixture
def data_file(tmp_path) -> str:
    return synthetic_file(tmp_path / "synthetic.safetensors")


def test_training_steps_reduce_the_loss():
    model = tiny_model(rank=4).train()
    docs = Documents(synthetic_documents())
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=5e-3)
    rng = random.Random(0)
    losses = []
    for step in range(40):
        g = step % 2
        loss, parts = step_loss(model, docs, g, docs.questions_of[g], rng, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert set(parts) == {"span", "retrieval"}
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_retrieval_trains_on_every_question_and_the_reader_on_the_first_n_read():
    model = tiny_model(rank=4).eval()
    docs = Documents(synthetic_documents())
    batch, cpu = docs.questions_of[0], torch.device("cpu")
    _, split = step_loss(model, docs, 0, batch, random.Random(1), cpu, n_read=3)
    _, all_read = step_loss(model, docs, 0, batch, random.Random(1), cpu)
    _, first_three = step_loss(model, docs, 0, batch[:3], random.Random(1), cpu)
    assert split["retrieval"] == pytest.approx(all_read["retrieval"], abs=1e-6)
    assert split["span"] == pytest.approx(first_three["span"], abs=1e-6)
    assert split["retrieval"] != pytest.approx(first_three["retrieval"], abs=1e-6)
    assert split["span"] != pytest.approx(all_read["span"], abs=1e-6)


def test_retrieval_only_questions_train_retrieval_and_never_the_reader():
    data = synthetic_documents()
    data["q_start"][4:8] = data["q_end"][4:8] = RETRIEVAL_ONLY  # half of document 0's questions
    data["q_start"][8:] = data["q_end"][8:] = RETRIEVAL_ONLY  # all of document 1's
    docs, plain = Documents(data), Documents(synthetic_documents())
    model, cpu, batch = tiny_model(rank=4).eval(), torch.device("cpu"), list(range(8))
    _, mixed = step_loss(model, docs, 0, batch, random.Random(1), cpu)
    _, readable = step_loss(model, docs, 0, batch[:4], random.Random(1), cpu)
    _, every = step_loss(model, plain, 0, batch, random.Random(1), cpu)
    assert mixed["retrieval"] == pytest.approx(every["retrieval"], abs=1e-6)  # all 8 train retrieval
    assert mixed["span"] == pytest.approx(readable["span"], abs=1e-6)  # only the 4 readable are read
    assert mixed["span"] != pytest.approx(every["span"], abs=1e-6)
    _, first_two = step_loss(model, docs, 0, [5, 0, 6, 1, 2], random.Random(1), cpu, n_read=2)
    _, read_two = step_loss(model, docs, 0, [0, 1], random.Random(1), cpu)
    assert first_two["span"] == pytest.approx(read_two["span"], abs=1e-6)  # n_read counts readable ones
    model.train()
    loss, parts = step_loss(model, docs, 1, list(range(8, 16)), random.Random(1), cpu)
    loss.backward()
    assert parts["span"] == 0.0 and parts["retrieval"] > 0
    assert model.span_head.weight.grad is None and model.retrieval_log_scale.grad is not None
    assert ReaderPlan(docs, seed=0, questions=4).pool == [0, 1, 2, 3]
    StepPlan(docs, seed=0, docs_per_step=2, questions=4)
    with pytest.raises(ValueError, match="retrieval-only"):
        StepPlan(docs, seed=0, docs_per_step=2, questions=4, rank=0, world=2)


def _shared_loss_by_hand(model, docs, batch, negatives):
    """The cross-passage loss of reader_loss, one question at a time with plain loops."""
    blocks = [[int(docs.q_chunk[q]) for q in batch]] + [
        negatives[j : j + len(batch)] for j in range(0, len(negatives), len(batch))
    ]
    terms = []
    for b, q in enumerate(batch):
        if docs.q_start[q] < 0:
            continue
        q_tok = docs.question_tokens(q)
        rows = [docs.passage_tokens(block[b]) for block in blocks]
        start, end, offsets = read_rows(model, [q_tok] * len(rows), rows, None, torch.device("cpu"))
        for logits, pos in ((start, int(docs.q_start[q])), (end, int(docs.q_end[q]))):
            flat = torch.cat(
                [logits[r, offsets[r] : offsets[r] + len(rows[r])] - logits[r, 0] for r in range(len(rows))]
            )
            terms.append(-torch.log_softmax(flat, 0)[pos] / 2)
    return torch.stack(terms).sum() / (len(terms) / 2)


def test_shared_norm_adds_a_softmax_across_each_questions_passages():
    model, docs = tiny_model(rank=4).eval(), Documents(synthetic_documents())
    cpu, batch = torch.device("cpu"), [0, 1, 2, 3]
    negatives = [5, 6, 7, 4] + [6, 7, 4, 5]  # two blocks: each question's 1st and 2nd negative chunk
    with torch.no_grad():
        alone = reader_loss(model, docs, batch, negatives, None, cpu)
        both = reader_loss(model, docs, batch, negatives, None, cpu, shared_norm=0.5)
        by_hand = _shared_loss_by_hand(model, docs, batch, negatives)
    torch.testing.assert_close(both - alone, 0.5 * by_hand, atol=1e-5, rtol=1e-5)
    # the per-passage part reads every block: a third block of negatives changes it
    with torch.no_grad():
        more = reader_loss(model, docs, batch, negatives + [7, 4, 5, 6], None, cpu)
    assert more != pytest.approx(alone.item(), abs=1e-6)
    with pytest.raises(ValueError, match="need K blocks of 4"):
        reader_loss(model, docs, batch, negatives[:5], None, cpu)


def test_more_reader_negatives_read_more_rows_of_the_hardest_wrong_chunks():
    model, docs, cpu = tiny_model(rank=4).eval(), Documents(synthetic_documents()), torch.device("cpu")
    batch = docs.questions_of[0]
    _, one = step_loss(model, docs, 0, batch, random.Random(1), cpu)
    _, one_again = step_loss(model, docs, 0, batch, random.Random(1), cpu, n_negatives=1)
    _, three = step_loss(model, docs, 0, batch, random.Random(1), cpu, n_negatives=3)
    assert one["span"] == pytest.approx(one_again["span"], abs=1e-6)  # the default is one negative
    assert three["span"] != pytest.approx(one["span"], abs=1e-6)
    assert three["retrieval"] == pytest.approx(one["retrieval"], abs=1e-6)
    model.train()
    loss, _ = step_loss(model, docs, 0, batch, random.Random(1), cpu, n_negatives=2, shared_norm=1.0)
    loss.backward()
    assert model.span_head.weight.grad is not None and model.span_head.weight.grad.abs().sum() > 0


def test_validate_picks_a_rerank_weight_and_calibrates_with_it():
    data = synthetic_documents(n_docs=3)
    data["doc_is_val"] = torch.tensor([True, False, False])
    docs = Documents(data)
    result = validate(tiny_model(rank=4), docs, torch.device("cpu"), limit=8)
    assert result["rerank_retrieval_weight"] in RERANK_WEIGHTS
    by_weight = result["reranked_recall@1_by_weight"]
    assert set(by_weight) == {str(w) for w in RERANK_WEIGHTS}
    assert result["reranked_recall@1"] == max(by_weight.values())
    assert result["questions"] == 8 and 0 <= result["abstain_unanswerable"] <= 1
    assert 0 <= result["gold_span_exact"] <= 1
    # pick(): the weight trades the reader's score against retrieval's log-probability
    read = {
        "chunk": torch.tensor([[5, 7]]),
        "reader": torch.tensor([[1.0, 2.0]]),
        "retrieval": torch.tensor([[-0.1, -3.0]]),
        "start": torch.tensor([[1, 2]]),
        "end": torch.tensor([[1, 2]]),
    }
    assert pick(read, 0.0)["chunk"].item() == 7 and pick(read, 1.0)["chunk"].item() == 5


def small_run(data: str, out, *flags: str) -> TrainConfig:
    """model.train options for a few CPU steps on `data` (synthetic_file), logging every step."""
    return TrainConfig.from_cli(
        ["--data", data, "--out", str(out), "--questions-per-step", "4", "--lr", "5e-3", "--warmup", "1"]
        + ["--val-questions", "0", "--log-every", "1", "--save-every", "1000", "--device", "cpu", *flags]
    )


def test_reader_phase_trains_the_reader_alone_then_resumes_with_the_joint_steps(
    tmp_path, data_file, one_process
):
    def args(steps: int):
        return small_run(
            data_file, tmp_path, "--steps", str(steps), "--reader-steps", "60", "--reader-questions", "8"
        )

    model = tiny_model(rank=4)
    retrieval = {n: p.detach().clone() for n, p in model.named_parameters() if "meta_" in n}
    assert retrieval
    metrics = train(model, Documents(load_data(data_file)), args(0))
    assert metrics["reader_steps"] == 60 and metrics["steps"] == 0
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    spans = [r["span"] for r in rows if "reader_step" in r]
    assert len(spans) == 60 and sum(spans[-5:]) < 0.5 * sum(spans[:5])
    docs = Documents(synthetic_documents())
    hits = gold_exact(model.eval(), docs, list(range(len(docs.q_ids))), torch.device("cpu"))
    assert len(hits) == 16 and sum(hits) >= 14  # the reader learnt to find the answer token
    for name, p in model.named_parameters():
        if name in retrieval:  # no document cache is read: block retrieval's weights stay as they were
            assert torch.equal(p.detach(), retrieval[name]), name
    # Resuming from the checkpoint: the reader phase is done, only the joint steps run.
    metrics = train(tiny_model(rank=4), Documents(load_data(data_file)), args(3))
    assert metrics["reader_steps"] == 60 and metrics["steps"] == 3
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").open()][len(rows) :]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("reader_step" not in r for r in rows)
    # Adam's step counts are per parameter: the reader's weights took 63 updates, block retrieval's 3,
    # and a resumed optimizer gets them back.
    saved = load_file(tmp_path / "checkpoint.safetensors")
    steps = {k.removeprefix("opt.step."): v.item() for k, v in saved.items() if k.startswith("opt.step.")}
    assert {v for k, v in steps.items() if "meta_" in k} == {3.0}
    assert {v for k, v in steps.items() if "lora_" in k} == {63.0}
    model = tiny_model(rank=4)
    opt = torch.optim.AdamW(model.trainable_parameters())
    assert load_checkpoint(model, opt, tmp_path) == (3, 60)
    restored = {n: opt.state[p]["step"].item() for n, p in model.named_parameters() if p in opt.state}
    assert restored == steps
    for p in opt.state:  # moments of scalars (the temperature) too come back in the parameter's shape
        assert opt.state[p]["exp_avg"].shape == opt.state[p]["exp_avg_sq"].shape == p.shape
    # A checkpoint from before step counts were saved: every parameter gets the steps done in all.
    old = {k: v for k, v in saved.items() if not k.startswith("opt.step.")}
    save_file(old, str(tmp_path / "checkpoint.safetensors"), metadata={"step": "3", "reader_step": "60"})
    opt = torch.optim.AdamW(model.trainable_parameters())
    assert load_checkpoint(model, opt, tmp_path) == (3, 60)
    assert {s["step"].item() for s in opt.state.values()} == {63.0}


def test_init_goes_on_from_a_trained_delta(tmp_path, data_file, monkeypatch, one_process):
    """--init: a later call starts from an earlier run's delta (its reader intact), not from MiniLM."""
    first = small_run(
        data_file, tmp_path / "a", "--steps", "0", "--reader-steps", "60", "--reader-questions", "8"
    )
    train(tiny_model(rank=4), Documents(load_data(data_file)), first)
    saved = load_file(tmp_path / "a" / "model" / "delta.safetensors")

    monkeypatch.setattr(
        BSBREncoder, "from_minilm", classmethod(lambda cls, **kw: BSBREncoder(BSBRConfig(**TINY)))
    )
    docs = Documents(load_data(data_file))
    questions = list(range(len(docs.q_ids)))
    torch.manual_seed(0)  # the base weights of tiny_model(seed=0)
    second = small_run(data_file, tmp_path / "b", "--init", str(tmp_path / "a" / "model"))
    model = initial_model(second)
    assert model.training and model.config.lora_rank == 4
    with pytest.raises(ValueError, match="--lora-rank 8 differs from the 4 of --init"):
        initial_model(dataclasses.replace(second, lora_rank=8))
    torch.manual_seed(0)  # the same rank as the delta's: fine
    assert initial_model(dataclasses.replace(second, lora_rank=4)).config.lora_rank == 4
    for name, value in model.delta_state_dict().items():
        torch.testing.assert_close(value, saved[name].float(), atol=0, rtol=0)
    assert sum(gold_exact(model.eval(), docs, questions, torch.device("cpu"))) >= 14  # the trained reader
    assert sum(gold_exact(tiny_model(rank=4), docs, questions, torch.device("cpu"))) < 8  # a fresh one

    second = dataclasses.replace(second, steps=2)
    metrics = train(model.train(), docs, second)
    assert metrics["steps"] == 2 and metrics["reader_steps"] == 0 and metrics["init"] == second.init
    rows = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2]

    # --output-level on a delta without it: the level is added (temperature 20) and trains with the rest
    third = small_run(
        data_file, tmp_path / "c", "--init", str(tmp_path / "a" / "model"), "--output-level", "--steps", "2"
    )
    torch.manual_seed(0)
    model = initial_model(third)
    assert model.config.output_level and model.output_log_scale.item() == pytest.approx(math.log(20.0))
    train(model, docs, third)
    assert model.output_log_scale.item() != pytest.approx(math.log(20.0), abs=1e-4)
    torch.manual_seed(0)
    loaded = DocQAModel.from_pretrained(tmp_path / "c" / "model", merge=False)
    assert loaded.config.output_level
    for name, value in loaded.delta_state_dict().items():
        torch.testing.assert_close(value, model.delta_state_dict()[name], atol=1e-2, rtol=1e-2)  # fp16


def twin_model(seed=0):
    """tiny_model with reader adapters of their own (rank 2) and the output level."""
    torch.manual_seed(seed)
    config = QAConfig(
        lora_rank=4, reader_lora_rank=2, output_level=True, question_tokens=8, passage_tokens=14
    )
    return DocQAModel(config, BSBREncoder(BSBRConfig(**TINY))).eval()


def test_reader_twin_shares_every_weight_but_its_adapters():
    model = twin_model()
    enc, twin = model.encoder, model.reader_encoder
    assert twin.layers[0].attention.meta_query.weight is enc.layers[0].attention.meta_query.weight
    assert twin.layers[1].attention.query.base.weight is enc.layers[1].attention.query.base.weight
    assert twin.layers[1].attention.query.lora_a is not enc.layers[1].attention.query.lora_a
    assert twin.layers[1].attention.query.lora_a.shape[0] == 2
    assert twin.layers[1].attention.query.scale == enc.layers[1].attention.query.scale  # alpha / rank
    trained = {id(p) for p in model.trainable_parameters()}
    assert id(twin.layers[0].output.lora_b) in trained and id(enc.layers[0].output.lora_b) in trained
    delta = model.delta_state_dict()
    twin_keys = [k for k in delta if k.startswith("reader_encoder.")]
    assert twin_keys and all("lora_" in k for k in twin_keys)  # shared tensors are saved once
    assert "encoder.layers.0.attention.meta_query.weight" in delta
    with pytest.raises(ValueError, match="reader_lora_rank needs lora_rank"):
        QAConfig(lora_rank=0, reader_lora_rank=4)


def test_reader_adapters_move_the_reader_and_not_the_ranking():
    model = twin_model()
    ids = torch.randint(5, 200, (5, 16))
    cache = model.document_cache(ids, torch.ones_like(ids))
    q_ids, q_mask = question_rows([[7, 8, 9]], 1, 2)
    r_ids, r_mask, r_types, _ = reader_rows([[7, 8, 9]], [[10, 11, 12]], 1, 2)

    def outputs():
        c = model.document_cache(ids, torch.ones_like(ids))
        return model.retrieval_scores(q_ids, q_mask, cache), model.read(r_ids, r_mask, r_types, None)[0], c

    scores, start, c = outputs()
    torch.testing.assert_close(c.outputs, cache.outputs)
    with torch.no_grad():
        for name, p in model.reader_encoder.named_parameters():
            if "lora_b" in name:
                p.normal_()
    scores2, start2, c2 = outputs()
    torch.testing.assert_close(scores2, scores)  # the ranking and the document pass do not see them
    torch.testing.assert_close(c2.outputs, cache.outputs)
    assert not torch.allclose(start2[torch.isfinite(start2)], start[torch.isfinite(start)])
    with torch.no_grad():
        for name, p in model.encoder.named_parameters():
            if "lora_b" in name:
                p.normal_()
    scores3, start3, _ = outputs()
    assert not torch.allclose(scores3, scores2)
    torch.testing.assert_close(start3, start2)  # reading without a cache: the twin's adapters alone


def test_reader_twin_delta_round_trip_merged(tmp_path, monkeypatch):
    model = twin_model()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_delta(tmp_path)
    monkeypatch.setattr(
        BSBREncoder, "from_minilm", classmethod(lambda cls, **kw: BSBREncoder(BSBRConfig(**TINY)))
    )
    torch.manual_seed(0)  # same base weights as twin_model(seed=0)
    loaded = DocQAModel.from_pretrained(tmp_path)  # both adapter sets merged into their own Linears
    assert loaded.config.reader_lora_rank == 2
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    ids = torch.randint(5, 200, (5, 16))
    q_ids, q_mask = question_rows([[7, 8, 9]], 1, 2)
    r_ids, r_mask, r_types, _ = reader_rows([[7, 8, 9]], [[10, 11, 12]], 1, 2)
    for m in (model, loaded):
        cache = m.document_cache(ids, torch.ones_like(ids))
        m.results = (m.retrieval_scores(q_ids, q_mask, cache), m.read(r_ids, r_mask, r_types, cache)[0])
    for expected, got in zip(model.results, loaded.results, strict=True):
        finite = torch.isfinite(expected)
        torch.testing.assert_close(got[finite], expected[finite], atol=3e-2, rtol=3e-2)  # fp16 delta


def test_reader_phase_with_reader_adapters_leaves_the_ranking_as_it_was(
    tmp_path, data_file, monkeypatch, one_process
):
    monkeypatch.setattr(
        BSBREncoder, "from_minilm", classmethod(lambda cls, **kw: BSBREncoder(BSBRConfig(**TINY)))
    )
    flags = ["--reader-steps", "60", "--reader-questions", "8", "--lora-rank", "4", "--reader-lora-rank", "2"]
    flags.append("--output-level")  # every adapter of the document encoder then feeds the ranking
    args = small_run(data_file, tmp_path / "run", "--steps", "0", *flags)
    torch.manual_seed(0)
    model = initial_model(args)
    assert (model.config.lora_rank, model.config.reader_lora_rank) == (4, 2)
    model.config.question_tokens, model.config.passage_tokens = 8, 14
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    twin = {n: p.detach().clone() for n, p in model.reader_encoder.named_parameters() if "lora_" in n}
    docs = Documents(load_data(data_file))
    train(model, docs, args)
    for name, p in model.encoder.named_parameters():  # the reader phase trains the twin's adapters only
        assert torch.equal(p.detach(), before[name]), name
    assert all(
        not torch.equal(p, twin[n]) for n, p in model.reader_encoder.named_parameters() if "lora_b" in n
    )
    assert sum(gold_exact(model.eval(), docs, list(range(len(docs.q_ids))), torch.device("cpu"))) >= 14
    # resumed: the joint steps then train the document encoder's adapters as well
    train(model.train(), docs, dataclasses.replace(args, steps=2))
    lora = [n for n, _ in model.encoder.named_parameters() if "lora_b" in n]
    assert all(not torch.equal(model.encoder.get_parameter(n).detach(), before[n]) for n in lora)
