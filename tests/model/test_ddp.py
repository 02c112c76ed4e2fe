"""DistributedDataParallel training (issue 6): two gloo ranks on CPU give the weights of one process
reading the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from model.train.config import TrainConfig
from model.train.data import NEAR, Documents, ReaderPlan, StepPlan, load_data
from model.train.train import FIT_LAST, steps_that_fit, train
from tests.model.test_qa import synthetic_documents, synthetic_file, tiny_model

N_DOCS = 4
# Biases that shift every logit of a softmax equally have a zero gradient: what they get is rounding
# noise, which differs with the summation order and which Adam scales up to full-size steps.
SHIFT_INVARIANT = ("meta_key.bias", "span_head.bias")
DOCS_PER_STEP = 4  # two documents per rank: gradient accumulation under DDP's no_sync is exercised too


def _args(data: str, out: Path, docs_per_step: int) -> TrainConfig:
    return TrainConfig.from_cli(
        ["--data", data, "--out", str(out), "--steps", "3", "--docs-per-step", str(docs_per_step)]
        + ["--questions-per-step", "4", "--lr", "5e-3", "--warmup", "1", "--val-questions", "0"]
        + ["--log-every", "1", "--save-every", "100", "--device", "cpu"]
        + ["--reader-steps", "2", "--reader-questions", "8"]  # the reader phase's all-reduce too
    )


def _rank(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )  # what torchrun sets
    torch.set_num_threads(1)
    train(tiny_model(rank=4), Documents(load_data(data)), _args(data, Path(out), DOCS_PER_STEP))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_split_each_steps_documents_and_questions_like_one_process():
    docs = Documents(synthetic_documents(n_docs=N_DOCS))
    one = StepPlan(docs, seed=0, docs_per_step=2, questions=4)
    ranks = [StepPlan(docs, seed=0, docs_per_step=2, questions=4, rank=r, world=2) for r in range(2)]
    for step in range(5):  # crosses an epoch boundary (2 steps per epoch)
        expected = sorted((g, batch) for g, batch, _ in one(step))
        got = sorted((g, batch) for plan in ranks for g, batch, _ in plan(step))
        assert got == expected and len({g for g, _ in got}) == 2
    epochs = [sorted(g for s in (0, 1) for g, _, _ in one(s + 2 * e)) for e in range(2)]
    assert epochs[0] == epochs[1] == list(range(N_DOCS))  # each epoch reads every document once
    assert all(len(batch) == 4 for _, batch, _ in one(0))
    more = StepPlan(docs, seed=0, docs_per_step=1, questions=6)
    assert all(len(batch) == 6 for _, batch, _ in more(0))
    with pytest.raises(ValueError, match="--docs-per-step 3 must be a multiple of the 2 ranks"):
        StepPlan(docs, seed=0, docs_per_step=3, questions=4, world=2)


def test_reader_phase_batches_split_over_ranks_with_in_document_negatives():
    docs = Documents(synthetic_documents(n_docs=N_DOCS))
    one = ReaderPlan(docs, seed=0, questions=8)
    ranks = [ReaderPlan(docs, seed=0, questions=8, rank=r, world=2) for r in range(2)]
    near = 0
    for step in range(20):
        questions, negatives = one(step)
        assert len(questions) == 8 and len(set(questions)) == 8
        pairs = [pair for plan in ranks for pair in zip(*plan(step), strict=True)]
        assert sorted(pairs) == sorted(zip(questions, negatives, strict=True))  # the same, split
        for q, n in zip(questions, negatives, strict=True):
            a, b = docs.ranges[int(docs.q_doc[q])]
            assert a <= n < b and n != int(docs.q_chunk[q])  # another chunk of the same document
            near += abs(n - int(docs.q_chunk[q])) <= NEAR
    assert near == 160  # 6-chunk documents: every negative is near
    assert one(3) != one(4) and one(3) == ReaderPlan(docs, seed=0, questions=8)(3)  # seeded per step
    with pytest.raises(ValueError, match="multiple of the 3 ranks"):
        ReaderPlan(docs, seed=0, questions=8, world=3)


def test_two_gloo_ranks_train_the_same_weights_as_one_process(tmp_path, one_process):
    data = synthetic_file(tmp_path / "synthetic.safetensors", n_docs=N_DOCS)
    train(tiny_model(rank=4), Documents(load_data(data)), _args(data, tmp_path / "one", DOCS_PER_STEP))
    mp.spawn(_rank, args=(2, _free_port(), data, str(tmp_path / "ddp")), nprocs=2)

    single = load_file(tmp_path / "one" / "checkpoint.safetensors")
    ddp = load_file(tmp_path / "ddp" / "checkpoint.safetensors")
    model = tiny_model(rank=4)
    trained = {id(p) for p in model.trainable_parameters()}
    initial = {f"param.{n}": p.detach() for n, p in model.named_parameters() if id(p) in trained}
    assert single.keys() == ddp.keys() and set(initial) <= single.keys()
    assert any(not torch.equal(single[k], initial[k]) for k in initial)  # training moved the weights
    for key in single:
        if key.endswith(SHIFT_INVARIANT) and not key.startswith("opt.step."):  # step counts must match
            assert single[key.replace("param.", "opt.exp_avg.")].abs().max() < 1e-6  # gradient is noise
            continue
        # Adam steps are ~lr (5e-3) a weight: a different batch moves weights by ~1e-3, while the all-reduce's
        # summation order alone moved one weight in 1,024 by 1.4e-6 (seen on this CPU, 2026-12-04)
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-5, msg=key)
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").open()] for run in ("one", "ddp")]
    assert [r.get("reader_step", r.get("step")) for r in logs[1]] == [1, 2, 1, 2, 3]  # only rank 0 logs
    for a, b in zip(*logs, strict=True):
        assert abs(a["span"] - b["span"]) < 1e-3


def test_steps_that_fit_follow_the_measured_speed_within_the_cap():
    # 30 steps done in 40 s, the last 20 (from step 10 on) in 30 s: 1.5 s a step
    assert steps_that_fit(fit_minutes=2, cap=1000, step=30, done=30, elapsed=40.0, fit_start=10.0) == 83
    assert steps_that_fit(2, cap=50, step=30, done=30, elapsed=40.0, fit_start=10.0) == 50  # --steps caps
    assert steps_that_fit(0.5, cap=1000, step=30, done=30, elapsed=40.0, fit_start=10.0) == 30  # over time
    # a resumed call (step 630, its 130th step): the speed of this call's steps, the steps of the whole run
    assert steps_that_fit(3, cap=1000, step=630, done=130, elapsed=130.0, fit_start=10.0) == 680


def test_fit_minutes_stops_when_the_time_is_spent_and_never_passes_steps(tmp_path, one_process):
    data = synthetic_file(tmp_path / "synthetic.safetensors", n_docs=2)

    def run(out: str, steps: int, fit_minutes: str) -> dict:
        config = TrainConfig.from_cli(
            ["--data", data, "--out", str(tmp_path / out), "--steps", str(steps), "--questions-per-step", "4"]
            + ["--warmup", "1", "--val-questions", "0", "--log-every", "1", "--save-every", "100000"]
            + ["--device", "cpu", "--fit-minutes", fit_minutes, "--max-minutes", "3"]  # if the fit broke
        )
        return train(tiny_model(rank=4), Documents(load_data(data)), config)

    # 6 microseconds: spent before step 1 ends, so whatever the speed training stops at the first fit
    assert run("short", 100000, "1e-7")["steps"] == FIT_LAST
    rows = [json.loads(line) for line in (tmp_path / "short" / "log.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, FIT_LAST + 1))
    assert rows[-1]["lr"] == pytest.approx(5e-4 * (100000 - FIT_LAST + 1) / (100000 - 1))  # the old schedule
    saved = json.loads((tmp_path / "short" / "model" / "train_config.json").read_text())
    assert saved["steps"] == 100000 and saved["fit_minutes"] == 1e-7  # the options as given
    assert run("long", 45, "60")["steps"] == 45  # an hour fits more than --steps: --steps stays the cap
