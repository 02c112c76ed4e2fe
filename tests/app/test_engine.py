"""QAEngine with the shipped weights: the document pass and the reader under bfloat16 autocast (cpu_bf16)
on a CPU; padded rows and the CUDA graphs (cuda_graphs) on a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app import DocQA
from app.engine import CPU_READ_ROWS_CACHED, GRAPH_AFTER, GRAPH_ROWS, GRAPH_WIDTH, QAEngine, pad_rows
from app.settings import DEFAULT_MODEL_DIR, Settings
from ingest.chunk import chunk_document
from ingest.types import ParsedDocument
from model.cuda_graph import GraphedCall
from model.qa import question_rows, reader_rows

TEXT = "\n\n".join(
    f"Chapter {i}. The harbour office of town {i} opens at {i + 6} in the morning. Its keeper, "
    f"{name}, sells maps of the coast and tide tables, and rents rowing boats by the hour. "
    "Fishing boats leave at dawn; the market on the square sells bread, cheese and smoked fish. " * 3
    for i, name in enumerate(["Amelia", "Bruno", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hugo"])
)

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "delta.safetensors").exists(), reason="no shipped BSBR weights"
)


@pytest.fixture(scope="module")
def chunks():
    parsed = ParsedDocument(path="towns.txt", title="towns", text=TEXT, page_starts=[0], n_pages=1)
    return chunk_document(parsed)


@pytest.fixture(scope="module")
def engines():
    return QAEngine(DEFAULT_MODEL_DIR, "cpu"), QAEngine(DEFAULT_MODEL_DIR, "cpu", cpu_bf16=True)


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Smallest cosine between matching rows of a and b (rows: everything but the last dim), over
    the rows that are not all zeros in `a` (padding windows, empty chunks); those must be zero in b too."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    real = a.norm(dim=-1) > 0
    assert torch.equal(real, b.norm(dim=-1) > 0)
    return torch.nn.functional.cosine_similarity(a[real], b[real]).min().item()


def test_bf16_document_pass_stays_close_to_fp32(chunks, engines):
    exact_engine, fast_engine = engines
    assert len(chunks) > 3 and fast_engine.cpu_bf16 and not exact_engine.cpu_bf16
    exact, fast = exact_engine.build_cache(chunks), fast_engine.build_cache(chunks)
    assert fast.outputs.dtype == exact.outputs.dtype == torch.float16  # stored as before
    assert _min_cosine(exact.outputs, fast.outputs) > 0.99  # (1, N, V, hidden): per window
    for layer, (s_exact, s_fast) in enumerate(zip(exact.states, fast.states, strict=True)):
        assert _min_cosine(s_exact.flatten(-2), s_fast.flatten(-2)) > 0.99, layer  # per chunk and head
    for k_exact, k_fast in zip(exact.keys, fast.keys, strict=True):
        assert _min_cosine(k_exact, k_fast) > 0.99
    assert torch.equal(exact.valid, fast.valid)
    assert not torch.equal(exact.outputs, fast.outputs)  # the setting does switch the arithmetic


def test_bf16_cache_ranks_the_chunks_as_the_fp32_cache(chunks, engines):
    exact_engine, fast_engine = engines
    exact = exact_engine.build_cache(chunks).to("cpu", torch.float32)
    fast = fast_engine.build_cache(chunks).to("cpu", torch.float32)
    for question in ("When does the harbour office of town 5 open?", "Who keeps the office of town 2?"):
        # the question pass is fp32 on both engines (cpu_bf16 covers the document pass only)
        s_exact = exact_engine.retrieval_scores(question, exact)
        s_fast = fast_engine.retrieval_scores(question, fast)
        assert s_exact.argmax() == s_fast.argmax()
        assert torch.corrcoef(torch.stack([s_exact, s_fast]))[0, 1] > 0.99
        assert torch.equal(s_exact, exact_engine.retrieval_scores(question, exact))  # deterministic


def test_bf16_reader_reads_the_spans_of_the_fp32_reader(chunks, engines):
    exact_engine, fast_engine = engines
    cache = exact_engine.build_cache(chunks).to("cpu", torch.float32)
    passages = [c.text for c in chunks]
    for question in ("When does the harbour office of town 5 open?", "Who keeps the office of town 2?"):
        exact = exact_engine.read(question, passages, cache)
        fast = fast_engine.read(question, passages, cache)
        best = max(range(len(exact)), key=lambda i: exact[i].score)
        assert max(range(len(fast)), key=lambda i: fast[i].score) == best
        assert (fast[best].char_start, fast[best].char_end) == (exact[best].char_start, exact[best].char_end)
        assert all(abs(f.score - e.score) < 0.5 for f, e in zip(fast, exact, strict=True))
        assert any(f.score != e.score for f, e in zip(fast, exact, strict=True))  # bf16 arithmetic


@pytest.mark.parametrize("on", [True, False], ids=["on", "off"])
def test_docqa_hands_the_setting_to_both_ingest_passes(tmp_path, on):
    settings = dataclasses.replace(Settings.from_env(), home=tmp_path, device="cpu", cpu_bf16=on)
    qa = DocQA(settings=settings)
    assert qa.engine.cpu_bf16 is on
    assert qa.faiss.embedder.cpu_bf16 is on


@pytest.mark.gpu
def test_cpu_bf16_is_off_on_a_gpu(tmp_path):
    assert not QAEngine(DEFAULT_MODEL_DIR, "cuda", cpu_bf16=True).cpu_bf16
    settings = dataclasses.replace(Settings.from_env(), home=tmp_path, device="cuda", cpu_bf16=True)
    qa = DocQA(settings=settings)
    assert not qa.engine.cpu_bf16 and not qa.faiss.embedder.cpu_bf16


def test_reading_tokenized_passages_gives_the_readings_of_their_text(chunks, engines):
    engine = engines[0]
    cache = engine.build_cache(chunks).to("cpu", torch.float32)
    texts = [c.text for c in chunks] + [""]  # an empty passage holds no answer
    tokens = engine.tokenize(texts)
    assert [len(t.ids) for t in tokens[:-1]] == [c.n_tokens for c in chunks] and len(tokens[-1].ids) == 0
    for kv in (cache, None):
        from_text = engine.read("Who keeps the office of town 2?", texts, kv)
        assert engine.read("Who keeps the office of town 2?", tokens, kv) == from_text
        assert from_text[-1].score == float("-inf")
        best = max(from_text, key=lambda r: r.score)
        assert "Chiara" in texts[from_text.index(best)][best.char_start : best.char_end]


def test_document_passages_are_tokenized_once_and_forgotten_with_the_document(chunks, engines):
    engine = engines[0]
    calls = []

    def texts():
        calls.append(1)
        return [c.text for c in chunks]

    assert engine.document_passages("towns", None) is None  # nothing kept, nothing built
    first = engine.document_passages("towns", texts)
    assert (
        engine.document_passages("towns", texts) is first and engine.document_passages("towns", None) is first
    )
    assert len(calls) == 1 and len(first) == len(chunks)
    assert all(a.ids.tolist() == b.ids.tolist() for a, b in zip(first, engine.tokenize(texts()), strict=True))
    engine.forget("towns")
    assert engine.document_passages("towns", None) is None


def test_cpu_batches_of_rows_read_as_one_batch(chunks, engines):
    engine = engines[0]
    cache = engine.build_cache(chunks).to("cpu", torch.float32)
    # lengths out of order, more rows than one CPU batch, an empty passage among them
    texts = [c.text[: 40 * (k % 5 + 1)] for k, c in enumerate(chunks)] + [""] + [c.text for c in chunks]
    tokens = engine.tokenize(texts)
    assert len(tokens) > 2 * CPU_READ_ROWS_CACHED and len({len(t.ids) for t in tokens}) > 3
    question = "When does the harbour office of town 5 open?"
    for kv in (cache, None):
        batched = engine.read(question, tokens, kv)
        whole = engine._read_rows(engine._question(question), tokens, kv)  # every row in one batch
        assert [(r.char_start, r.char_end) for r in batched] == [(r.char_start, r.char_end) for r in whole]
        assert all(
            b.score == w.score or abs(b.score - w.score) < 1e-3 for b, w in zip(batched, whole, strict=True)
        )


def test_padded_rows_read_and_rank_as_the_rows_themselves(chunks, engines):
    """What a CUDA graph relies on: rows padded to a graph's shape give the rows' own results."""
    engine, tok = engines[0], engines[0].tokenizer
    cache = engine.build_cache(chunks).to("cpu", torch.float32)
    q = engine._question("Who keeps the office of town 2?")
    passages = engine.tokenize([c.text[: 120 * (k + 1)] for k, c in enumerate(chunks[:3])])
    rows = reader_rows([q] * 3, [p.ids for p in passages], tok.cls_token_id, tok.sep_token_id)[:3]
    B, L = rows[0].shape
    padded = pad_rows(rows, 8, L + 40)
    assert all(x.shape == (8, L + 40) for x in padded)
    for x, p in zip(rows, padded, strict=True):
        assert (
            torch.equal(p[:B, :L], x)
            and not p[:, L:].any()
            and torch.equal(p[B:, :L], x[-1:].expand(8 - B, -1))
        )
    with torch.inference_mode():
        for kv in (cache, None):
            start, end = engine.model.read(*rows, kv)
            p_start, p_end = engine.model.read(*padded, kv)
            torch.testing.assert_close(p_start[:B, :L], start, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(p_end[:B, :L], end, atol=1e-4, rtol=1e-4)
        question = question_rows([q], tok.cls_token_id, tok.sep_token_id)  # no padding: the unmasked path
        scores = engine.model.retrieval_scores(*question, cache)
        p_scores = engine.model.retrieval_scores(*pad_rows(question, GRAPH_ROWS, GRAPH_WIDTH), cache)
    torch.testing.assert_close(p_scores[:1], scores, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_graphs_answer_as_the_eager_passes(chunks, tmp_path):
    eager = QAEngine(DEFAULT_MODEL_DIR, "cuda")
    graphed = QAEngine(DEFAULT_MODEL_DIR, "cuda", cuda_graphs=True)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    assert not QAEngine(DEFAULT_MODEL_DIR, "cpu", cuda_graphs=True).cuda_graphs
    path = tmp_path / "towns.safetensors"
    eager.build_cache(chunks).save(path)
    caches = {e: e.cache("towns", path) for e in (eager, graphed)}
    texts = [c.text for c in chunks]
    questions = ["When does the harbour office of town 5 open?", "Who keeps the office of town 2?"]

    def captured():
        return {
            k: sorted(key for key, g in graphs.items() if isinstance(g, GraphedCall))
            for k, (_, graphs) in graphed._graphs.items()
        }

    # a round uses each shape once or twice (two questions): eager in round 0, every shape captured (its
    # GRAPH_AFTER-th use) by the end of round 2, replayed in round 3
    assert GRAPH_AFTER == 3
    for round_ in range(4):
        for question in questions:
            s_eager = eager.retrieval_scores(question, caches[eager])
            s_graph = graphed.retrieval_scores(question, caches[graphed])
            assert s_eager.argmax() == s_graph.argmax()
            assert torch.corrcoef(torch.stack([s_eager, s_graph]))[0, 1] > 0.999
            for kv in (True, False):
                r_eager = eager.read(question, texts[:5], caches[eager] if kv else None)
                r_graph = graphed.read(question, texts[:5], caches[graphed] if kv else None)
                assert [(r.char_start, r.char_end) for r in r_graph] == [
                    (r.char_start, r.char_end) for r in r_eager
                ]
                assert all(abs(a.score - b.score) < 0.1 for a, b in zip(r_eager, r_graph, strict=True))
        if round_ == 0:
            assert not any(captured().values())
        elif round_ == 2:
            first = captured()
        elif round_ == 3:
            assert captured() == first  # replayed, nothing captured again
    own, no_cache = first[id(caches[graphed])], first[id(None)]
    assert {name for name, _, _ in own} == {"question", "read"} and {n for n, _, _ in no_cache} == {"read"}
    # a cache the engine does not keep is read eagerly (no graph keeps it alive); forgetting drops graphs
    loose = eager.build_cache(chunks).to("cuda", torch.float16)
    graphed.read(questions[0], texts[:5], loose)
    assert id(loose) not in graphed._graphs
    graphed.forget("towns")
    assert id(caches[graphed]) not in graphed._graphs and id(None) in graphed._graphs


@pytest.mark.gpu
def test_a_pass_that_cannot_be_captured_turns_the_graphs_off(chunks, tmp_path, monkeypatch):
    import app.engine

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    engine = QAEngine(DEFAULT_MODEL_DIR, "cuda", cuda_graphs=True)
    path = tmp_path / "towns.safetensors"
    engine.build_cache(chunks).save(path)
    cache = engine.cache("towns", path)
    question, texts = "Who keeps the office of town 2?", [c.text for c in chunks[:4]]
    monkeypatch.setattr(app.engine, "GraphedCall", refuse)
    for _ in range(GRAPH_AFTER):  # the last one tries to capture
        readings = engine.read(question, texts, cache)  # answered eagerly, not an error
    assert not engine.cuda_graphs
    eager = QAEngine(DEFAULT_MODEL_DIR, "cuda")
    assert [(r.char_start, r.char_end) for r in readings] == [
        (r.char_start, r.char_end) for r in eager.read(question, texts, eager.cache("towns", path))
    ]
