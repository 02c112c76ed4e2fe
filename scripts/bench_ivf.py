"""Recall@10 and query time of the library IVF index vs the exact flat index, on the same vectors.

    python -m scripts.bench_ivf                       # real vectors only
    python -m scripts.bench_ivf --scale 100000 200000 # plus larger sets grown from them (see below)

Database: all-MiniLM-L6-v2 embeddings of the SQuAD v1.1 dev paragraphs (../shared/data/squad-v1.1,
2,067 paragraphs) and of the chunks of Pride and Prejudice (../shared/data/books, chunked like ingest).
Queries: SQuAD dev questions (--queries of them, seeded). Ground truth: the flat index's top 10.
--scale N grows the database to N vectors by adding noisy copies of the real ones (Gaussian noise,
renormalised), a stand-in for a large library when embedding one is too slow on a small CPU; those rows
are marked "grown". Embeddings are cached as .npy in --cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from pathlib import Path

import numpy as np

from ingest.faiss_index import build_library_index

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def texts(n_queries: int, seed: int) -> tuple[list[str], list[str]]:
    from ingest.chunk import chunk_document
    from ingest.types import ParsedDocument

    squad = json.loads(gzip.decompress((DATA / "squad-v1.1" / "dev-v1.1.json.gz").read_bytes()))
    paragraphs = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    questions = [q["question"] for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]]
    book = (DATA / "books" / "pride_and_prejudice.txt").read_text()
    parsed = ParsedDocument(path="book.txt", title="book", text=book, page_starts=[0], n_pages=1)
    chunks = [c.text for c in chunk_document(parsed)]
    return paragraphs + chunks, random.Random(seed).sample(questions, n_queries)


def embeddings(cache: Path, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    db_file, q_file = cache / "db.npy", cache / f"queries_{n_queries}_{seed}.npy"
    if not (db_file.exists() and q_file.exists()):
        from model.embed import SentenceEmbedder

        database, queries = texts(n_queries, seed)
        embedder = SentenceEmbedder("cpu")
        cache.mkdir(parents=True, exist_ok=True)
        np.save(db_file, embedder.encode(database))
        np.save(q_file, embedder.encode(queries))
    return np.load(db_file), np.load(q_file)


def grow(vectors: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    copies = vectors[rng.integers(0, len(vectors), n - len(vectors))]
    copies = copies + rng.normal(0, noise, copies.shape).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([vectors, copies]).astype(np.float32)


def measure(database: np.ndarray, queries: np.ndarray, nprobes: list[int], k: int = 10) -> list[dict]:
    flat = build_library_index(database, kind="flat")
    t = time.perf_counter()
    _, truth = flat.search(queries, k)
    flat_ms = (time.perf_counter() - t) * 1000 / len(queries)
    rows = [
        {"index": "flat", "nlist": "-", "nprobe": "-", "recall@10": 1.0, "ms/query": flat_ms, "build s": 0}
    ]
    t = time.perf_counter()
    ivf = build_library_index(database, kind="ivf")
    build = time.perf_counter() - t
    for nprobe in nprobes:
        ivf.nprobe = min(nprobe, ivf.nlist)
        t = time.perf_counter()
        _, found = ivf.search(queries, k)
        ms = (time.perf_counter() - t) * 1000 / len(queries)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)])
        rows.append(
            {
                "index": "ivf",
                "nlist": ivf.nlist,
                "nprobe": ivf.nprobe,
                "recall@10": recall,
                "ms/query": ms,
                "build s": build,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--scale", type=int, nargs="*", default=[])
    p.add_argument("--noise", type=float, default=0.03, help="per-dimension noise of grown vectors")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--cache", type=Path, default=Path("/tmp/bench_ivf"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    database, queries = embeddings(args.cache, args.queries, args.seed)
    print("| vectors | data | index | nlist | nprobe | recall@10 | ms/query | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in [len(database), *args.scale]:
        data = "real" if n == len(database) else "grown"
        vectors = database if n == len(database) else grow(database, n, args.noise, args.seed)
        for r in measure(vectors, queries, args.nprobe):
            print(
                f"| {n:,} | {data} | {r['index']} | {r['nlist']} | {r['nprobe']} | {r['recall@10']:.3f} "
                f"| {r['ms/query']:.3f} | {r['build s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
