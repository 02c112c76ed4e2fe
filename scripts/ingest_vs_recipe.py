"""Whole ingest of a PDF by the product (app.DocQA) and by the LangChain-style recipe, in one process.

    python -m scripts.ingest_vs_recipe [--pdf assets/pride_and_prejudice.pdf] [--repeat 3] [--json OUT]

The recipe is what a LangChain tutorial builds: PyPDFLoader (pypdf's text of each page),
RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200) over each page, HuggingFaceEmbeddings
of all-MiniLM-L6-v2 (sentence-transformers: texts sorted by length, batches of 32, truncated at the
model's 256 tokens, mean pooling, normalised) and a FAISS inner-product index. It is rebuilt here from
the libraries the product already has (pypdf, langchain-text-splitters, transformers, faiss), without
langchain-community, with nothing taken away: the same length sorting, batch and truncation.

Both run on the same torch threads, their models loaded (and warmed by one batch) before any clock
starts; each repeat ingests into a fresh DOCQA_HOME. Prints each run, the medians and the ratio
product / recipe of the median whole-ingest seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from app import DocQA
from ingest.tokenizer import load_tokenizer, minilm_dir, quiet_transformers

RECIPE_CHUNK_CHARS = 1000
RECIPE_OVERLAP_CHARS = 200
RECIPE_BATCH = 32
RECIPE_MAX_TOKENS = 256  # all-MiniLM-L6-v2's sentence_bert_config.json max_seq_length


class Recipe:
    """The LangChain-style ingest: pages -> character chunks -> MiniLM vectors -> IndexFlatIP."""

    def __init__(self) -> None:
        from transformers import AutoModel

        quiet_transformers()
        self.model = AutoModel.from_pretrained(str(minilm_dir()), dtype=torch.float32).eval()
        self.tokenizer = load_tokenizer()

    def pages(self, pdf: Path) -> list[str]:
        from pypdf import PdfReader

        return [page.extract_text() for page in PdfReader(str(pdf)).pages]

    def split(self, pages: list[str]) -> list[str]:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter(
            chunk_size=RECIPE_CHUNK_CHARS, chunk_overlap=RECIPE_OVERLAP_CHARS
        )
        return [chunk for page in pages for chunk in splitter.split_text(page)]

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, normalised vectors [len(texts), 384], as sentence-transformers' encode makes them."""
        out = np.zeros((len(texts), 384), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first, like encode()
        for start in range(0, len(order), RECIPE_BATCH):
            idx = order[start : start + RECIPE_BATCH]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=RECIPE_MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (b, t, 384)
            weights = batch["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    def ingest(self, pdf: Path) -> dict:
        timings, t = {}, time.perf_counter()
        pages = self.pages(pdf)
        timings["extract"], t = time.perf_counter() - t, time.perf_counter()
        chunks = self.split(pages)
        timings["chunk"], t = time.perf_counter() - t, time.perf_counter()
        vectors = self.embed(chunks)
        timings["embed"], t = time.perf_counter() - t, time.perf_counter()
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        timings["index"] = time.perf_counter() - t
        return {"seconds": sum(timings.values()), "timings": timings, "chunks": len(chunks)}


def product_ingest(pdf: Path) -> dict:
    """One ingest by DocQA into a fresh home; its models are loaded before the clock starts."""
    with tempfile.TemporaryDirectory(prefix="docqa_bench_") as home:
        qa = DocQA(home=home)
        qa.faiss.embedder.encode(["warm up"])  # the lazy FAISS encoder, loaded and warmed
        t = time.perf_counter()
        report = qa.ingest(pdf)
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "timings": report.timings, "chunks": report.chunks, "tokens": report.tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdf", type=Path, default=Path("assets/pride_and_prejudice.pdf"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    recipe = Recipe()
    recipe.embed(["warm up"])
    runs: dict[str, list[dict]] = {"product": [], "recipe": []}
    for _ in range(args.repeat):  # interleaved, so a busy moment of the machine hits both
        runs["product"].append(product_ingest(args.pdf))
        _show("product", runs["product"][-1])
        runs["recipe"].append(recipe.ingest(args.pdf))
        _show("recipe", runs["recipe"][-1])
    medians = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    result = {
        "pdf": str(args.pdf),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "runs": runs,
        "median_seconds": medians,
        "ratio": medians["product"] / medians["recipe"],
    }
    for name, rs in runs.items():
        seconds = [r["seconds"] for r in rs]
        print(f"{name}: median {medians[name]:.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f})")
    print(f"ratio product / recipe: {result['ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def _show(name: str, run: dict) -> None:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in run["timings"].items())
    print(f"{name}: {run['seconds']:.1f} s ({stages}), {run['chunks']} chunks", flush=True)


if __name__ == "__main__":
    main()
