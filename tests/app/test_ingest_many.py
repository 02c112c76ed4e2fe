"""`torchrun -m app ingest-many` (issue 6): two gloo ranks on CPU share a folder, store every document
once, merge one library index, and a rerun skips what is already stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.ingest_many import LIBRARY_INDEX, LIBRARY_MAP, build_library, shard
from ingest import faiss_index
from ingest.store import DocumentStore

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["lighthouses", "beekeeping", "glaciers", "violins", "comets"]


def _write_docs(folder: Path, topics: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for topic in topics:
        text = " ".join(f"Fact {i} about {topic}: {topic} number {i} is described here." for i in range(40))
        (folder / f"{topic}.txt").write_text(text)


def _ingest_many(home: Path, folder: Path, ranks: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"DOCQA_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DOCQA_DEVICE": "cpu"}
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    )
    command = [
        sys.executable,
        *launcher,
        "-m",
        "app",
        "ingest-many",
        str(folder),
        "--glob",
        "*.txt",
        "--json",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_shard_gives_each_file_to_one_rank():
    files = [Path(f"{c}.pdf") for c in "edcba"]
    shares = [shard(files, r, 2) for r in range(2)]
    assert shares == [[Path("a.pdf"), Path("c.pdf"), Path("e.pdf")], [Path("b.pdf"), Path("d.pdf")]]


@pytest.mark.slow
def test_two_ranks_store_each_document_once_and_resume(tmp_path):
    home, folder = tmp_path / "home", tmp_path / "library"
    _write_docs(folder, TOPICS[:3])
    first = _ingest_many(home, folder, ranks=2)  # then "interrupted": two more files arrive
    assert (first["ranks"], first["new"], first["skipped"], first["failed"]) == (2, 3, 0, [])
    _write_docs(folder, TOPICS)
    second = _ingest_many(home, folder, ranks=2)
    assert (second["new"], second["skipped"]) == (2, 3)  # finished documents are not redone
    assert second["documents_per_s"] > 0 and second["tokens_per_s"] > 0

    store = DocumentStore(home)
    docs = store.list()
    assert sorted(d.filename for d in docs) == sorted(f"{t}.txt" for t in TOPICS)  # each stored once
    mapping = json.loads((home / LIBRARY_MAP).read_text())
    index = faiss_index.load_index(home / LIBRARY_INDEX)
    assert mapping["rows"] == index.ntotal == sum(d.n_chunks for d in docs)
    assert second["library"] == {"kind": "flat", "rows": index.ntotal, "documents": len(TOPICS)}
    for entry in mapping["documents"]:  # row r of the library is chunk r - first_row of its document
        own = faiss_index.load_index(store.artifact_path(entry["doc_id"], "faiss.index"))
        rows = index.reconstruct_n(entry["first_row"], entry["chunks"])
        np.testing.assert_array_equal(rows, faiss_index.all_vectors(own))

    third = _ingest_many(home, folder, ranks=1)  # a plain rerun, one process
    assert (third["new"], third["skipped"], third["library"]["rows"]) == (0, len(TOPICS), index.ntotal)


def test_library_index_of_an_empty_store_is_empty(tmp_path):
    assert build_library(DocumentStore(tmp_path))["rows"] == 0
    assert not (tmp_path / LIBRARY_INDEX).exists()
