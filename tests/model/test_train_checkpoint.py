"""model/train/checkpoint.py: a run stopped at a checkpoint and resumed ends with the weights, Adam state
and losses of the run that was never stopped."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from model.train.config import TrainConfig
from model.train.data import Documents, load_data
from model.train.train import train
from tests.model.test_qa import synthetic_file, tiny_model


def _config(data: str, out, steps: int) -> TrainConfig:
    # --warmup 1: the first two steps have the peak learning rate whether --steps is 2 or 4, so the
    # stopped run's steps 1-2 are those of the whole run; --docs-per-step 2: each step's documents,
    # questions and negatives are a function of the step, not of a stream that restarts on resume
    return TrainConfig.from_cli(
        ["--data", data, "--out", str(out), "--steps", str(steps), "--docs-per-step", "2", "--warmup", "1"]
        + ["--questions-per-step", "4", "--lr", "5e-3", "--val-questions", "0", "--log-every", "1"]
        + ["--save-every", "1000", "--device", "cpu"]
    )


def test_a_resumed_run_continues_identically(tmp_path, one_process):
    data = synthetic_file(tmp_path / "synthetic.safetensors", n_docs=2)
    train(tiny_model(rank=4), Documents(load_data(data)), _config(data, tmp_path / "whole", 4))
    train(tiny_model(rank=4), Documents(load_data(data)), _config(data, tmp_path / "resumed", 2))
    stopped = load_file(tmp_path / "resumed" / "checkpoint.safetensors")
    metrics = train(tiny_model(rank=4), Documents(load_data(data)), _config(data, tmp_path / "resumed", 4))
    assert metrics["steps"] == 4

    whole = load_file(tmp_path / "whole" / "checkpoint.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoint.safetensors")
    assert whole.keys() == resumed.keys() == stopped.keys()
    assert any(k.startswith("opt.exp_avg_sq.") for k in whole)
    moved = [k for k in whole if k.startswith("param.") and not torch.equal(whole[k], stopped[k])]
    assert moved  # steps 3-4 ran after the resume
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    assert {v.item() for k, v in resumed.items() if k.startswith("opt.step.")} == {4.0}

    def losses(run: str) -> list[tuple]:
        rows = [json.loads(line) for line in (tmp_path / run / "log.jsonl").open()]
        return [(r["step"], r["loss"], r["span"], r["retrieval"], r["lr"]) for r in rows]

    assert losses("resumed") == losses("whole")  # steps 1-2 before the stop, 3-4 after it
