"""Command line: python -m app {ingest, ask, list, delete, eval, serve}. Errors are one line, exit code 1."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from app import methods as registry
from ingest.errors import IngestError
from ingest.store import StoreError

_STAGE_NAMES = {"extract": "extract pages", "chunk": "chunk", "embed": "FAISS embed", "bsbr": "BSBR pass"}


class StageBars:
    """tqdm bars on stderr, one per ingest stage, fed by DocQA's progress callback."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(
                total=total, desc=_STAGE_NAMES.get(stage, stage), file=sys.stderr, leave=False, unit="it"
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="BSBR DocQA: ask long documents.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help="add PDF/TXT/MD files to the store")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--password", default=None, help="password for encrypted PDFs")
    p = sub.add_parser("ask", help="ask a question of documents (file paths or doc ids, or all)")
    p.add_argument(
        "docs",
        nargs="+",
        metavar="DOC",
        help="file paths (ingested on first use) or doc ids; 'all': every stored one",
    )
    p.add_argument("question")
    p.add_argument(
        "--method",
        default=None,
        help=f"one or several (comma-separated) of {', '.join(registry.NAMES)}; both (bsbr,faiss) or all; "
        "default both (faiss alone without trained weights)",
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("list", help="list stored documents")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("delete", help="delete stored documents")
    p.add_argument("doc_ids", nargs="+")
    p = sub.add_parser("serve", help="start the web app")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    from app.ingest_many import add_arguments

    add_arguments(sub.add_parser("ingest-many", help="ingest a folder on all torchrun ranks + library index"))
    from app.evaluate import add_eval_arguments

    add_eval_arguments(sub.add_parser("eval", help="long-document QA benchmark"))
    return parser


def _methods(choice: str | None, available: Sequence[str]) -> list[str]:
    if choice is None:
        return ["bsbr", "faiss"] if "bsbr" in available else ["faiss"]
    if choice == "both":
        return ["bsbr", "faiss"]
    if choice == "all":
        return list(available)
    return [m.strip() for m in choice.split(",") if m.strip()]


def cmd_ingest(qa, args) -> int:
    reports, failed = [], 0
    for name in args.files:
        bars = StageBars()
        try:
            reports.append(qa.ingest(name, progress=bars, password=args.password))
        except IngestError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr)
        finally:
            bars.close()
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        for r in reports:
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items())
            state = "new" if r.new else "already stored"
            print(
                f"{r.doc_id}  {r.filename}: {r.pages} pages, {r.tokens:,} tokens, {r.chunks} chunks, "
                f"{r.seconds:.2f}s ({state}; {stages})"
            )
            for w in r.warnings:
                print(f"  warning: {w}")
    return 1 if failed else 0


def cmd_ask(qa, args) -> int:
    every = args.docs == ["all"] and not Path("all").exists()
    doc_ids = None if every else [qa.resolve(d, progress=StageBars(enabled=not args.json)) for d in args.docs]
    answers = qa.ask(args.question, docs=doc_ids, methods=_methods(args.method, qa.methods), top_k=args.top_k)
    if args.json:
        print(json.dumps({"question": args.question, "answers": [a.to_json() for a in answers]}, indent=2))
        return 0
    for a in answers:
        shown = "(abstains) " + a.message if a.abstained else a.answer
        if not a.abstained and a.evidence and a.evidence[0].answer_page is not None:
            top = a.evidence[0]
            shown += (
                f" ({top.title}, p. {top.answer_page})"
                if len(doc_ids or [0, 0]) > 1
                else f" (p. {top.answer_page})"
            )
        print(f"[{a.method}] {shown}   score {a.score:.3f}, {a.latency_ms:.0f} ms")
        for e in a.evidence[:3]:
            pages = f"p. {e.page_start}" if e.page_start == e.page_end else f"pp. {e.page_start}-{e.page_end}"
            if len(doc_ids or [None, None]) > 1:
                pages = f"{e.title}, {pages}"
            snippet = " ".join(e.text.split())[:160]
            print(f"    {pages} ({e.score:.3f}): {snippet}...")
    return 0


def cmd_list(qa, args) -> int:
    docs = qa.documents()
    if args.json:
        print(json.dumps([d.__dict__ for d in docs], indent=2))
    for d in docs if not args.json else []:
        print(f"{d.id}  {d.filename}: {d.n_pages} pages, {d.n_tokens:,} tokens, {d.n_chunks} chunks")
    return 0


def cmd_delete(qa, args) -> int:
    for doc_id in args.doc_ids:
        qa.delete(doc_id)
        print(f"deleted {doc_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from app.serve import serve

            return serve(host=args.host, port=args.port)
        if args.command == "ingest-many":
            from app.ingest_many import run

            return run(args)
        if args.command == "eval":
            from app.evaluate import run_eval

            return run_eval(args)
        from app.docqa import DocQA

        qa = DocQA()
        return {"ingest": cmd_ingest, "ask": cmd_ask, "list": cmd_list, "delete": cmd_delete}[args.command](
            qa, args
        )
    except (IngestError, StoreError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
