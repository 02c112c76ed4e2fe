"""Ingest the sample book and time questions on it with every method (CPU or GPU, whatever DocQA picks).

    python -m scripts.book_latency [--pdf assets/pride_and_prejudice.pdf] [--repeat 3] [--json OUT]

Prints the ingest stage timings and, per method, p50/p95 question latency over the book questions below
(each asked --repeat times after one warm-up question), with the first answer and its page.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from app import DocQA
from app.metrics import percentile

QUESTIONS = [
    "What estate has been let at last?",
    "Who is Mr. Darcy's friend who rents Netherfield?",
    "Who does Elizabeth marry?",
    "Where does Mr. Collins live?",
    "Whom does Lydia run away with?",
    "What is the name of Mr. Darcy's estate?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdf", default="assets/pride_and_prejudice.pdf")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    qa = DocQA()
    start = time.perf_counter()
    report = qa.ingest(args.pdf)
    result = {
        "device": qa.device,
        "ingest": report.to_json(),
        "ingest_wall_s": time.perf_counter() - start,
        "methods": {},
    }
    print(json.dumps(result["ingest"]), flush=True)
    qa.ask(QUESTIONS[0], methods=qa.methods)  # warm-up: loads caches and models
    for method in qa.methods:
        latencies, answers = [], []
        for question in QUESTIONS:
            for _ in range(args.repeat):
                [answer] = qa.ask(question, methods=[method])
                latencies.append(answer.latency_ms)
            page = answer.evidence[0].answer_page if answer.evidence else None
            answers.append(
                {"question": question, "answer": answer.answer, "abstained": answer.abstained, "page": page}
            )
        result["methods"][method] = {
            "latency_ms_p50": percentile(latencies, 50),
            "latency_ms_p95": percentile(latencies, 95),
            "answers": answers,
        }
        print(
            method,
            f"p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms",
            flush=True,
        )
        for a in answers:
            print(f"   {a['question']} -> {a['answer']!r} (page {a['page']}, abstained {a['abstained']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
