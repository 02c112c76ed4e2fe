"""Write a library of book-length PDFs for the ingest-many throughput runs (issue 6).

Sources, given as paths, so that it runs where ../shared/data is not (the GPU machine carries copies
under .carry/):
  --novel  ../shared/data/books/pride_and_prejudice.txt (Project Gutenberg's text of Jane Austen's
           "Pride and Prejudice", public domain)
  --squad  ../shared/data/squad-v1.1/dev-v1.1.json.gz (SQuAD v1.1 dev, CC BY-SA 4.0): its paragraphs

Book i takes the paragraphs of both sources in an order shuffled with the seed and i, in chapters of
about CHAPTER_CHARS characters, until about --pages pages; make_sample_pdf.build_pdf lays it out like
the sample book (A5, running header, page numbers). Every book has different bytes (its own title and
order), and the same arguments give the same files. Books render in parallel, one per process.

    python -m scripts.make_library --out /tmp/library --novel NOVEL.txt --squad dev-v1.1.json.gz \
        [--books 200] [--pages 320] [--seed 0] [--jobs N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

from scripts import make_sample_pdf

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / ".." / "shared" / "data"
DEFAULT_NOVEL = DATA / "books" / "pride_and_prejudice.txt"
DEFAULT_SQUAD = DATA / "squad-v1.1" / "dev-v1.1.json.gz"
# Characters of text per A5 page, measured on these books (the sample book, with more short paragraphs
# and chapter breaks, has 1,624: 683,896 on 421 pages).
CHARS_PER_PAGE = 1750
CHAPTER_CHARS = 12_000  # about 7 pages, the sample book's chapter length
_PAGE_OBJECT = re.compile(rb"/Type /Page\b(?!s)")


@lru_cache(maxsize=1)
def paragraphs(novel: Path, squad: Path) -> tuple[str, ...]:
    """The novel's paragraphs, then every SQuAD context, as text a core PDF font can draw."""
    blocks = make_sample_pdf.parse_book(novel.read_text(encoding="utf-8"))
    out = [text for kind, text in blocks if kind == "paragraph"]
    with gzip.open(squad, "rt", encoding="utf-8") as f:
        articles = json.load(f)["data"]
    out += [
        make_sample_pdf.to_core_font(" ".join(p["context"].split()))
        for article in articles
        for p in article["paragraphs"]
    ]
    return tuple(out)


def _shuffled_forever(n: int, rng: random.Random) -> Iterator[int]:
    """Indexes 0..n-1 in a fresh shuffled order each round (a book longer than the sources repeats)."""
    while True:
        yield from rng.sample(range(n), n)


def book_blocks(pool: tuple[str, ...], index: int, seed: int, pages: int) -> list[tuple[str, str]]:
    """make_sample_pdf blocks of book `index`: title lines, then chapters of shuffled paragraphs."""
    rng = random.Random(f"{seed}:{index}")  # str seeds hash the same in every process and run
    blocks = [("title", book_title(index)), ("title", "Paragraphs of Pride and Prejudice and SQuAD v1.1")]
    chars, chapter_chars, chapter = 0, CHAPTER_CHARS, 0
    for k in _shuffled_forever(len(pool), rng):
        if chars >= pages * CHARS_PER_PAGE:
            break
        if chapter_chars >= CHAPTER_CHARS:
            chapter += 1
            blocks.append(("chapter", f"Chapter {chapter}"))
            chapter_chars = 0
        blocks.append(("paragraph", pool[k]))
        chars += len(pool[k])
        chapter_chars += len(pool[k])
    return blocks


def book_title(index: int) -> str:
    return f"Library Book {index + 1:03d}"


def render(title: str, blocks: list[tuple[str, str]]) -> bytes:
    """PDF bytes of one book, laid out like the sample book, with `title` in the header."""
    return make_sample_pdf.build_pdf(blocks, title)


def write_book(
    out: Path, index: int, seed: int, pages: int, novel: Path, squad: Path
) -> tuple[str, int, float]:
    """Render book `index` to out/book_NNN.pdf. Returns (file name, pages, seconds)."""
    start = time.perf_counter()
    data = render(book_title(index), book_blocks(paragraphs(novel, squad), index, seed, pages))
    path = out / f"book_{index:03d}.pdf"
    path.write_bytes(data)
    return path.name, len(_PAGE_OBJECT.findall(data)), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for book_000.pdf, ...")
    parser.add_argument("--books", type=int, default=200)
    parser.add_argument("--pages", type=int, default=320, help="about this many pages per book")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--novel", type=Path, default=DEFAULT_NOVEL, help="the novel as text")
    parser.add_argument("--squad", type=Path, default=DEFAULT_SQUAD, help="SQuAD v1.1 json.gz")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="render processes")
    args = parser.parse_args(argv)
    if args.books < 1 or args.pages < 1 or args.jobs < 1:
        parser.error("--books, --pages and --jobs must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    n_paragraphs = len(paragraphs(args.novel, args.squad))  # read once here; forked renderers share it
    jobs = min(args.jobs, args.books)
    write = partial(
        write_book, args.out, seed=args.seed, pages=args.pages, novel=args.novel, squad=args.squad
    )
    with ProcessPoolExecutor(jobs) as pool:
        done = list(pool.map(write, range(args.books)))
    seconds = time.perf_counter() - start
    pages = [p for _, p, _ in done]
    per_book = sum(s for _, _, s in done) / len(done)
    print(
        f"wrote {len(done)} books to {args.out} in {seconds:.1f}s with {jobs} processes: "
        f"{min(pages)}-{max(pages)} pages each from {n_paragraphs} source paragraphs, "
        f"{per_book:.2f}s to render one"
    )


if __name__ == "__main__":
    main()
