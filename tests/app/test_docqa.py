"""DocQA end to end on CPU: a generated PDF, the real MiniLM, FAISS, SQLite and the shipped QA weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import DocQA
from ingest.errors import FileMissingError, UnsupportedTypeError
from ingest.store import StoreError
from tests.ingest.conftest import pdf_bytes

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "The harbour town of Brightwater lies on a windy coast.\n\nIts fishing fleet sails at dawn every day.",
    "The lighthouse keeper of Brightwater is Amelia Thornbury. She has kept the light burning for "
    "thirty-one years.\n\nHer cat is called Pilot.",
    "The annual regatta is held in August.\n\nThe winner receives a silver oar.",
]


@pytest.fixture(scope="module")
def pdf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "brightwater.pdf"
    path.write_bytes(pdf_bytes(PAGES, title="Brightwater"))
    return path


@pytest.fixture(scope="module")
def qa(tmp_path_factory) -> DocQA:
    return DocQA(home=tmp_path_factory.mktemp("home"), device="cpu")


@pytest.fixture(scope="module")
def doc_id(qa, pdf) -> str:
    return qa.add(pdf)


def test_ingest_reports_pages_and_is_content_addressed(qa, pdf, doc_id, tmp_path):
    [info] = qa.documents()
    assert (info.id, info.n_pages, info.title) == (doc_id, 3, "Brightwater")
    assert info.n_chunks >= 1 and info.n_tokens > 40
    copy = tmp_path / "same bytes, other name.pdf"
    copy.write_bytes(pdf.read_bytes())
    report = qa.ingest(copy)
    assert report.doc_id == doc_id and not report.new
    assert len(qa.documents()) == 1


@pytest.mark.parametrize("method", ["bsbr", "faiss", "hybrid", "bm25"])
def test_each_method_cites_the_right_page(qa, doc_id, method):
    assert method in qa.methods
    [answer] = qa.ask("Who is the lighthouse keeper of Brightwater?", methods=[method], top_k=3)
    assert answer.method == method and answer.latency_ms > 0
    top = answer.evidence[0]
    assert top.page_start <= 2 <= top.page_end
    assert "Amelia Thornbury" in top.text
    assert top.answer_page == 2  # the page of the answer itself, not of the whole chunk
    if not answer.abstained:
        assert "Thornbury" in answer.answer
        assert top.text[top.answer_start : top.answer_end] == answer.answer
    assert len(answer.chunk_scores[doc_id]) == qa.documents()[0].n_chunks


def test_hybrid_answers_from_the_fused_ranking_and_faiss_from_faiss_alone(qa, tmp_path):
    from tests.app.test_retrievers import ESTATE, NEWS, _pdf

    doc = qa.add(_pdf(tmp_path / "news.pdf", [ESTATE * 3, NEWS, ESTATE * 3, ESTATE * 2]))
    question = "What estate has been let at last?"
    n = len(qa.store.chunks(doc))
    hybrid, faiss = qa.ask(question, docs=[doc], methods=["hybrid", "faiss"], top_k=3, retrieve_k=n)
    expected_hybrid, expected_faiss = qa.hybrid.top(question, doc, n), qa.faiss.top(question, doc, n)
    assert hybrid.retrieved == expected_hybrid[0].tolist() != faiss.retrieved == expected_faiss[0].tolist()
    assert hybrid.chunk_scores[doc] == pytest.approx(expected_hybrid[2].tolist())
    with pytest.warns(FutureWarning, match="'dense' is deprecated"):
        [dense] = qa.ask(question, docs=[doc], methods=["dense"], top_k=3, retrieve_k=n)
    assert dense.method == "faiss" and dense.retrieved == faiss.retrieved
    qa.delete(doc)


def test_methods_of_one_question_read_each_plain_chunk_once(qa, tmp_path, monkeypatch):
    from tests.app.test_retrievers import ESTATE, NEWS, _pdf

    doc = qa.add(_pdf(tmp_path / "shared.pdf", [ESTATE * 3, NEWS, ESTATE * 3, ESTATE * 2]))
    question = "What estate has been let at last?"
    methods = ["faiss", "hybrid", "bm25", "bsbr"]
    alone = {m: qa.ask(question, docs=[doc], methods=[m], top_k=3)[0] for m in methods}
    read, real = [], qa.engine.read
    monkeypatch.setattr(
        qa.engine, "read", lambda q, texts, cache: read.append((texts, cache)) or real(q, texts, cache)
    )
    together = qa.ask(question, docs=[doc], methods=methods, top_k=3)
    plain = [text for texts, cache in read if cache is None for text in texts]
    # each chunk read once without the cache, not once per method (identical pages: count, not texts)
    assert len(plain) == len({i for m in methods[:3] for i in alone[m].retrieved[: qa.read_k]})
    assert sum(cache is not None for _, cache in read) == 1  # BSBR reads against its cache, apart
    for method, answer in zip(methods, together, strict=True):
        assert answer.answer == alone[method].answer
        assert [e.chunk_index for e in answer.evidence] == [e.chunk_index for e in alone[method].evidence]
    qa.delete(doc)


def test_bad_requests_raise_typed_one_line_errors(qa, doc_id, tmp_path):
    with pytest.raises(FileMissingError, match="no such file"):
        qa.add(tmp_path / "missing.pdf")
    odd = tmp_path / "table.xlsx"
    odd.write_bytes(b"PK\x03\x04")
    with pytest.raises(UnsupportedTypeError) as err:
        qa.add(odd)
    assert "\n" not in str(err.value) and "table.xlsx" in str(err.value)
    with pytest.raises(ValueError, match="empty"):
        qa.ask("   ")
    with pytest.raises(ValueError, match="unknown method"):
        qa.ask("x?", methods=["magic"])
    with pytest.raises(StoreError):
        qa.ask("x?", docs=["0123456789abcdef"])


def test_owners_do_not_see_each_other(qa, doc_id):
    assert qa.documents(owner="bob") == []
    with pytest.raises(StoreError):
        qa.ask("Who keeps the light?", docs=[doc_id], owner="bob")
    with pytest.raises(ValueError, match="no documents"):
        qa.ask("Who keeps the light?", owner="bob")
    with pytest.raises(StoreError):
        qa.delete(doc_id, owner="bob")
    assert [d.id for d in qa.documents()] == [doc_id]


def test_delete_then_add_again(qa, pdf, doc_id):
    qa.delete(doc_id)
    assert qa.documents() == []
    assert qa.add(pdf) == doc_id
    [answer] = qa.ask("When is the regatta held?", methods=["faiss"])
    assert answer.evidence[0].answer_page == 3


def _cli(*args, home):
    env = {**os.environ, "DOCQA_HOME": str(home), "HF_HUB_OFFLINE": "1", "DOCQA_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_ingest_and_ask_json(pdf, tmp_path):
    done = _cli("ingest", str(pdf), "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    assert report["pages"] == 3 and report["chunks"] >= 1 and report["new"]
    done = _cli("ask", str(pdf), "Who is the lighthouse keeper?", "--method", "both", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["question"] == "Who is the lighthouse keeper?"
    assert [a["method"] for a in out["answers"]] == ["bsbr", "faiss"]
    for a in out["answers"]:
        assert {"answer", "score", "abstained", "latency_ms", "evidence"} <= set(a)
        ev = a["evidence"][0]
        assert {"text", "page_start", "page_end", "char_start", "char_end", "score"} <= set(ev)
        assert ev["page_start"] <= 2 <= ev["page_end"] and ev["answer_page"] == 2


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    done = _cli("ingest", str(tmp_path / "nope.pdf"), home=tmp_path)
    assert done.returncode == 1
    assert "nope.pdf" in done.stderr and "Traceback" not in done.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    done = _cli("ask", str(empty), "anything?", home=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error")]) == 1


def test_read_k_defaults_by_device_and_env(monkeypatch, qa):
    from app.settings import Settings

    assert qa.read_k == 12  # a CPU DocQA reads fewer candidates to keep a question well under a second
    monkeypatch.setenv("DOCQA_READ_K", "13")
    assert Settings.from_env().read_k == 13
    monkeypatch.setenv("DOCQA_READ_K", "many")
    with pytest.raises(ValueError, match="DOCQA_READ_K"):
        Settings.from_env()


def test_bsbr_rerank_weight_blends_retrieval_into_the_evidence_order(tmp_path):
    qa = DocQA(home=tmp_path / "home", device="cpu")
    assert qa.engine is not None
    text = "\n\n".join(
        f"Section {i}. The harbour office of town {i} opens at {i + 6} in the morning and sells maps. " * 6
        for i in range(12)
    )
    doc = qa.add_text(text, title="towns").doc_id
    question = "When does the harbour office of town 7 open?"

    def order(weight: float) -> tuple[list[int], list[int]]:
        qa.engine.config.rerank_retrieval_weight = weight
        [answer] = qa.ask(question, docs=[doc], methods=("bsbr",), top_k=qa.read_k)
        return [e.chunk_index for e in answer.evidence], answer.retrieved[: qa.read_k]

    reader_order, _ = order(0.0)
    blended, retrieved = order(1e6)  # retrieval dominates: the evidence keeps the retrieval order
    assert blended == retrieved
    assert sorted(reader_order) == sorted(blended)  # the same candidates, read either way
    assert reader_order != retrieved  # so the weight is what put them in retrieval order
    qa.engine.config.rerank_retrieval_weight = 0.0
    [answer] = qa.ask(question, docs=[doc], methods=("bsbr",), top_k=qa.read_k)
    scores = [e.score for e in answer.evidence]
    assert scores == sorted(scores, reverse=True)  # weight 0: the reader's has-answer score alone


def test_new_weights_rebuild_stored_caches_and_remove_the_stale_ones(tmp_path, monkeypatch):
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from model.encoder import DocumentCache

    text = "\n\n".join(f"Island {i}: the ferry to island {i} leaves at {i + 5}. " * 5 for i in range(12))
    question = "When does the ferry to island 7 leave?"
    shipped = DocQA(home=tmp_path / "home", device="cpu")
    doc = shipped.add_text(text, title="ferries").doc_id
    old_name = shipped.engine.cache_file
    old_cache = DocumentCache.load(shipped.store.artifact_path(doc, old_name))
    # Other weights (as after a model update): the shipped delta with one LoRA factor of layer 0 changed.
    other = tmp_path / "model"
    shutil.copytree(ROOT / "assets" / "qa_model", other)
    with safe_open(str(other / "delta.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    delta = load_file(other / "delta.safetensors")
    key = next(k for k in sorted(delta) if k.startswith("encoder.layers.0.") and k.endswith("lora_b"))
    delta[key] = (delta[key].float() * 3).to(delta[key].dtype)
    save_file(delta, other / "delta.safetensors", metadata=metadata)
    monkeypatch.setenv("DOCQA_MODEL_DIR", str(other))
    updated = DocQA(home=tmp_path / "home", device="cpu")
    assert updated.engine.cache_file != old_name
    [answer] = updated.ask(question, docs=[doc], methods=("bsbr",))
    assert answer.evidence  # answered from a cache of the new weights, built on first use
    folder = updated.store.artifact_path(doc, "x").parent
    assert sorted(p.name for p in folder.glob("bsbr_cache*")) == [updated.engine.cache_file]
    new_cache = DocumentCache.load(updated.store.artifact_path(doc, updated.engine.cache_file))
    assert not torch.equal(new_cache.states[-1], old_cache.states[-1])  # the old one was stale
