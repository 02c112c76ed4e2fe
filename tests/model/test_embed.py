"""Sentence embeddings of the FAISS baseline: window layout (pure) and the real MiniLM (integration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.embed import WINDOW_OVERLAP, WINDOW_TOKENS, SentenceEmbedder, window_spans

LONG = " ".join(f"Sentence {i} about rivers, bridges and the boats below them." for i in range(40))


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder("cpu", batch_size=4)  # small batches: several forward passes per call


@pytest.mark.parametrize(
    ("n", "window", "overlap"),
    [(0, 62, 16), (1, 62, 16), (62, 62, 16), (63, 62, 16), (254, 62, 16), (254, 126, 0), (1000, 7, 3)],
    ids=["empty", "one-token", "exactly-one-window", "one-over", "full-chunk", "no-overlap", "many"],
)
def test_windows_cover_the_tokens_with_equal_overlapping_windows(n, window, overlap):
    spans = window_spans(n, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    lengths = {end - start for start, end in spans}
    assert len(lengths) == 1 and lengths.pop() <= window  # one length, within the window
    for (a, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert a < c and b - c >= overlap  # in order, neighbours share at least `overlap` tokens
    if len(spans) > 1:  # the fewest windows: one fewer could not cover n with that overlap
        assert (len(spans) - 1) * window - (len(spans) - 2) * overlap < n


def test_window_overlap_must_be_below_the_window():
    with pytest.raises(ValueError, match="overlap"):
        window_spans(100, 16, 16)


def test_encode_is_the_model_cards_mean_pooling(embedder):
    texts = ["Where is the bridge?", LONG]
    batch = embedder.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = embedder.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(embedder.encode(texts), expected, atol=1e-5)


def test_no_texts_give_no_vectors(embedder):
    vectors, owners = embedder.encode_windows([])
    assert vectors.shape == (0, SentenceEmbedder.dim) and owners.shape == (0,)
    assert embedder.encode([]).shape == (0, SentenceEmbedder.dim)


def test_a_short_text_is_one_window_equal_to_its_plain_embedding(embedder):
    vectors, owners = embedder.encode_windows(["The bridge opens at noon."])
    assert owners.tolist() == [0]
    np.testing.assert_allclose(vectors, embedder.encode(["The bridge opens at noon."]), atol=1e-5)


def test_long_texts_get_several_windows_and_every_text_at_least_one(embedder):
    calls = []
    texts = [LONG, "", "Short one.", LONG[:300]]
    vectors, owners = embedder.encode_windows(texts, progress=lambda done, total: calls.append((done, total)))
    n_tokens = len(embedder.tokenizer(LONG, add_special_tokens=False)["input_ids"])
    expected = len(window_spans(n_tokens, WINDOW_TOKENS - 2, WINDOW_OVERLAP))
    assert expected > 1 and (owners == 0).sum() == expected
    assert sorted(set(owners.tolist())) == [0, 1, 2, 3] and np.all(np.diff(owners) >= 0)
    assert vectors.shape == (len(owners), SentenceEmbedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert calls[-1] == (len(texts), len(texts)) and all(t == len(texts) for _, t in calls)
    # a window is the plain embedding of its own word pieces: here the first one of LONG
    ids = embedder.tokenizer(LONG, add_special_tokens=False)["input_ids"]
    first = embedder.tokenizer.decode(ids[: window_spans(n_tokens, WINDOW_TOKENS - 2, WINDOW_OVERLAP)[0][1]])
    np.testing.assert_allclose(vectors[0], embedder.encode([first])[0], atol=1e-5)


PROSE = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
    "in want of a wife. However little known the feelings or views of such a man may be on his first "
    "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families.",
    "The ferry to Kallisto leaves the north pier at 7:40 every weekday; on Sundays it runs twice, and the "
    "fare is 12 euros (children under six travel free).",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen.",
    LONG,
]


def test_bf16_embeddings_stay_within_cosine_0_999_of_fp32(embedder):
    fast = SentenceEmbedder("cpu", batch_size=4, cpu_bf16=True)
    assert fast.cpu_bf16 and fast.model.dtype == torch.bfloat16
    exact, owners = embedder.encode_windows(PROSE)
    rounded, same_owners = fast.encode_windows(PROSE)
    assert owners.tolist() == same_owners.tolist() and len(owners) > len(PROSE)  # LONG has several windows
    cosine = (exact * rounded).sum(1)
    assert cosine.min() > 0.999
    assert not np.array_equal(exact, rounded)  # the setting does switch the arithmetic
    assert rounded.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rounded, axis=1), 1.0, atol=1e-5)
    question = "When does the ferry to Kallisto leave?"  # encode (the question side) too
    assert float(embedder.encode([question])[0] @ fast.encode([question])[0]) > 0.999


def test_bf16_is_off_by_default(embedder):
    assert not embedder.cpu_bf16 and embedder.model.dtype == torch.float32


@pytest.mark.gpu
def test_bf16_is_ignored_on_a_gpu():
    on_gpu = SentenceEmbedder("cuda", cpu_bf16=True)
    assert not on_gpu.cpu_bf16 and on_gpu.model.dtype == torch.float16
