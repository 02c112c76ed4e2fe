"""model/train/config.py: TrainConfig checks its options, is the command line, and round-trips through the
train_config.json that a run leaves beside its checkpoint and its delta."""

from __future__ import annotations

import dataclasses
import json

import pytest

from model.train.config import CONFIG_FILE, TrainConfig, cli_parser
from model.train.data import Documents, load_data
from model.train.train import train
from tests.model.test_qa import synthetic_file, tiny_model


@pytest.fixture
def data(tmp_path) -> str:
    return synthetic_file(tmp_path / "synthetic.safetensors")


def test_the_command_line_is_the_dataclass(data):
    assert TrainConfig.from_cli(["--data", data]) == TrainConfig(data=data)
    config = TrainConfig.from_cli(
        ["--data", data, "--steps", "7", "--output-level", "--lora-alpha", "3", "--docs-per-step", "2"]
    )
    assert (config.steps, config.output_level, config.lora_alpha, config.docs_per_step) == (7, True, 3.0, 2)
    assert config.retrieval_questions is None and config.fit_minutes is None
    flags = {a.dest for a in cli_parser()._actions} - {"help", "config"}
    assert flags == {f.name for f in dataclasses.fields(TrainConfig)}  # every option has its flag


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": -1}, "--steps must be at least 0, got -1"),
        ({"reader_steps": -5}, "--reader-steps must be at least 0"),
        ({"questions_per_step": 0}, "--questions-per-step must be at least 1"),
        ({"retrieval_questions": 0}, "--retrieval-questions must be at least 1"),
        ({"save_every": 0}, "--save-every must be at least 1"),
        ({"log_every": 0}, "--log-every must be at least 1"),
        ({"docs_per_step": 0}, "--docs-per-step must be at least 1"),
        ({"val_questions": -1}, "--val-questions must be at least 0"),
        ({"reader_negatives": 0}, "--reader-negatives must be at least 1"),
        ({"shared_norm": -0.5}, "--shared-norm must be at least 0, got -0.5"),
        ({"lr": 0.0}, "--lr must be more than 0"),
        ({"lora_alpha": -2.0}, "--lora-alpha must be more than 0"),
        ({"max_minutes": 0}, "--max-minutes must be more than 0"),
        ({"fit_minutes": -1.0}, "--fit-minutes must be more than 0"),
        ({"data": "missing.safetensors"}, "--data missing.safetensors: no such file"),
        ({"init": "no/such/delta"}, "--init no/such/delta: not a trained delta folder"),
        ({"device": "gpu7"}, "--device gpu7: not a torch device"),
        ({"steps": "3"}, "--steps: expected int, got '3'"),
        ({"steps": True}, "--steps: expected int, got True"),
        ({"lora_rank": 2.5}, "--lora-rank: expected None or int, got 2.5"),
    ],
    ids=lambda x: next(iter(x)) if isinstance(x, dict) else None,
)
def test_bad_options_are_one_line_errors(data, change, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")) as error:
        TrainConfig(**{"data": data, **change})
    assert "\n" not in str(error.value)


def test_out_must_be_a_folder(data, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        TrainConfig(data=data, out=str(tmp_path / "file"))
    assert TrainConfig(data=data, out=str(tmp_path / "new")).out == str(tmp_path / "new")


def test_a_bad_flag_exits_with_the_reason(data, capsys):
    with pytest.raises(SystemExit) as stop:
        TrainConfig.from_cli(["--data", data, "--steps", "-3"])
    assert stop.value.code == 2
    assert "--steps must be at least 0, got -3" in capsys.readouterr().err


def test_saved_options_must_be_known_and_of_this_version(data):
    saved = TrainConfig(data=data).to_dict()
    assert TrainConfig.from_dict(saved) == TrainConfig(data=data)
    with pytest.raises(ValueError, match=r"unknown train config options \['batch'\]"):
        TrainConfig.from_dict({**saved, "batch": 4})
    with pytest.raises(ValueError, match="format_version 9, expected 1"):
        TrainConfig.from_dict({**saved, "format_version": 9})
    with pytest.raises(ValueError, match="format_version None"):
        TrainConfig.from_dict({k: v for k, v in saved.items() if k != "format_version"})


def test_a_run_leaves_its_options_beside_checkpoint_and_delta(tmp_path, data, one_process):
    out = tmp_path / "run"
    config = TrainConfig.from_cli(
        ["--data", data, "--out", str(out), "--steps", "2", "--questions-per-step", "4", "--lr", "5e-3"]
        + ["--warmup", "1", "--val-questions", "0", "--log-every", "1", "--device", "cpu"]
        + ["--reader-steps", "2", "--reader-questions", "8", "--lora-rank", "4", "--seed", "3"]
    )
    metrics = train(tiny_model(rank=4), Documents(load_data(data)), config)
    assert metrics["steps"] == 2 and (out / "checkpoint.safetensors").exists()
    assert (out / "model" / "delta.safetensors").exists()
    for folder in (out, out / "model"):
        saved = json.loads((folder / CONFIG_FILE).read_text())
        assert saved["format_version"] == 1 and saved["steps"] == 2 and saved["seed"] == 3
        assert saved["data"] == data and saved["lr"] == 5e-3 and saved["init"] is None
        assert TrainConfig.load(folder) == config
    # --config runs it again: the same options, and flags after it change single ones
    again = TrainConfig.from_cli(["--config", str(out / CONFIG_FILE)])
    assert again == config
    more = TrainConfig.from_cli(["--config", str(out / "model" / CONFIG_FILE), "--steps", "5"])
    assert more == dataclasses.replace(config, steps=5)


def test_a_broken_saved_config_is_a_command_line_error(tmp_path, data, capsys):
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps({**TrainConfig(data=data).to_dict(), "steps": -4}))
    with pytest.raises(SystemExit):
        TrainConfig.from_cli(["--config", str(path)])
    assert "--steps must be at least 0, got -4" in capsys.readouterr().err
