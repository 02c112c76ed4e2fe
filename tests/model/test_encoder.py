"""BSBR encoder: MiniLM conversion == BERT per chunk, streaming == whole pass, questions against a
document cache, cache save/load, config round trip, live retrieval, state compression."""

from __future__ import annotations

import json

import pytest
import torch

from model.encoder import BSBRConfig, BSBREncoder, DocumentCache

TINY = dict(
    vocab_size=50,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    chunk_size=8,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def tiny_encoder(seed: int = 0, **overrides) -> BSBREncoder:
    """A tiny encoder in eval mode with random non-zero gates, so block retrieval is live."""
    torch.manual_seed(seed)
    model = BSBREncoder(BSBRConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for layer in model.layers:
            att = layer.attention
            att.gate.normal_(0, 1)
            for lin in (att.query, att.key, att.value, att.meta_query, att.meta_key):
                lin.weight.normal_(0, 0.3)
    return model


def document(n_chunks: int = 13, C: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_chunks, C) ids and mask, with a partly padded chunk and an all-padding chunk."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n_chunks, C), generator=g)
    mask = torch.ones(n_chunks, C, dtype=torch.long)
    mask[3, 5:] = 0
    mask[7] = 0
    return ids, mask


@pytest.fixture(scope="module")
def minilm_pair():
    from transformers import BertModel

    from ingest.tokenizer import minilm_dir

    return BSBREncoder.from_minilm(chunk_size=128).eval(), BertModel.from_pretrained(str(minilm_dir())).eval()


def test_from_minilm_matches_bert_on_every_chunk(minilm_pair):
    """Gates at 0: each chunk of a long padded input is encoded exactly as BERT encodes it alone."""
    model, bert = minilm_pair
    g = torch.Generator().manual_seed(0)
    B, T, C = 2, 300, 128  # chunks of 128, 128 and 44 tokens
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 250:] = 0
    mask[1, 128:256] = 0  # an all-padding chunk
    mask[1, 20:30] = 0
    types = (torch.arange(T) % 128 > 60).long().expand(B, T)
    with torch.no_grad():
        out = model(ids, mask, types, return_retrieval=True)
        assert out.retrieval_logits[0].shape == (B, 12, 3, 3)
        for start in range(0, T, C):
            sl = slice(start, start + C)
            ref = bert(
                input_ids=ids[:, sl], attention_mask=mask[:, sl], token_type_ids=types[:, sl]
            ).last_hidden_state
            real = mask[:, sl].bool()
            if real.any():
                err = (out.last_hidden_state[:, sl][real] - ref[real]).abs().max().item()
                assert err < 1e-4, f"chunk at {start}: max abs err {err}"
        one = model(ids[:, :100], mask[:, :100]).last_hidden_state  # a single chunk: plain BERT
        ref = bert(input_ids=ids[:, :100], attention_mask=mask[:, :100]).last_hidden_state
        assert (one - ref)[mask[:, :100].bool()].abs().max() < 1e-4


@pytest.mark.parametrize(
    "overrides",
    [{}, {"causal": True}, {"top_k": 2}, {"compression_factor": 4}],
    ids=["dense", "causal", "top2", "compressed"],
)
def test_streaming_document_equals_whole_pass(overrides):
    model = tiny_encoder(**overrides)
    ids, mask = document()
    with torch.no_grad():
        whole = model(ids.view(1, -1), mask.view(1, -1), return_cache=True)
    cache, hidden = model.encode_document(ids, mask, batch_chunks=4, return_hidden=True)
    real = mask.view(-1).bool()
    assert (hidden.view(-1, 32)[real] - whole.last_hidden_state[0][real]).abs().max() < 1e-5
    assert cache.n_chunks == 13 and torch.equal(cache.valid, whole.cache.valid)
    assert cache.valid[0].tolist() == [True] * 7 + [False] + [True] * 5
    for a, b in zip(
        cache.states + cache.keys + cache.summaries + [cache.outputs],
        whole.cache.states + whole.cache.keys + whole.cache.summaries + [whole.cache.outputs],
        strict=True,
    ):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-5
    # outputs: each chunk's mean last-layer output over its real tokens (0 for the all-padding chunk)
    m = mask.float()[..., None]
    expected = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    assert cache.outputs.shape == (1, 13, 1, 32) and (cache.outputs[0, :, 0] - expected).abs().max() < 1e-5


def test_output_windows_are_masked_means_of_each_chunks_windows():
    """output_window: the cache keeps the mean output of each window of a chunk (zeros where a window has
    no real token), the same streamed or whole; a cache of (B, N, hidden) outputs reads as one window."""
    model = tiny_encoder(output_window=3)  # 8-token chunks: windows of 3, 3 and 2 tokens
    ids, mask = document()  # chunk 3 has 5 real tokens (its last window is empty), chunk 7 none
    with torch.no_grad():
        whole = model(ids.view(1, -1), mask.view(1, -1), return_cache=True)
    cache, hidden = model.encode_document(ids, mask, batch_chunks=4, return_hidden=True)
    assert cache.outputs.shape == (1, 13, 3, 32)
    assert (cache.outputs - whole.cache.outputs).abs().max() < 1e-5
    for c in (0, 3, 12):
        for v, (a, b) in enumerate([(0, 3), (3, 6), (6, 8)]):
            m = mask[c, a:b].float()[:, None]
            expected = (hidden[c, a:b] * m).sum(0) / m.sum().clamp(min=1)
            assert (cache.outputs[0, c, v] - expected).abs().max() < 1e-5, (c, v)
    assert (cache.outputs[0, 3, 2] == 0).all() and (cache.outputs[0, 3, :2] != 0).any(-1).all()
    assert (cache.outputs[0, 7] == 0).all()
    old = DocumentCache(cache.states, cache.keys, cache.summaries, cache.valid, cache.outputs[:, :, 0])
    assert old.outputs.shape == (1, 13, 1, 32)
    with pytest.raises(ValueError, match="output_window"):
        BSBRConfig(output_window=0)


def test_question_chunk_against_document_cache():
    """A question batch, each question one chunk of its own length, retrieves from a batch-1 cache."""
    model = tiny_encoder()
    ids, mask = document()
    cache = model.encode_document(ids, mask, batch_chunks=5)
    questions = torch.randint(1, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    q_mask = torch.ones(3, 11, dtype=torch.long)
    q_mask[2, 7:] = 0
    with torch.no_grad():
        out = model(questions, q_mask, cache=cache, chunk_size=11, return_retrieval=True)
        alone = model(questions, q_mask, chunk_size=11)
        one_by_one = [
            model(questions[i : i + 1], q_mask[i : i + 1], cache=cache, chunk_size=11).last_hidden_state
            for i in range(3)
        ]
    assert out.last_hidden_state.shape == (3, 11, 32)
    real = q_mask.bool()
    assert (out.last_hidden_state - alone.last_hidden_state)[real].abs().max() > 1e-3  # the cache is read
    assert (out.last_hidden_state - torch.cat(one_by_one))[
        real
    ].abs().max() < 1e-5  # broadcast == per question
    for logits in out.retrieval_logits:  # (3, H, 1 question chunk, 13 document chunks + itself)
        assert logits.shape == (3, 4, 1, 14)
        expected = torch.tensor([True] * 7 + [False] + [True] * 5 + [False])  # all-padding chunk 7; itself
        assert torch.equal(torch.isfinite(logits), expected.expand_as(logits))


def test_question_of_one_chunk_size_equals_whole_sequence():
    """A chunk appended through the cache == the same chunk at the end of one long sequence."""
    model = tiny_encoder(seed=3)
    ids, mask = document()
    question = torch.randint(1, 50, (1, 8), generator=torch.Generator().manual_seed(2))
    cache = model.encode_document(ids, mask, batch_chunks=64)
    with torch.no_grad():
        via_cache = model(question, cache=cache).last_hidden_state
        whole = model(
            torch.cat([ids.view(1, -1), question], 1),
            torch.cat([mask.view(1, -1), torch.ones(1, 8, dtype=torch.long)], 1),
        ).last_hidden_state
    assert (via_cache - whole[:, -8:]).abs().max() < 1e-5


def test_cache_save_load_roundtrip(tmp_path):
    model = tiny_encoder(compression_factor=2)
    ids, mask = document()
    cache = model.encode_document(ids, mask)
    path = tmp_path / "doc.cache.safetensors"
    cache.save(path)
    loaded = DocumentCache.load(path)
    for a, b in zip(
        cache.states + cache.keys + cache.summaries + [cache.valid, cache.outputs],
        loaded.states + loaded.keys + loaded.summaries + [loaded.valid, loaded.outputs],
        strict=True,
    ):
        assert torch.equal(a, b)
    cache.outputs = None  # a cache saved without outputs (before they existed) loads without them
    cache.save(path)
    assert DocumentCache.load(path).outputs is None
    q = torch.randint(1, 50, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(q, cache=cache).last_hidden_state, model(q, cache=loaded).last_hidden_state)
    half = loaded.to(dtype=torch.float16)
    assert half.states[0].dtype == torch.float16 and half.valid.dtype == torch.bool
    from safetensors.torch import save_file

    save_file({"valid": cache.valid}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(ValueError, match="bsbr-document-cache"):
        DocumentCache.load(tmp_path / "other.safetensors")


def test_cache_append_and_broadcast():
    model = tiny_encoder()
    ids, mask = document()
    a = model.encode_document(ids[:6], mask[:6])
    both = model.encode_document(ids, mask, batch_chunks=6)
    with torch.no_grad():
        b = model(ids[6:].reshape(1, -1), mask[6:].reshape(1, -1), cache=a, return_cache=True).cache
    assert b.n_chunks == 13 and (b.states[1] - both.states[1]).abs().max() < 1e-5
    assert (b.outputs - both.outputs).abs().max() < 1e-5
    wide = DocumentCache.concat(
        [
            a,
            DocumentCache(
                [s.expand(3, *s.shape[1:]) for s in a.states],
                [k.expand(3, *k.shape[1:]) for k in a.keys],
                [m.expand(3, -1) for m in a.summaries],
                a.valid.expand(3, -1),
            ),
        ]
    )
    assert wide.batch_size == 3 and wide.n_chunks == 12
    assert wide.outputs is None  # one part has no outputs: the whole has none
    assert DocumentCache.concat([a, a]).outputs.shape == (1, 12, 1, 32)


def test_config_roundtrip_and_checks(tmp_path):
    config = BSBRConfig(**TINY, top_k=4, compression_factor=2, causal=True)
    assert BSBRConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = BSBREncoder(config)
    model.save_pretrained(tmp_path)
    again = BSBREncoder.from_pretrained(tmp_path)
    assert again.config == config
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    for bad in [
        dict(hidden_size=30),
        dict(chunk_size=65),
        dict(causal=True, retrieval="all"),
        dict(retrieval="future"),
        dict(top_k=0),
        dict(compression_factor=3),
        dict(hidden_dropout=1.0),
    ]:
        with pytest.raises(ValueError):
            BSBRConfig(**{**TINY, **bad})
    with pytest.raises(ValueError, match="unknown"):
        BSBRConfig.from_dict({**TINY, "colour": "blue"})


def test_gate_makes_retrieval_live_and_gets_gradient():
    model = tiny_encoder()
    ids, mask = document()
    x, m = ids.view(1, -1), mask.view(1, -1)
    with torch.no_grad():
        live = model(x, m).last_hidden_state
        for layer in model.layers:
            layer.attention.gate.zero_()
        off = model(x, m).last_hidden_state
    assert torch.equal(live[:, :8], off[:, :8])  # the first chunk sees no earlier chunk
    assert (live[:, 8:] - off[:, 8:]).abs().max() > 1e-3
    model.train()
    model(x, m).last_hidden_state.pow(2).sum().backward()
    assert all(layer.attention.gate.grad.abs().sum() > 0 for layer in model.layers)


def test_compression_shapes_and_smaller_cache():
    plain, small = tiny_encoder(), tiny_encoder(compression_factor=4)
    ids, mask = document()
    c_plain, c_small = plain.encode_document(ids, mask), small.encode_document(ids, mask)
    assert c_plain.states[0].shape == (1, 4, 13, 8, 8)
    assert c_small.states[0].shape == (1, 4, 13, 16)
    assert c_small.nbytes < 0.5 * c_plain.nbytes


def test_dropout_only_in_training():
    model = tiny_encoder(hidden_dropout=0.3, attention_dropout=0.3)
    ids, mask = document()
    x, m = ids.view(1, -1), mask.view(1, -1)
    with torch.no_grad():
        assert torch.equal(model(x, m).last_hidden_state, model(x, m).last_hidden_state)
        model.train()
        assert not torch.equal(model(x, m).last_hidden_state, model(x, m).last_hidden_state)


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", [{}, {"top_k": 2}], ids=["dense", "top2"])
def test_cuda_document_pass_matches_cpu(overrides):
    model = tiny_encoder(**overrides)
    ids, mask = document()
    cache, hidden = model.encode_document(ids, mask, batch_chunks=4, return_hidden=True)
    model = model.cuda()
    gpu_cache, gpu_hidden = model.encode_document(ids.cuda(), mask.cuda(), batch_chunks=4, return_hidden=True)
    real = mask.bool()
    assert (gpu_hidden.cpu()[real] - hidden[real]).abs().max() < 1e-3
    for a, b in zip(gpu_cache.states + gpu_cache.keys, cache.states + cache.keys, strict=True):
        assert (a.cpu() - b).abs().max() < 1e-3
