"""Benchmark one layer's attention op: BSBR (dense and top-k retrieval) against full causal SDPA.

    python -m model.bench [--device cuda] [--lengths 4096 16384 ...] [--heads 12 --head-dim 64]
                          [--chunk 256] [--top-k 16] [--backward] [--json OUT] [--plot OUT.png]

q, k, v (B=1, H, T, D) and r, h (1, H, T/C, D) are random; bf16 on CUDA, fp32 on CPU. BSBR runs in the
decoder setting that matches causal SDPA: token-causal chunks, retrieval from strictly earlier chunks.
Methods: bsbr (the PyTorch path of model/bsbr.py), bsbr-triton (the fused Triton forward of
model/bsbr_triton.py, CUDA only, forward only: its fwd+bwd column stays empty), bsbr-topk (PyTorch),
sdpa.
Time: median of several runs after warm-up (CUDA events on GPU). Peak memory: max allocated during the
call minus what was allocated before it (CUDA only). Benchmarks are scripts, never timed unit tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import model.bsbr as bsbr_module
from ingest.chunk import CHUNK_TOKENS
from model.bsbr import bsbr_attention

DEFAULT_LENGTHS = [4096, 16384, 65536, 131072, 262144, 524288, 1048576]
DEFAULT_SHAPES = [(12, 64), (12, 32)]  # (heads, head size): a 768-wide model, and MiniLM
HBM_BYTES_PER_S = 4.3e12  # H200 memory bandwidth (vendor figure, ~4.8e12 peak; 4.3e12 reachable)
CPU_SDPA_MAX_T = 16384


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(fn: Callable[[], object], device: str, repeats: int, budget_s: float = 3.0):
    """Median time of fn in ms (one warm-up; stops early once the budget is spent) and its peak extra
    CUDA memory in MiB: max allocated during the runs minus what was allocated before (None on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else None
    return statistics.median(times), peak


@contextlib.contextmanager
def _fused_kernels(on: bool):
    """bsbr_attention with (on) or without the Triton kernels, whatever the module default."""
    before = bsbr_module.FUSED_KERNELS
    bsbr_module.FUSED_KERNELS = on
    try:
        yield
    finally:
        bsbr_module.FUSED_KERNELS = before


def _make_fn(method: str, T: int, H: int, D: int, chunk: int, top_k: int, device: str, dtype, backward: bool):
    """Inputs and a closure running one forward (and backward) of the method."""
    N = math.ceil(T / chunk)
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, device=device, dtype=dtype, generator=gen)
        return x.requires_grad_(backward)

    q, k, v = rand(1, H, T, D), rand(1, H, T, D), rand(1, H, T, D)
    if method == "sdpa":
        inputs = (q, k, v)

        def op():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        r, h = rand(1, H, N, D), rand(1, H, N, D)
        gate = torch.ones(H, device=device, dtype=dtype)
        kk = top_k if method == "bsbr-topk" else None
        fused = method == "bsbr-triton"
        inputs = (q, k, v, r, h)

        def op():
            with _fused_kernels(fused):
                return bsbr_attention(q, k, v, r, h, chunk_size=chunk, causal=True, top_k=kk, gate=gate)

    if not backward:

        def run():
            with torch.no_grad():
                return op()

        return run
    grad = torch.randn(1, H, T, D, device=device, dtype=dtype, generator=gen)

    def run_backward():
        op().backward(grad)
        for x in inputs:
            x.grad = None

    return run_backward


def bench_row(method: str, T: int, H: int, D: int, args: argparse.Namespace) -> dict:
    """One (method, T, shape) measurement; OOM is recorded, not raised."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    row = {
        "method": method,
        "T": T,
        "heads": H,
        "head_dim": D,
        "fwd_ms": None,
        "fwd_bwd_ms": None,
        "peak_mib": None,
        "bwd_peak_mib": None,
        "status": "ok",
    }
    if method == "bsbr-triton" and importlib.util.find_spec("triton") is None:
        row["status"] = "no triton"
        return row
    try:
        fwd = _make_fn(method, T, H, D, args.chunk, args.top_k, args.device, dtype, backward=False)
        row["fwd_ms"], row["peak_mib"] = _measure(fwd, args.device, args.repeats)
        del fwd
        if args.backward and method != "bsbr-triton":  # forward-only kernels
            both = _make_fn(method, T, H, D, args.chunk, args.top_k, args.device, dtype, backward=True)
            row["fwd_bwd_ms"], row["bwd_peak_mib"] = _measure(both, args.device, args.repeats)
            del both
    except torch.OutOfMemoryError:
        row["status"] = "OOM"
    except RuntimeError as e:  # e.g. a kernel's launch limit at extreme T: report it, keep going
        row["status"] = f"error: {str(e).splitlines()[0][:80]}"
    finally:
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return row


def bandwidth_floor_ms(T: int, H: int, D: int, element_size: int) -> float:
    """Time to read q, k, v and write out once at HBM bandwidth: a floor for any attention op."""
    return 4 * T * H * D * element_size / HBM_BYTES_PER_S * 1e3


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(rows: list[dict], args: argparse.Namespace) -> dict:
    """Print the markdown table and the summary lines; return the summary."""
    sdpa = {(r["T"], r["heads"], r["head_dim"]): r["fwd_ms"] for r in rows if r["method"] == "sdpa"}
    sdpa_bwd = {(r["T"], r["heads"], r["head_dim"]): r["fwd_bwd_ms"] for r in rows if r["method"] == "sdpa"}
    print("| H x D | T | method | fwd ms | fwd+bwd ms | peak MiB | fwd+bwd peak MiB | speed-up vs SDPA |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        key = (r["T"], r["heads"], r["head_dim"])
        if r["status"] != "ok":
            print(f"| {r['heads']}x{r['head_dim']} | {r['T']} | {r['method']} | {r['status']} | | | | |")
            continue
        up = [
            b / a if a and b else None
            for a, b in ((r["fwd_ms"], sdpa.get(key)), (r["fwd_bwd_ms"], sdpa_bwd.get(key)))
        ]
        r["speedup_fwd"], r["speedup_fwd_bwd"] = up
        print(
            f"| {r['heads']}x{r['head_dim']} | {r['T']} | {r['method']} | {_fmt(r['fwd_ms'], '.3f')} | "
            f"{_fmt(r['fwd_bwd_ms'], '.3f')} | {_fmt(r['peak_mib'], '.0f')} | "
            f"{_fmt(r['bwd_peak_mib'], '.0f')} | "
            f"{' / '.join(_fmt(u, '.1f') + 'x' if u else '-' for u in up)} |"
        )
    summary = {}
    element_size = 2 if args.device == "cuda" else 4
    longest = max(args.lengths)
    for r in rows:
        if r["method"] == "sdpa" or r["status"] != "ok":
            continue
        name = f"{r['method']} {r['heads']}x{r['head_dim']}"
        if r["T"] == longest and args.device == "cuda":
            floor = bandwidth_floor_ms(r["T"], r["heads"], r["head_dim"], element_size)
            summary[f"{name} floor_ms@{longest}"] = floor
            summary[f"{name} x_floor@{longest}"] = r["fwd_ms"] / floor
        base = next(
            (
                b
                for b in rows
                if b["method"] == r["method"]
                and b["T"] == 131072
                and b["heads"] == r["heads"]
                and b["head_dim"] == r["head_dim"]
                and b["status"] == "ok"
            ),
            None,
        )
        if r["T"] == 1048576 and base is not None:
            summary[f"{name} time(1M)/time(128k)"] = r["fwd_ms"] / base["fwd_ms"]
        torch_row = next(
            (
                b
                for b in rows
                if b["method"] == "bsbr"
                and (b["T"], b["heads"], b["head_dim"]) == (r["T"], r["heads"], r["head_dim"])
                and b["status"] == "ok"
            ),
            None,
        )
        if r["method"] == "bsbr-triton" and r["T"] == longest and torch_row is not None:
            summary[f"{name} speedup_vs_bsbr@{longest}"] = torch_row["fwd_ms"] / r["fwd_ms"]
    print()
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    if args.device == "cuda":
        print(
            f"(floor = bytes of q, k, v read + out written at {HBM_BYTES_PER_S / 1e12:.1f} TB/s, "
            f"{element_size}-byte elements; x_floor = BSBR fwd time / floor)"
        )
    return summary


def plot(rows: list[dict], path: str) -> None:
    """Log-log time and memory vs T, one line per method and shape."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in sorted({(r["method"], r["heads"], r["head_dim"]) for r in rows}):
        sel = [r for r in rows if (r["method"], r["heads"], r["head_dim"]) == key and r["status"] == "ok"]
        label = f"{key[0]} {key[1]}x{key[2]}"
        ax_t.plot([r["T"] for r in sel], [r["fwd_ms"] for r in sel], marker="o", label=label)
        mem = [(r["T"], r["peak_mib"]) for r in sel if r["peak_mib"] is not None]
        if mem:
            ax_m.plot(*zip(*mem, strict=True), marker="o", label=label)
    for ax, ylabel in ((ax_t, "forward time (ms)"), (ax_m, "peak extra memory (MiB)")):
        ax.set(xscale="log", yscale="log", xlabel="tokens T", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "measured on CUDA only", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS)
    parser.add_argument("--heads", type=int, help="with --head-dim: one shape instead of 12x64 and 12x32")
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--chunk", type=int, default=CHUNK_TOKENS)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument("--repeats", type=int, help="timed runs per row (default 10 on CUDA, 3 on CPU)")
    parser.add_argument("--json", help="write rows and summary as JSON here")
    parser.add_argument("--plot", help="write a log-log PNG plot here")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (10 if args.device == "cuda" else 3)
    shapes = DEFAULT_SHAPES
    if args.heads or args.head_dim:
        shapes = [(args.heads or 12, args.head_dim or 64)]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device {device_name}, torch {torch.__version__}, chunk {args.chunk}, top-k {args.top_k}")
    rows = []
    for H, D in shapes:
        for T in args.lengths:
            methods = ["bsbr", "bsbr-triton", "bsbr-topk"] if args.device == "cuda" else ["bsbr", "bsbr-topk"]
            if args.device == "cuda" or T <= CPU_SDPA_MAX_T:
                methods.append("sdpa")
            for method in methods:
                rows.append(bench_row(method, T, H, D, args))
                print(
                    f"  {method:9s} {H}x{D} T={T}: {rows[-1]['status']}, fwd {_fmt(rows[-1]['fwd_ms'])} ms",
                    flush=True,
                )
    print()
    summary = report(rows, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device_name,
                    "torch": torch.__version__,
                    "chunk": args.chunk,
                    "top_k": args.top_k,
                    "dtype": "bfloat16" if args.device == "cuda" else "float32",
                    "rows": rows,
                    "summary": summary,
                },
                f,
                indent=2,
            )
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
