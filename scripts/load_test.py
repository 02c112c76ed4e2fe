"""Load test: start the app, drive it with N concurrent gradio_client clients, report errors, latency
and memory, stop it.

The server is `python -m app serve` on 127.0.0.1 and a free port, with DOCQA_HOME and GRADIO_TEMP_DIR
in a temporary folder (or --home). It pre-ingests the sample novel at start-up; the load starts once
that is done (--no-wait-sample starts at once), so the numbers are those of a warm server.

Each client is its own Gradio session. It uploads one small document of its own through the "add"
endpoint, then asks about it through "ask" until the time is up; every --upload-every-th client also
uploads a fresh document between questions. Every answer is checked: evidence only from the client's
own documents (sessions are isolated) and the client's fact in the top passage. Everything is bounded:
loopback only, --clients threads, --seconds of load, --max-requests per client, --request-timeout.

    python -m scripts.load_test --clients 16 --seconds 120 [--think 10] [--json runs/load.json]

--think makes each client pause as a reader would between an answer and its next question (a mean of
--think seconds); without it every client asks again the moment it has its answer, the worst case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SAMPLE_FILE = "pride_and_prejudice.pdf"
MAX_CLIENTS = 64
WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help=f"concurrent clients (1-{MAX_CLIENTS})")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--upload-every", type=int, default=4, help="every k-th client also uploads")
    parser.add_argument("--max-requests", type=int, default=1000, help="per client")
    parser.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="mean seconds a client reads an answer before its next request (each pause drawn from "
        "0.5-1.5 x this, seeded per client; 0: back-to-back requests, the worst case)",
    )
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="server start + sample ingest")
    parser.add_argument("--home", type=Path, default=None, help="DOCQA_HOME (default: a new temp folder)")
    parser.add_argument("--no-wait-sample", action="store_true", help="do not wait for the sample ingest")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be in 1..{MAX_CLIENTS}")
    if args.think < 0:
        parser.error("--think must be at least 0")
    return args


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# The server


@contextlib.contextmanager
def running_server(home: Path, startup_timeout: float, wait_sample: bool) -> Iterator[tuple[str, int]]:
    """Start `python -m app serve`, wait until it answers (and the sample is stored); yields (url, pid)."""
    port = free_port()
    env = dict(
        os.environ,
        DOCQA_HOME=str(home),
        GRADIO_TEMP_DIR=str(home / "uploads"),
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", HOST, "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{HOST}:{port}/"
    try:
        deadline = time.monotonic() + startup_timeout
        wait_until(lambda: responds(url), deadline, server, "the server to answer")
        if wait_sample:
            wait_until(lambda: sample_stored(home), deadline, server, "the sample pre-ingest")
        yield url, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def wait_until(ready, deadline: float, server: subprocess.Popen, what: str) -> None:
    while not ready():
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(1.0)


def responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "config", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def sample_stored(home: Path) -> bool:
    db = home / "store.sqlite3"
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            row = conn.execute("SELECT 1 FROM documents WHERE filename=?", (SAMPLE_FILE,)).fetchone()
    except sqlite3.Error:
        return False
    return row is not None


class MemorySampler(threading.Thread):
    """The server's resident memory (/proc), sampled every half second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self.stop = threading.Event()

    def rss_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(OSError):
                self.samples.append(self.rss_mib())


# The clients


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    answer_misses: Counter = field(default_factory=Counter)  # quality, not errors: fact not in top 3
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, endpoint: str, seconds: float) -> None:
        with self.lock:
            self.latencies[endpoint].append(seconds)

    def error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{kind}: {detail[:300]}")


def client_fact(client: int, n: int) -> tuple[str, str, str]:
    """(text, question, answer word) unique to one client's n-th document."""
    word = f"{WORDS[(client + n) % len(WORDS)]}{client}x{n}"
    # Unique per client for its first 100 documents (a 2-minute run uploads fewer than 50 each).
    cabinet = " ".join(WORDS[i % len(WORDS)].capitalize() for i in (client, n, n // len(WORDS)))
    text = (
        f"Field notes of client {client}, document {n}. The code of the {cabinet} cabinet is {word}. "
        "The rest of these notes describe the weather, the tides and the boats in the harbour, so that "
        "the document is more than one sentence long."
    )
    return text, f"What is the code of the {cabinet} cabinet?", word


def run_client(
    url: str, index: int, args: argparse.Namespace, deadline: float, folder: Path, results: Results
) -> None:
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
    except Exception as err:  # noqa: BLE001 - every failure is a finding of the load test
        results.error("connect", repr(err))
        return
    uploads = args.upload_every > 0 and index % args.upload_every == 0
    pauses = random.Random(index)
    mine: set[str] = set()
    question, word = "", ""
    for n in range(args.max_requests):
        if n > 0 and args.think:
            time.sleep(args.think * pauses.uniform(0.5, 1.5))
        if time.monotonic() > deadline and n > 0:
            break
        if n == 0 or (uploads and n % 2 == 0):
            text, question, word = client_fact(index, n)
            path = folder / f"client {index} doc {n} ü.txt"  # spaces and Unicode in every upload name
            path.write_text(text, encoding="utf-8")
            doc_id = call(
                results, "add", lambda p=path: client.predict([handle_file(str(p))], api_name="/add")
            )
            if isinstance(doc_id, list):
                if len(doc_id) != 1 or "error" in doc_id[0]:
                    results.error("add-refused", json.dumps(doc_id))
                else:
                    mine.add(doc_id[0]["doc_id"])
            continue
        answer = call(results, "ask", lambda q=question: client.predict(q, None, 3, api_name="/ask"))
        if isinstance(answer, dict):
            check_answer(answer, mine, word, results)


def call(results: Results, endpoint: str, request):
    start = time.perf_counter()
    try:
        out = request()
    except Exception as err:  # noqa: BLE001 - every failure is a finding of the load test
        results.error(f"{endpoint}-exception", f"{type(err).__name__}: {err}")
        return None
    results.record(endpoint, time.perf_counter() - start)
    return out


def check_answer(answer: dict, mine: set[str], word: str, results: Results) -> None:
    """Evidence from another session's document is an error; the fact missing from the top passages is
    a quality miss, counted apart."""
    for method in answer.get("answers", []):
        seen = {e.get("doc_id") for e in method.get("evidence", [])}
        if not seen <= mine:
            results.error("isolation", f"{method['method']} showed {seen - mine}")
        elif word not in " ".join(e["text"] for e in method.get("evidence", [])):
            with results.lock:
                results.answer_misses[method["method"]] += 1


def upload_traversal_probe(url: str, home: Path) -> str:
    """POST a file named ../../../escape-probe.txt to Gradio's upload route; it must land inside
    GRADIO_TEMP_DIR under a sanitised name. Returns "ok" or what went wrong."""
    boundary = "loadtestboundary"
    disposition = 'form-data; name="files"; filename="../../../escape-probe.txt"'
    body = (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: text/plain\r\n\r\n"
        f"probe\r\n--{boundary}--\r\n"
    ).encode()
    request = urllib.request.Request(
        url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            stored = json.loads(response.read())
    except OSError as err:
        return f"ok (refused: {err})"
    landed = Path(stored[0]).resolve()
    uploads = (home / "uploads").resolve()
    escaped = [p for p in (home, home.parent, home.parent.parent) if (p / "escape-probe.txt").exists()]
    if not landed.is_relative_to(uploads) or escaped or landed.name != "escape-probe.txt":
        return f"FAILED: stored at {landed}, escaped to {escaped}"
    return "ok"


# The report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def summarize(results: Results, args: argparse.Namespace, seconds: float, memory: MemorySampler) -> dict:
    endpoints = {
        name: {
            "requests": len(v),
            "p50_s": round(percentile(v, 50), 3),
            "p95_s": round(percentile(v, 95), 3),
            "max_s": round(max(v), 3),
            "per_s": round(len(v) / seconds, 2),
        }
        for name, v in sorted(results.latencies.items())
    }
    return {
        "clients": args.clients,
        "think_s": args.think,
        "uploading_clients": len(
            [i for i in range(args.clients) if args.upload_every and i % args.upload_every == 0]
        ),
        "load_seconds": round(seconds, 1),
        "errors": sum(results.errors.values()),
        "errors_by_kind": dict(results.errors),
        "error_examples": results.examples,
        "answer_misses": dict(results.answer_misses),
        "endpoints": endpoints,
        "server_rss_mib": {
            "start": round(memory.samples[0]) if memory.samples else None,
            "max": round(max(memory.samples)) if memory.samples else None,
            "end": round(memory.samples[-1]) if memory.samples else None,
        },
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        home = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="docqa-load-")))
        home.mkdir(parents=True, exist_ok=True)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="docqa-load-docs-")))
        started = time.monotonic()
        url, pid = stack.enter_context(running_server(home, args.startup_timeout, not args.no_wait_sample))
        print(f"server ready at {url} (pid {pid}) after {time.monotonic() - started:.0f} s", file=sys.stderr)
        memory = MemorySampler(pid)
        memory.start()
        results = Results()
        start = time.monotonic()
        deadline = start + args.seconds
        threads = [
            threading.Thread(target=run_client, args=(url, i, args, deadline, folder, results), daemon=True)
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()) + args.request_timeout)
        hung = sum(t.is_alive() for t in threads)
        if hung:
            results.error("hung-client", f"{hung} clients still waiting at the end")
        seconds = time.monotonic() - start
        memory.stop.set()
        report = summarize(results, args, seconds, memory)
        report["server_startup_s"] = round(start - started, 1)
        report["upload_traversal_probe"] = upload_traversal_probe(url, home)
        with contextlib.suppress(OSError):
            report["server_rss_mib"]["peak"] = round(memory.rss_mib("VmHWM"))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["errors"] == 0 and report["upload_traversal_probe"].startswith("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
