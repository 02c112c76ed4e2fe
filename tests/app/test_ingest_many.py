"""`torchrun -m app ingest-many` (issue 6): two gloo ranks on CPU share a folder, store every document
once, merge one library index, and a rerun skips what is already stored. With worker processes for the
CPU stages the store holds exactly what one process stores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fpdf import FPDF
from safetensors import safe_open

from app.ingest_many import (
    LIBRARY_INDEX,
    LIBRARY_MAP,
    build_library,
    ingest_share,
    prepare_file,
    shard,
    worker_pool,
)
from app.settings import Settings
from ingest import faiss_index
from ingest.store import DocumentStore

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["lighthouses", "beekeeping", "glaciers", "violins", "comets"]


def _write_docs(folder: Path, topics: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for topic in topics:
        text = " ".join(f"Fact {i} about {topic}: {topic} number {i} is described here." for i in range(40))
        (folder / f"{topic}.txt").write_text(text)


class _NotesPDF(FPDF):
    """A5 pages with a running header and the page number in the footer, like a book."""

    topic = ""

    def header(self) -> None:
        self.set_font("Helvetica", "I", 8)
        self.cell(0, 6, f"Notes on {self.topic}", align="C")
        self.ln(10)

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", size=8)
        self.cell(0, 6, str(self.page_no()), align="C")


def _write_pdfs(folder: Path, topics: list[str], pages: int = 3) -> list[Path]:
    """Small books: `pages` pages of a few paragraphs each."""
    folder.mkdir(exist_ok=True)
    paths = []
    for topic in topics:
        pdf = _NotesPDF(format=(148, 210))
        pdf.topic = topic
        for page in range(1, pages + 1):
            pdf.add_page()
            pdf.set_font("Helvetica", size=11)
            for i in range(3):
                pdf.multi_cell(0, 6, f"Page {page}, part {i}: the {topic} here are described at length. " * 3)
                pdf.ln(3)
        paths.append(folder / f"{topic}.pdf")
        pdf.output(str(paths[-1]))
    return paths


def _ingest_many(
    home: Path, folder: Path, ranks: int, workers: int | None = None, glob: str = "*.txt"
) -> dict:
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
        glob,
        "--json",
        *(["--workers", str(workers)] if workers is not None else []),
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
    first = _ingest_many(home, folder, ranks=2, workers=0)  # then "interrupted": two more files arrive
    assert (first["ranks"], first["new"], first["skipped"], first["failed"]) == (2, 3, 0, [])
    assert first["workers"] == [0, 0]
    _write_docs(folder, TOPICS)
    second = _ingest_many(home, folder, ranks=2)  # default: one CPU-stage worker per rank on 2 cores
    assert (second["new"], second["skipped"]) == (2, 3)  # finished documents are not redone
    assert second["workers"] == [1, 1]
    assert second["documents_per_s"] > 0 and second["tokens_per_s"] > 0

    store = DocumentStore(home)
    docs = store.list()
    assert sorted(d.filename for d in docs) == sorted(f"{t}.txt" for t in TOPICS)  # each stored once
    mapping = json.loads((home / LIBRARY_MAP).read_text())
    index = faiss_index.load_index(home / LIBRARY_INDEX)
    rows = sum(d.n_chunks for d in docs)  # a row per chunk, a vector per window of a chunk
    assert mapping["rows"] == rows and mapping["vectors"] == index.ntotal > rows
    library = {"kind": "flat", "rows": rows, "vectors": index.ntotal, "documents": len(TOPICS)}
    assert second["library"] == library
    for entry in mapping["documents"]:  # label r of the library is chunk r - first_row of its document
        own = faiss_index.load_index(store.artifact_path(entry["doc_id"], "faiss.index"))
        span = slice(entry["first_vector"], entry["first_vector"] + entry["vectors"])
        np.testing.assert_array_equal(faiss_index.all_vectors(index)[span], faiss_index.all_vectors(own))
        labels = faiss_index.chunk_ids(index)[span]
        np.testing.assert_array_equal(labels, entry["first_row"] + faiss_index.chunk_ids(own))

    third = _ingest_many(home, folder, ranks=1)  # a plain rerun, one process
    assert (third["new"], third["skipped"], third["library"]["rows"]) == (0, len(TOPICS), rows)


def test_library_index_of_an_empty_store_is_empty(tmp_path):
    assert build_library(DocumentStore(tmp_path))["rows"] == 0
    assert not (tmp_path / LIBRARY_INDEX).exists()


def test_prepare_file_returns_chunks_or_the_error_line(tmp_path):
    settings = Settings.from_env()
    (good,) = _write_pdfs(tmp_path, ["orchards"], pages=2)
    done = prepare_file(good, "id", settings)
    assert done.error is None and done.prepared.doc_id == "id" and done.prepared.parsed.n_pages == 2
    assert done.prepared.chunks and set(done.prepared.timings) == {"extract", "chunk"}
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    done = prepare_file(bad, "id", settings)
    assert done.error.startswith(f"{bad}: ") and done.prepared is None


def _same_store(a: DocumentStore, b: DocumentStore, doc_id: str) -> None:
    assert a.text(doc_id) == b.text(doc_id)
    assert a.chunks(doc_id) == b.chunks(doc_id)
    vectors = [
        faiss_index.all_vectors(faiss_index.load_index(s.artifact_path(doc_id, "faiss.index")))
        for s in (a, b)
    ]
    np.testing.assert_array_equal(*vectors)
    caches = [sorted(s.artifact_path(doc_id, "x").parent.glob("bsbr_cache.*.safetensors")) for s in (a, b)]
    assert [c.name for c in caches[0]] == [c.name for c in caches[1]] and len(caches[0]) == 1
    # the same tensors (the header's key order varies from one save to the next)
    with safe_open(caches[0][0], "numpy") as x, safe_open(caches[1][0], "numpy") as y:
        keys = sorted(x.keys())
        assert x.metadata() == y.metadata() and keys == sorted(y.keys())
        for key in keys:
            np.testing.assert_array_equal(x.get_tensor(key), y.get_tensor(key))


@pytest.mark.slow
def test_workers_store_what_one_process_stores(tmp_path, capsys):
    from app.docqa import DocQA

    files = _write_pdfs(tmp_path / "pdfs", TOPICS[:3])
    shutil.copy(files[0], tmp_path / "pdfs" / "zz_copy.pdf")  # same bytes, another name: stored once
    (tmp_path / "pdfs" / "broken.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    blank = FPDF()
    blank.add_page()  # no text layer at all
    blank.output(str(tmp_path / "pdfs" / "blank.pdf"))
    files = sorted((tmp_path / "pdfs").glob("*.pdf"))

    one = DocQA(home=tmp_path / "one", device="cpu")
    sequential = ingest_share(one, files)
    pooled = DocQA(home=tmp_path / "pooled", device="cpu")
    with worker_pool(2) as pool:
        pipelined = ingest_share(pooled, files, pool=pool, ahead=2)
        again = ingest_share(pooled, files, pool=pool, ahead=2)  # resume: nothing left to do

    def without_clocks(reports: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in reports]

    assert len(sequential.new) == 3 and len(sequential.failed) == 2
    assert without_clocks(pipelined.new) == without_clocks(sequential.new)
    assert pipelined.failed == sequential.failed  # the same one-line errors, in file order
    assert pipelined.skipped == sequential.skipped == [str(tmp_path / "pdfs" / "zz_copy.pdf")]
    assert set(pipelined.new[0]["timings"]) == set(sequential.new[0]["timings"])
    for report in sequential.new:
        _same_store(one.store, pooled.store, report["doc_id"])
    assert (again.new, again.failed) == ([], sequential.failed)
    assert sorted(again.skipped) == sorted(str(f) for f in files if f.name not in ("broken.pdf", "blank.pdf"))


@pytest.mark.slow
def test_two_ranks_with_workers_ingest_pdfs(tmp_path):
    from ingest.pipeline import file_id

    home, folder = tmp_path / "home", tmp_path / "pdfs"
    files = _write_pdfs(folder, [*TOPICS, "orchards"])
    out = _ingest_many(home, folder, ranks=2, workers=2, glob="*.pdf")
    assert (out["ranks"], out["workers"], out["new"], out["failed"]) == (2, [2, 2], 6, [])
    assert {"extract", "chunk", "embed", "wait"} <= set(out["stage_seconds"])
    assert len(out["rank_seconds"]) == 2 and 0 < max(out["rank_seconds"]) <= out["seconds"]
    assert 0 < out["library_seconds"] < out["seconds"]
    assert {d.id for d in DocumentStore(home).list()} == {file_id(f) for f in files}
    assert out["library"]["documents"] == 6
