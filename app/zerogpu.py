"""Hugging Face ZeroGPU: a Space on ZeroGPU hardware gets a GPU only inside functions decorated with the
`spaces` package's @spaces.GPU (the package is installed on such Spaces). `gpu(fn)` is that decorator
there (Settings.zero_gpu, from SPACES_ZERO_GPU) and `fn` itself everywhere else, where DocQA uses
whatever device it picked. Nothing here touches CUDA; `spaces` is imported only on ZeroGPU, before
gradio builds the page (app.serve.create_app calls `prepare`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from app.settings import Settings

F = TypeVar("F", bound=Callable)
GPU_SECONDS = 120  # the most a call may hold the GPU: a whole book's ingest, or one question


def prepare(settings: Settings) -> None:
    """Import `spaces` on ZeroGPU (it must patch torch before any model is loaded); a clear one-line
    error if the Space lacks it."""
    if settings.zero_gpu:
        try:
            import spaces  # noqa: F401
        except ImportError as err:
            raise RuntimeError("SPACES_ZERO_GPU is set but the `spaces` package is not installed") from err


def gpu(fn: F, settings: Settings, seconds: int = GPU_SECONDS) -> F:
    """`fn` run with a ZeroGPU GPU attached (on ZeroGPU), else `fn` unchanged."""
    if not settings.zero_gpu:
        return fn
    import spaces

    return spaces.GPU(fn, duration=seconds)
