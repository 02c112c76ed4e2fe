"""Every option of a training run, checked when made and saved beside the run's output.

`TrainConfig` is the one place an option is declared: its field, default and help text. The command line
(`python -m model.train --help`) is made from the fields, and `train_config.json` (written to --out and to
--out/model) holds them all, so `python -m model.train --config runs/qa/train_config.json` runs the same
training again (flags after it override single options).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONFIG_FILE = "train_config.json"
CONFIG_VERSION = 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _option(default, help: str | None = None, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training call (one process, or every rank of a torchrun)."""

    data: str = _option(".carry/train.safetensors", "training tensors written by model.data (.xz allowed)")
    out: str = _option("runs/qa", "folder for log.jsonl, checkpoints, metrics.json and the delta (model/)")
    steps: int = _option(1500, "joint steps (document pass + questions + reader rows)")
    questions_per_step: int = _option(96, "reader questions per document")
    retrieval_questions: int | None = _option(
        None,
        "questions per document for the retrieval loss (default: --questions-per-step); the first "
        "--questions-per-step of them also train the reader",
    )
    reader_steps: int = _option(
        0, "first train the reader alone for this many steps (no document pass: cheap, many updates)"
    )
    reader_questions: int = _option(64, "questions per reader-phase step, over all ranks")
    reader_negatives: int = _option(
        1,
        "negative chunks read per reader question in the joint steps: the first as before (the hardest "
        "wrong chunk by retrieval half of the time, else a random one), the others the next hardest",
    )
    shared_norm: float = _option(
        0.0,
        "weight of a loss that compares passages: one softmax over the start (and end) scores, each "
        "minus its passage's [CLS] score, of a question's gold and negative passages, the gold span the "
        "target (0: off; each passage is scored alone, which leaves scores of different passages "
        "uncalibrated against each other)",
    )
    init: str | None = _option(
        None,
        "start from this trained delta folder (config.json + delta.safetensors) instead of a fresh "
        "delta, with a fresh optimizer and schedule: more joint steps after an earlier run (then "
        "--reader-steps 0); its config sets the LoRA rank and alpha",
    )
    output_level: bool = _option(
        False,
        "rank chunks with a retrieval level on the last layer's output too (added to an --init "
        "delta that lacks it)",
    )
    lr: float = _option(5e-4, "peak learning rate (AdamW, weight decay 0.01)")
    warmup: int = _option(100, "steps of linear warm-up, then linear decay to 0 at --steps")
    lora_rank: int | None = _option(None, "LoRA rank (default 16; with --init, its rank)")
    lora_alpha: float | None = _option(None, "LoRA scale numerator (default 2 x rank)")
    reader_lora_rank: int | None = _option(
        None,
        "give the reader rows adapters of their own, of this rank (default 0: shared with the document "
        "and question passes; with --init, its rank)",
    )
    seed: int = _option(0, "seeds the weights, the sampling and validation's questions")
    save_every: int = _option(500, "checkpoint every this many steps (and at the end)")
    log_every: int = _option(50, "log a JSON line every this many steps (and at step 1)")
    val_questions: int = _option(2000, "held-out questions validated at the end (0: no validation)")
    max_minutes: float | None = _option(None, "stop early (then validate and save)")
    fit_minutes: float | None = _option(
        None,
        "set --steps from the speed of steps 10-30 so that training ends after about this long "
        "(the learning-rate schedule then decays to zero on time); never more than --steps",
    )
    docs_per_step: int = _option(1, "documents per step, over all ranks")
    device: str = field(
        default_factory=default_device, metadata={"help": "torch device (default: cuda if there is one)"}
    )

    def __post_init__(self) -> None:
        self._check_types()
        at_least = {
            "steps": 0,
            "questions_per_step": 1,
            "retrieval_questions": 1,
            "reader_steps": 0,
            "reader_questions": 1,
            "reader_negatives": 1,
            "warmup": 0,
            "lora_rank": 0,
            "reader_lora_rank": 0,
            "save_every": 1,
            "log_every": 1,
            "val_questions": 0,
            "docs_per_step": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{_flag(name)} must be at least {low}, got {value}")
        if self.shared_norm < 0:
            raise ValueError(f"--shared-norm must be at least 0, got {self.shared_norm}")
        for name in ("lr", "lora_alpha", "max_minutes", "fit_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{_flag(name)} must be more than 0, got {value}")
        if not Path(self.data).is_file():
            raise ValueError(f"--data {self.data}: no such file (write it with python -m model.data)")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out}: exists and is not a folder")
        if self.init is not None and not (Path(self.init) / "config.json").is_file():
            raise ValueError(f"--init {self.init}: not a trained delta folder (no config.json in it)")
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"--device {self.device}: not a torch device ({e})") from None

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kinds = getattr(self, f.name), _kinds(hints[f.name])
            if value is None and type(None) in kinds:
                continue
            if float in kinds and type(value) is int:  # 1 for 1.0 (JSON, Python callers)
                continue
            if type(value) not in kinds:
                raise ValueError(f"{_flag(f.name)}: expected {_names(kinds)}, got {value!r}")

    def to_dict(self) -> dict:
        return {"format_version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of to_dict; unknown options and other format versions are errors."""
        values = dict(values)
        version = values.pop("format_version", None)
        if version != CONFIG_VERSION:
            raise ValueError(f"train config format_version {version!r}, expected {CONFIG_VERSION}")
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown train config options {sorted(unknown)}")
        return cls(**values)

    def save(self, folder: str | Path) -> Path:
        """Write train_config.json into `folder` (made if missing); returns its path."""
        path = Path(folder) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """A saved train_config.json (or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_cli(cls, argv: list[str] | None = None) -> TrainConfig:
        """Options from the command line; --config FILE first takes them all from a saved run."""
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(argv)
        parser = cli_parser()
        if known.config:
            try:
                saved = cls.load(known.config)
            except (OSError, ValueError) as e:
                parser.error(f"--config {known.config}: {e}")
            parser.set_defaults(**dataclasses.asdict(saved))
        args = vars(parser.parse_args(argv))
        args.pop("config")
        try:
            return cls(**args)
        except ValueError as e:
            parser.error(str(e))


def cli_parser() -> argparse.ArgumentParser:
    """The argparse parser of TrainConfig's fields: field `docs_per_step` is --docs-per-step, etc."""
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train the BSBR QA model (delta over all-MiniLM-L6-v2).",
    )
    p.add_argument(
        "--config", default=None, help=f"take every option from a saved {CONFIG_FILE} (flags still override)"
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kinds = _kinds(hints[f.name]) - {type(None)}
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        help_text = f.metadata["help"]
        if kinds == {bool}:
            p.add_argument(_flag(f.name), action="store_true", default=default, help=help_text)
        else:
            (kind,) = kinds
            p.add_argument(_flag(f.name), type=kind, default=default, help=help_text)
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kinds(hint) -> set[type]:
    """{int} for `int`, {int, NoneType} for `int | None`."""
    return set(typing.get_args(hint)) if typing.get_args(hint) else {hint}


def _names(kinds: set[type]) -> str:
    return " or ".join(sorted("None" if k is type(None) else k.__name__ for k in kinds))
