"""The long fuzz run over the ingestion entry point (the CI run is tests/robustness/test_fuzz.py).

Same seeds, mutations and property as the CI tests, driven by a seeded random loop for a fixed time
so that the number of iterations is known: each iteration mutates a seed document (or makes random
bytes) and runs extract + chunking on it; every --docqa-every-th input that extracts also goes through
the whole DocQA.ingest + ask (models, store) in a temporary DOCQA_HOME. A failing input is saved
under --crash-dir with its traceback, and the run goes on. Prints a JSON summary.

    python -m scripts.fuzz_ingest --seconds 600 --seed 1 [--docqa-every 200] [--crash-dir runs/fuzz]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the import below loads transformers

from tests.robustness.test_fuzz import check_input, mutate, seeds  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=1, help="random seed (the run is reproducible)")
    parser.add_argument("--docqa-every", type=int, default=200, help="0 turns the full-ingest check off")
    parser.add_argument("--crash-dir", type=Path, default=REPO_ROOT / "runs" / "fuzz")
    return parser.parse_args()


def next_input(rng: random.Random) -> tuple[str, str, bytes]:
    """(seed name, suffix, bytes): mostly a mutated seed, sometimes random bytes."""
    if rng.random() < 0.1:
        suffix = rng.choice([".pdf", ".txt", ".md"])
        return "random", suffix, rng.randbytes(rng.randint(0, 4096))
    name = rng.choice(sorted(seeds()))
    suffix, data = seeds()[name]
    return name, suffix, mutate(rng, data, rng.randint(1, 16))


class FullIngest:
    """DocQA.ingest + ask on inputs that extract, in a throw-away store (models loaded once)."""

    def __init__(self) -> None:
        import dataclasses

        from app.docqa import DocQA
        from app.settings import Settings

        self.home = tempfile.mkdtemp(prefix="fuzz-home-")
        settings = dataclasses.replace(
            Settings.from_env(), home=Path(self.home), device="cpu", max_pages=200, max_chars=2_000_000
        )
        self.qa = DocQA(settings=settings)

    def check(self, path: Path) -> None:
        from ingest.errors import IngestError

        try:
            report = self.qa.ingest(path, owner="fuzz")
        except IngestError as err:
            assert "\n" not in str(err)
            return
        self.qa.ask(
            "What is this document about?", docs=[report.doc_id], methods=self.qa.methods, owner="fuzz"
        )
        self.qa.delete(report.doc_id, owner="fuzz")
        assert list(self.qa.store.tmp_dir.iterdir()) == []


def save_crash(crash_dir: Path, iteration: int, suffix: str, data: bytes, error: BaseException) -> Path:
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"crash-{iteration:07d}{suffix}"
    path.write_bytes(data)
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    path.with_name(path.name + ".txt").write_text(text)
    return path


def main() -> int:
    args = parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-"))
    full = FullIngest() if args.docqa_every else None
    outcomes: collections.Counter[str] = collections.Counter()
    crashes: list[str] = []
    slowest = 0.0
    n_full = 0
    start = time.perf_counter()
    iteration = 0
    while time.perf_counter() - start < args.seconds:
        iteration += 1
        seed_name, suffix, data = next_input(rng)
        path = scratch / f"input{suffix}"
        path.write_bytes(data)
        t = time.perf_counter()
        try:
            outcome = check_input(path)
            if full is not None and outcome == "ok" and iteration % args.docqa_every == 0:
                full.check(path)
                n_full += 1
        except BaseException as error:  # every failure is a finding: record it and go on
            if isinstance(error, KeyboardInterrupt):
                break
            outcome = f"CRASH {type(error).__name__}"
            crashes.append(str(save_crash(args.crash_dir, iteration, suffix, data, error)))
            print(
                f"crash at iteration {iteration} ({seed_name}): {type(error).__name__}: {error}",
                file=sys.stderr,
            )
        slowest = max(slowest, time.perf_counter() - t)
        outcomes[outcome] += 1
    summary = {
        "iterations": iteration,
        "seconds": round(time.perf_counter() - start, 1),
        "seed": args.seed,
        "full_ingests": n_full,
        "slowest_input_s": round(slowest, 2),
        "outcomes": dict(outcomes.most_common()),
        "crashes": crashes,
    }
    print(json.dumps(summary, indent=2))
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
