"""Where a book question's time goes: ingest the sample book in three fresh homes of one process (the
first pays the process's start-up), time each method's questions, then profile 12 asks.

    python -m scripts.question_profile [--pdf assets/pride_and_prejudice.pdf] [--home /tmp/qprof]

Prints each ingest's stage timings, per method (and for the three shown methods in one ask) p50 / p95 ms
over the book questions asked twice, the GPU memory held after them (with the engine's CUDA graphs, if
on: DOCQA_CUDA_GRAPHS), and the cProfile tables (internal time, cumulative) of 12 asks
with BSBR and with FAISS. On a GPU the clock waits for the device before it stops.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from app import DocQA
from scripts.book_latency import QUESTIONS


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _latency(qa: DocQA, methods: list[str], repeat: int = 2) -> tuple[float, float]:
    times = []
    for question in QUESTIONS:
        for _ in range(repeat):
            _sync()
            start = time.perf_counter()
            qa.ask(question, methods=methods)
            _sync()
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return round(statistics.median(times), 1), round(times[int(0.95 * len(times)) - 1], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdf", default="assets/pride_and_prejudice.pdf")
    parser.add_argument("--home", default="/tmp/qprof", help="three fresh homes are made under it")
    args = parser.parse_args()
    start = time.perf_counter()
    qa = DocQA(home=Path(args.home) / "h1")
    print("load", round(time.perf_counter() - start, 2), qa.device, flush=True)
    for name in ("h1", "h2", "h3"):
        other = qa if name == "h1" else DocQA(home=Path(args.home) / name)
        start = time.perf_counter()
        report = other.ingest(args.pdf)
        print("ingest", name, round(time.perf_counter() - start, 2), json.dumps(report.timings), flush=True)
    qa.ask(QUESTIONS[0], methods=qa.methods)  # warm-up
    for methods in [[m] for m in qa.methods] + [list(qa.shown)]:
        _latency(qa, methods, 1)
        print("wall", ",".join(methods), _latency(qa, methods), flush=True)
    if torch.cuda.is_available():
        mib = 2**20
        print(
            "cuda MiB allocated", round(torch.cuda.memory_allocated() / mib),
            "peak", round(torch.cuda.max_memory_allocated() / mib),
            "reserved", round(torch.cuda.memory_reserved() / mib),
            "graphs", sum(not isinstance(g, int) for _, gs in qa.engine._graphs.values() for g in gs.values())
            if qa.engine else 0,
            flush=True,
        )  # fmt: skip
    for method in [m for m in ("bsbr", "faiss") if m in qa.methods]:
        profile = cProfile.Profile()
        profile.enable()
        for question in QUESTIONS * 2:
            qa.ask(question, methods=[method])
        _sync()
        profile.disable()
        for order, rows in (("tottime", 25), ("cumulative", 30)):
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats(order).print_stats(rows)
            print("PROFILE", method, order, out.getvalue(), flush=True)


if __name__ == "__main__":
    main()
