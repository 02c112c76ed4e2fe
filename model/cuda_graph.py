"""One CUDA graph per fixed-shape call: a question's passes are hundreds of small kernels whose launches,
not their arithmetic, take the time on a GPU; replaying them as one graph removes the launches.

`GraphedCall` is generic: the caller keeps shapes fixed (app.engine pads its rows to a few sizes) and
every tensor the function reads besides its inputs (weights, a document cache) alive and in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

WARMUP_CALLS = 1  # eager calls before the capture, on its stream: lazy set-up (cuBLAS workspaces) is there


class GraphedCall:
    """`fn(*inputs)` captured as a CUDA graph over static copies of `inputs` (CUDA tensors).

    Calling it with tensors of the same shapes and dtypes copies them in, replays the graph and returns
    clones of `fn`'s outputs (a tuple of tensors). Not thread-safe: the caller serialises calls. `fn`
    must not synchronise with the host (no .item(), no data-dependent Python branches) and must keep
    choosing the same kernels for these shapes.

    Args:
        fn: the work, returning a tuple of tensors.
        inputs: example inputs, which fix the shapes.
        pool: a memory pool handle (torch.cuda.graph_pool_handle()) shared with other graphs that are
            never replayed at the same time; None: a private pool.
    """

    def __init__(self, fn: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...], pool=None) -> None:
        self.shapes = [(x.shape, x.dtype) for x in inputs]
        self.inputs = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA work (another visitor's FAISS pass) may go on meanwhile
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.outputs = tuple(fn(*self.inputs))

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if [(x.shape, x.dtype) for x in inputs] != self.shapes:
            raise ValueError(f"a graph captured for {self.shapes} got {[(x.shape, x.dtype) for x in inputs]}")
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)
