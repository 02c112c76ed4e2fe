"""Ingest a whole folder on several processes: `torchrun --nproc_per_node=N -m app ingest-many FOLDER`.

Each rank takes every N-th file of the sorted list (file i goes to rank i % N) and runs the normal
per-document pipeline on its own device (DocQA.ingest: extract, chunk, FAISS embed, BSBR pass) into ONE
store under DOCQA_HOME. That is safe on one host: document ids are content hashes and a file lives on one
rank only, SQLite runs in WAL mode with a 30 s busy timeout, and a document's rows commit in one
transaction after its arrays are in place. Every rank opens the store before any rank writes (a barrier),
because opening it clears staging folders. Files already in the store are skipped, so a rerun after an
interruption redoes only unfinished documents.

Then rank 0 merges every stored document's chunk vectors (read back from its faiss.index) into one
library index, LIBRARY_INDEX (flat, or IVF from ingest.faiss_index.IVF_THRESHOLD vectors on), and
LIBRARY_MAP, JSON: {"format": "docqa-library", "version": 1, "kind": "flat"|"ivf", "rows": n,
"documents": [{"doc_id": id, "first_row": r, "chunks": c}, ...]}, documents sorted by id. Row r belongs
to the document with first_row <= r < first_row + chunks, and is its chunk r - first_row.

Without torchrun it runs as one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LIBRARY_INDEX = "library.faiss"
LIBRARY_MAP = "library.json"
LIBRARY_VERSION = 1


@dataclass
class RankResult:
    """What one rank did with its share of the folder."""

    new: list[dict] = field(default_factory=list)  # IngestReport.to_json() of the documents it added
    skipped: list[str] = field(default_factory=list)  # files already stored
    failed: list[str] = field(default_factory=list)  # "file: error" lines
    seconds: float = 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder")
    p.add_argument("--glob", default="*.pdf", help="which files of the folder (default *.pdf)")
    p.add_argument("--index", default="auto", choices=("auto", "flat", "ivf"), help="library index kind")
    p.add_argument("--json", action="store_true")


def shard(files: list[Path], rank: int, world: int) -> list[Path]:
    """File i of the sorted list goes to rank i % world."""
    return sorted(files)[rank::world]


def ingest_share(qa, files: list[Path], owner: str = "local") -> RankResult:
    """Ingest this rank's files; already stored ones are skipped (resume), bad ones reported."""
    from app.docqa import file_id
    from ingest.errors import IngestError

    result, start = RankResult(), time.perf_counter()
    for path in files:
        try:
            doc_id = file_id(path)
            if qa.store.has(doc_id):
                qa.store.add_owner(doc_id, owner)
                result.skipped.append(str(path))
                continue
            report = qa.ingest(path, owner=owner)
        except IngestError as err:
            result.failed.append(str(err))
            continue
        if report.new:
            result.new.append(report.to_json())
        else:  # the same bytes under another name, stored meanwhile
            result.skipped.append(str(path))
    result.seconds = time.perf_counter() - start
    return result


def build_library(store, kind: str = "auto") -> dict:
    """Merge every stored document's FAISS vectors into LIBRARY_INDEX + LIBRARY_MAP under store.home."""
    from app.retrievers import FAISS_FILE
    from ingest import faiss_index

    parts, documents, row = [], [], 0
    for info in sorted(store.list(), key=lambda d: d.id):
        vectors = faiss_index.all_vectors(faiss_index.load_index(store.artifact_path(info.id, FAISS_FILE)))
        parts.append(vectors)
        documents.append({"doc_id": info.id, "first_row": row, "chunks": len(vectors)})
        row += len(vectors)
    if not parts:
        return {"kind": None, "rows": 0, "documents": 0}
    index = faiss_index.build_library_index(np.concatenate(parts), kind=kind)
    kind = "ivf" if hasattr(index, "nlist") else "flat"
    mapping = {"format": "docqa-library", "version": LIBRARY_VERSION, "kind": kind, "rows": row}
    mapping["documents"] = documents
    home = Path(store.home)
    faiss_index.save_index(index, home / f"{LIBRARY_INDEX}.tmp")
    (home / f"{LIBRARY_MAP}.tmp").write_text(json.dumps(mapping, indent=1))
    os.replace(home / f"{LIBRARY_INDEX}.tmp", home / LIBRARY_INDEX)
    os.replace(home / f"{LIBRARY_MAP}.tmp", home / LIBRARY_MAP)
    return {"kind": kind, "rows": row, "documents": len(documents)}


def summary(results: list[RankResult], seconds: float, library: dict) -> dict:
    new = [r for result in results for r in result.new]
    tokens = sum(r["tokens"] for r in new)
    return {
        "ranks": len(results),
        "new": len(new),
        "skipped": sum(len(r.skipped) for r in results),
        "failed": [f for r in results for f in r.failed],
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "documents_per_s": round(len(new) / seconds, 3) if seconds else None,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "library": library,
        "documents": new,
    }


def run(args: argparse.Namespace) -> int:
    """The ingest-many command on this rank; rank 0 prints the summary. Exit 1 if any file failed."""
    import torch.distributed as dist

    from app.docqa import DocQA
    from model.train import setup_distributed

    rank, world = setup_distributed()
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if world > 1 and _cuda() else None
    qa = DocQA(device=device)
    start = time.perf_counter()
    if world > 1:
        dist.barrier()  # every rank has opened (and recovered) the store before anyone writes
    result = ingest_share(qa, shard(list(folder.glob(args.glob)), rank, world))
    results = [result]
    if world > 1:
        results = [None] * world
        dist.all_gather_object(results, result)
    library = build_library(qa.store, args.index) if rank == 0 else {}
    seconds = time.perf_counter() - start
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return 0
    out = summary(results, seconds, library)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{out['new']} new, {out['skipped']} already stored, {len(out['failed'])} failed on {world} "
            f"rank(s) in {seconds:.1f}s: {out['documents_per_s']} documents/s, {out['tokens_per_s']} "
            f"tokens/s; library index: {library['rows']} chunks of {library['documents']} documents "
            f"({library['kind']})"
        )
    for line in out["failed"]:
        print(f"error: {line}", file=sys.stderr)
    return 1 if out["failed"] else 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
