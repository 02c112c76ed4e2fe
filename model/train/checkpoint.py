"""Checkpoints: the trainable weights and AdamW's state as safetensors (no pickle), resumable."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.qa import DocQAModel


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
