"""Several processes (torchrun): joining the process group, DDP's view of a step, gradient averaging."""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.qa import DocQAModel
from model.train.data import Documents
from model.train.losses import step_loss


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

    def __init__(self, model: DocQAModel, reader_negatives: int = 1, shared_norm: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.reader_negatives, self.shared_norm = reader_negatives, shared_norm

    def forward(self, docs: Documents, g: int, batch: list[int], rng: random.Random, device, n_read=None):
        return step_loss(
            self.model, docs, g, batch, rng, device, n_read, self.reader_negatives, self.shared_norm
        )


def wrap_for_ranks(step_fn: StepLoss, device: torch.device, world: int) -> nn.Module:
    """`step_fn` itself on one process, else under DistributedDataParallel (one GPU per rank, or CPU)."""
    if world == 1:
        return step_fn
    return DistributedDataParallel(step_fn, device_ids=[device.index] if device.type == "cuda" else None)


def sync_after(step_fn: nn.Module, last: bool) -> AbstractContextManager:
    """DDP's gradient all-reduce only after the last document of a step (no_sync before it)."""
    if isinstance(step_fn, DistributedDataParallel) and not last:
        return step_fn.no_sync()
    return nullcontext()


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Mean of every rank's gradients, in place (the reader phase, which DDP would reject: it leaves
    the retrieval weights without gradients)."""
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def sum_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    """`value` summed over the ranks, in place; every rank must call it at the same point."""
    if world > 1:
        dist.all_reduce(value)
    return value


def from_rank0(value: torch.Tensor, world: int) -> torch.Tensor:
    """Rank 0's `value` on every rank, in place (decisions that all ranks must take alike)."""
    if world > 1:
        dist.broadcast(value, 0)
    return value


def leave(world: int) -> None:
    """Wait for every rank, then leave the process group (torchrun runs)."""
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
