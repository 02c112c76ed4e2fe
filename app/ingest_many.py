"""Ingest a whole folder on several processes: `torchrun --nproc_per_node=N -m app ingest-many FOLDER`.

Each rank takes every N-th file of the sorted list (file i goes to rank i % N) and runs the normal
per-document pipeline (ingest/pipeline.py: extract, chunk, FAISS embed, BSBR pass) on its own device into ONE
store under DOCQA_HOME. That is safe on one host: document ids are content hashes and a file lives on one
rank only, SQLite runs in WAL mode with a 30 s busy timeout, and a document's rows commit in one
transaction after its arrays are in place. Every rank opens the store before any rank writes (a barrier),
because opening it clears staging folders. Files already in the store are skipped, so a rerun after an
interruption redoes only unfinished documents.

Then rank 0 merges every stored document's window vectors (read back from its faiss.index; several per
chunk) into one library index, LIBRARY_INDEX (flat, or IVF from ingest.faiss_index.IVF_THRESHOLD
vectors on), and LIBRARY_MAP, JSON: {"format": "docqa-library", "version": 2, "kind": "flat"|"ivf",
"rows": n, "vectors": v, "documents": [{"doc_id": id, "first_row": r, "chunks": c, "first_vector": f,
"vectors": w}, ...]}, documents sorted by id. A search returns rows (the same row once per matching
window); row r belongs to the document with first_row <= r < first_row + chunks, and is its chunk
r - first_row. The library build uses every core (faiss's OpenMP threads), also under torchrun, which
starts its processes with OMP_NUM_THREADS=1.

With --workers W (default: the host's cores shared by its local ranks, one left to each rank's own
process), each rank runs the CPU stages of its upcoming files (size check, extract + clean, chunk) in W
worker processes, at most 2W files ahead, while its own process runs the GPU stages (FAISS embedding,
BSBR pass) and the store write of the files whose CPU stage is done, in file order: on a book the CPU
stages take ~2 s and the GPU stages a fraction of that, so one process per rank would leave its GPU
idle. The workers fork from a forkserver, a fresh process that holds no CUDA state. --workers 0 runs
every stage in the rank's process (DocQA.ingest). Both give the same document ids, chunks and vectors.

Without torchrun it runs as one process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.settings import Settings
from app.types import IngestReport
from ingest.pipeline import Prepared

LIBRARY_INDEX = "library.faiss"
LIBRARY_MAP = "library.json"
LIBRARY_VERSION = 2  # 2: several vectors (windows) per chunk; searches can repeat a row


@dataclass
class RankResult:
    """What one rank did with its share of the folder."""

    new: list[dict] = field(default_factory=list)  # IngestReport.to_json() of the documents it added
    skipped: list[str] = field(default_factory=list)  # files already stored
    failed: list[str] = field(default_factory=list)  # "file: error" lines
    seconds: float = 0.0
    workers: int = 0  # CPU-stage worker processes (0: every stage in the rank's process)
    wait_seconds: float = 0.0  # the rank's process idle, waiting for a worker's file
    setup_seconds: float = 0.0  # models loaded and workers started, before the clock
    tick: Callable[[], object] | None = field(default=None, repr=False, compare=False)  # one file done


@dataclass
class PreparedFile:
    """A file after the pipeline's CPU stages (ingest.pipeline.prepare_file), as a worker hands it back:
    the prepared document, or the one-line error that stopped it."""

    path: str
    prepared: Prepared | None = None
    error: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder")
    p.add_argument("--glob", default="*.pdf", help="which files of the folder (default *.pdf)")
    p.add_argument("--index", default="auto", choices=("auto", "flat", "ivf"), help="library index kind")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU-stage worker processes per rank (default: cores / local ranks - 1, at least 1; "
        "0: every stage in the rank's process)",
    )
    p.add_argument("--json", action="store_true")


def shard(files: list[Path], rank: int, world: int) -> list[Path]:
    """File i of the sorted list goes to rank i % world."""
    return sorted(files)[rank::world]


def default_workers() -> int:
    """This host's cores shared by its local ranks (torchrun's LOCAL_WORLD_SIZE), one left to each
    rank's own process; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """`workers` processes for the CPU stages (None when 0). They fork from a forkserver, a fresh
    process that imported this module, never from the caller, which may hold CUDA state."""
    if workers < 1:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(workers, mp_context=context, initializer=warm_worker) as pool:
        yield pool


def warm_worker() -> int:
    """Load the tokenizer once per worker (also a no-op task that waits for a worker to be up)."""
    from ingest.tokenizer import load_tokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    load_tokenizer()
    return os.getpid()


def prepare_file(path: Path, doc_id: str, settings: Settings) -> PreparedFile:
    """The pipeline's CPU stages for one file (the same function DocQA.ingest runs), in a worker.

    IngestErrors come back as their line: their two-argument __init__ does not survive pickling.
    """
    from ingest.errors import IngestError
    from ingest.pipeline import prepare_file as prepare

    try:
        return PreparedFile(str(path), prepare(path, settings, doc_id=doc_id))
    except IngestError as err:
        return PreparedFile(str(path), error=str(err))


def ingest_share(
    qa,
    files: list[Path],
    owner: str = "local",
    pool: ProcessPoolExecutor | None = None,
    ahead: int = 0,
    progress: bool = False,
) -> RankResult:
    """Ingest this rank's files; already stored ones are skipped (resume), bad ones reported.

    Args:
        pool: worker processes for the CPU stages (worker_pool); None: DocQA.ingest file by file.
        ahead: with a pool, the most files in the workers' hands at once (run() gives 2 x workers).
        progress: a tqdm bar on stderr, one tick per file done (stored, skipped or failed).
    """
    from tqdm import tqdm

    result, start = RankResult(), time.perf_counter()
    with tqdm(total=len(files), desc="ingest", unit="file", file=sys.stderr, disable=not progress) as bar:
        result.tick = bar.update
        if pool is None:
            _ingest_in_process(qa, files, owner, result)
        else:
            if ahead < 1:
                raise ValueError(f"ahead must be at least 1 with a worker pool, got {ahead}")
            _ingest_pipelined(qa, files, owner, pool, ahead, result)
    result.tick = None
    result.seconds = time.perf_counter() - start
    return result


def _ingest_in_process(qa, files: list[Path], owner: str, result: RankResult) -> None:
    from ingest.errors import IngestError
    from ingest.pipeline import file_id

    for path in files:
        try:
            if _claim_stored(qa, file_id(path), owner):
                _skip(result, path)
                continue
            report = qa.ingest(path, owner=owner)
        except IngestError as err:
            _fail(result, str(err))
            continue
        _record(result, path, report)


def _ingest_pipelined(
    qa, files: list[Path], owner: str, pool: ProcessPoolExecutor, ahead: int, result: RankResult
) -> None:
    """Workers prepare files in order, up to `ahead` at once; this process stores them in that order."""
    from ingest.pipeline import file_id

    todo, pending = iter(files), deque()

    def submit_ahead() -> None:
        while len(pending) < ahead and (path := next(todo, None)) is not None:
            doc_id = file_id(path)
            if _claim_stored(qa, doc_id, owner):
                _skip(result, path)
            else:
                pending.append(pool.submit(prepare_file, path, doc_id, qa.settings))

    submit_ahead()
    while pending:
        t = time.perf_counter()
        prepared: PreparedFile = pending.popleft().result()
        result.wait_seconds += time.perf_counter() - t
        submit_ahead()  # the workers start on the next file before this one's GPU stages
        if prepared.error is not None:
            _fail(result, prepared.error)
        else:
            _record(result, Path(prepared.path), qa.add_prepared(prepared.prepared, owner))


def _claim_stored(qa, doc_id: str, owner: str) -> bool:
    """True when the document is stored already (then `owner` is added to it)."""
    return qa.pipeline.claim(doc_id, owner)


def _record(result: RankResult, path: Path, report: IngestReport) -> None:
    if not report.new:  # the same bytes under another name, stored meanwhile
        _skip(result, path)
        return
    result.new.append(report.to_json())
    _tick(result)


def _skip(result: RankResult, path: Path) -> None:
    result.skipped.append(str(path))
    _tick(result)


def _fail(result: RankResult, error: str) -> None:
    result.failed.append(error)
    _tick(result)


def _tick(result: RankResult) -> None:
    if result.tick is not None:
        result.tick()


def build_library(store, kind: str = "auto") -> dict:
    """Merge every stored document's FAISS vectors into LIBRARY_INDEX + LIBRARY_MAP under store.home.

    A document's chunk c is library row first_row + c, and that row number is the search label of
    every vector of the chunk (one per window, so a search may return a row more than once: keep its
    best, as ingest.faiss_index.search does). The document's vectors are the index entries
    first_vector .. first_vector + vectors - 1.
    """
    from app.retrievers import FAISS_FILE
    from ingest import faiss_index

    parts, labels, documents, row, n_vectors = [], [], [], 0, 0
    for info in sorted(store.list(), key=lambda d: d.id):
        own = faiss_index.load_index(store.artifact_path(info.id, FAISS_FILE))
        parts.append(faiss_index.all_vectors(own))
        labels.append(row + faiss_index.chunk_ids(own))
        documents.append(
            {
                "doc_id": info.id,
                "first_row": row,
                "chunks": info.n_chunks,
                "first_vector": n_vectors,
                "vectors": len(parts[-1]),
            }
        )
        row += info.n_chunks
        n_vectors += len(parts[-1])
    if not parts:
        return {"kind": None, "rows": 0, "vectors": 0, "documents": 0}
    index = faiss_index.build_library_index(np.concatenate(parts), kind=kind, ids=np.concatenate(labels))
    kind = "ivf" if hasattr(index, "nlist") else "flat"
    mapping = {"format": "docqa-library", "version": LIBRARY_VERSION, "kind": kind, "rows": row}
    mapping |= {"vectors": n_vectors, "documents": documents}
    home = Path(store.home)
    faiss_index.save_index(index, home / f"{LIBRARY_INDEX}.tmp")
    (home / f"{LIBRARY_MAP}.tmp").write_text(json.dumps(mapping, indent=1))
    os.replace(home / f"{LIBRARY_INDEX}.tmp", home / LIBRARY_INDEX)
    os.replace(home / f"{LIBRARY_MAP}.tmp", home / LIBRARY_MAP)
    return {"kind": kind, "rows": row, "vectors": n_vectors, "documents": len(documents)}


def summary(results: list[RankResult], seconds: float, library: dict, library_seconds: float = 0.0) -> dict:
    """The run's JSON: counts, throughput over the whole clock (`seconds`), each rank's own loop time
    (`rank_seconds`: its share of the files, before the results are gathered) and rank 0's library index
    build time (`library_seconds`)."""
    new = [r for result in results for r in result.new]
    tokens = sum(r["tokens"] for r in new)
    stages: dict[str, float] = {}
    for report in new:  # summed over documents, so with workers they add up to more than `seconds`
        for stage, s in report["timings"].items():
            stages[stage] = stages.get(stage, 0.0) + s
    stages["wait"] = sum(r.wait_seconds for r in results)
    return {
        "ranks": len(results),
        "workers": [r.workers for r in results],
        "new": len(new),
        "skipped": sum(len(r.skipped) for r in results),
        "failed": [f for r in results for f in r.failed],
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "setup_seconds": round(max(r.setup_seconds for r in results), 3),
        "rank_seconds": [round(r.seconds, 3) for r in results],
        "library_seconds": round(library_seconds, 3),
        "documents_per_s": round(len(new) / seconds, 3) if seconds else None,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        "library": library,
        "documents": new,
    }


def run(args: argparse.Namespace) -> int:
    """The ingest-many command on this rank; rank 0 prints the summary. Exit 1 if any file failed."""
    import torch.distributed as dist

    from model.train.distributed import setup_distributed

    workers = default_workers() if args.workers is None else args.workers
    if workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")
    rank, world = setup_distributed()
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    with worker_pool(workers) as pool:
        qa, setup = _start(pool, workers, world)
        start = time.perf_counter()
        if world > 1:
            dist.barrier()  # every rank has opened (and recovered) the store before anyone writes
        files = shard(list(folder.glob(args.glob)), rank, world)
        result = ingest_share(qa, files, pool=pool, ahead=2 * workers, progress=rank == 0)
    result.workers, result.setup_seconds = workers, setup
    results = [result]
    if world > 1:
        results = [None] * world
        dist.all_gather_object(results, result)
    library, library_seconds = {}, 0.0
    if rank == 0:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)  # torchrun set 1 (IVF of 107k vectors: 39 s on 1 core)
        t = time.perf_counter()
        library = build_library(qa.store, args.index)
        library_seconds = time.perf_counter() - t
    seconds = time.perf_counter() - start
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return 0
    out = summary(results, seconds, library, library_seconds)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{out['new']} new, {out['skipped']} already stored, {len(out['failed'])} failed on {world} "
            f"rank(s) with {workers} workers each in {seconds:.1f}s: {out['documents_per_s']} documents/s, "
            f"{out['tokens_per_s']} tokens/s; library index: {library['rows']} chunks of "
            f"{library['documents']} documents ({library['kind']})"
        )
    for line in out["failed"]:
        print(f"error: {line}", file=sys.stderr)
    return 1 if out["failed"] else 0


def _start(pool: ProcessPoolExecutor | None, workers: int, world: int):
    """(DocQA, seconds): the models load while the workers start; both are ready before the clock."""
    from app.docqa import DocQA

    t = time.perf_counter()
    warming = [pool.submit(warm_worker) for _ in range(workers)] if pool is not None else []
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if world > 1 and _cuda() else None
    qa = DocQA(device=device)
    for future in warming:
        future.result()
    return qa, time.perf_counter() - t


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
