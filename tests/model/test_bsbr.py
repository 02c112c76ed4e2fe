"""BSBR attention: fast op == naive reference (outputs and gradients), top-k selection, causality,
padding, low precision, linear memory, and the streaming cache form."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import model.bsbr as bsbr_module
from model.bsbr import (
    bsbr_attention,
    bsbr_attention_reference,
    bsbr_attention_with_cache,
    bsbr_attention_with_cache_reference,
)

B, H, D = 2, 2, 8
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The reference runs thousands of tiny ops; OpenMP fan-out only adds sync cost (stalls on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(name: str, ref: torch.Tensor, tri: torch.Tensor, ratio: float, atol: float = 1e-9) -> None:
    """Relative error as in flash-linear-attention: rms(ref - tri) / rms(ref) <= ratio (or tiny abs error)."""
    assert tri.shape == ref.shape, f"{name}: shape {tri.shape} != {ref.shape}"
    assert torch.isfinite(tri).all(), f"{name}: non-finite values"
    diff = (ref.double() - tri.double()).abs()
    if diff.max().item() <= atol:
        return
    err = diff.pow(2).mean().sqrt().item() / max(ref.double().pow(2).mean().sqrt().item(), 1e-30)
    assert err <= ratio, f"{name}: error ratio {err:.3g} > {ratio:.3g} (max abs diff {diff.max().item():.3g})"


def make_inputs(T: int, C: int, dtype: torch.dtype, seed: int = 0, padding: bool = False, batch: int = B):
    """Random q, k, v (batch, H, T, D), r, h (batch, H, N, D), gate (H,) and a padding mask or None.

    The mask pads random tokens, the tail of batch 0, and all of chunk 1 of batch 1 (when it exists).
    """
    g = torch.Generator().manual_seed(seed)
    N = math.ceil(T / C)
    q, k, v = (torch.randn(batch, H, T, D, generator=g, dtype=dtype) for _ in range(3))
    r, h = (torch.randn(batch, H, N, D, generator=g, dtype=dtype) for _ in range(2))
    gate = torch.randn(H, generator=g, dtype=dtype)
    mask = None
    if padding:
        mask = torch.rand(batch, T, generator=g) > 0.25
        mask[0, T - T // 5 :] = False
        mask[0, 0] = True
        if N >= 3 and batch > 1:
            mask[1, C : 2 * C] = False
    return [q, k, v, r, h], gate, mask


def tie_free_retrieval(
    batch: int, N: int, seed: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """r, h whose logits r_c . h_j = a_c s_j / sqrt(D) have a unique ranking (gaps >> rounding error)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.linspace(-3, 3, N, dtype=dtype)[torch.randperm(N, generator=g)]  # distinct chunk scores
    sign = torch.where(torch.rand(batch, H, N, generator=g) < 0.5, -1.0, 1.0)
    a = (1 + torch.rand(batch, H, N, generator=g)) * sign  # |a_c| in [1, 2]
    r = torch.zeros(batch, H, N, D, dtype=dtype)
    r[..., 0] = a
    h = torch.randn(batch, H, N, D, generator=g, dtype=dtype)  # other dims do not reach the logits
    h[..., 0] = s
    return r, h


def run_both(inputs, gate, mask, dtype, **kw):
    """Outputs and gradients (of a fixed random projection) of the fast op and of the reference."""
    results = []
    for fn in (bsbr_attention, bsbr_attention_reference):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        g = gate.detach().clone().requires_grad_()
        out = fn(*xs, gate=g, key_padding_mask=mask, **kw)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        grads = torch.autograd.grad((out * weight).sum(), [*xs, g], allow_unused=True, materialize_grads=True)
        results.append((out, grads))
    return results


CASES = [  # (T, C, causal, retrieval, padding)
    (1, 16, False, "past", False),
    (1, 16, True, "past", True),
    (63, 16, False, "past", True),
    (63, 16, True, "past", True),
    (63, 16, False, "all", True),
    (256, 64, False, "past", False),
    (256, 64, True, "past", False),
    (256, 64, False, "all", True),
    (256, 256, False, "past", True),
    (507, 64, False, "all", True),
    (507, 64, True, "past", True),
    (507, 256, False, "past", False),
    (1000, 16, True, "past", True),
    (1000, 64, False, "past", True),
    (1000, 256, False, "all", False),
]


def case_id(case) -> str:
    T, C, causal, retrieval, padding = case
    return f"T{T}-C{C}-{'causal' if causal else 'bidir'}-{retrieval}-{'pad' if padding else 'nopad'}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_fast_matches_reference(case, dtype):
    T, C, causal, retrieval, padding = case
    inputs, gate, mask = make_inputs(T, C, dtype, seed=T + C, padding=padding)
    (out, grads), (ref, ref_grads) = run_both(
        inputs, gate, mask, dtype, chunk_size=C, causal=causal, retrieval=retrieval
    )
    assert out.dtype == ref.dtype == dtype
    assert_close("out", ref, out, TOL[dtype], ATOL[dtype])
    for name, a, b in zip(["q", "k", "v", "r", "h", "gate"], ref_grads, grads, strict=True):
        assert_close(f"d{name}", a, b, TOL[dtype], ATOL[dtype])


TOPK_CASES = [  # (T, C, K, causal, retrieval, padding)
    (200, 16, 1, False, "past", False),
    (200, 16, 3, True, "past", True),
    (200, 16, 4, False, "all", True),
    (507, 32, 2, False, "past", True),
    (64, 16, 8, False, "all", False),  # K > visible chunks
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(
    "case",
    TOPK_CASES,
    ids=[
        f"T{t}-C{c}-K{k}-{'causal' if ca else 'bidir'}-{r}-{'pad' if p else 'nopad'}"
        for t, c, k, ca, r, p in TOPK_CASES
    ],
)
def test_topk_matches_reference(case, dtype):
    T, C, K, causal, retrieval, padding = case
    inputs, gate, mask = make_inputs(T, C, dtype, seed=K, padding=padding)
    inputs[3], inputs[4] = tie_free_retrieval(B, math.ceil(T / C), seed=K, dtype=dtype)
    (out, grads), (ref, ref_grads) = run_both(
        inputs, gate, mask, dtype, chunk_size=C, causal=causal, retrieval=retrieval, top_k=K
    )
    assert_close("out", ref, out, TOL[dtype], ATOL[dtype])
    for name, a, b in zip(["q", "k", "v", "r", "h", "gate"], ref_grads, grads, strict=True):
        assert_close(f"d{name}", a, b, TOL[dtype], ATOL[dtype])


def test_topk_selected_blocks_fixed():
    """Six chunks with known scores: the chosen chunks per query chunk are written out by hand."""
    C, N = 4, 6
    q, k, v = (torch.randn(1, 1, N * C, 2) for _ in range(3))
    scores = torch.tensor([0.5, 3.0, -1.0, 2.0, 1.0, 4.0])
    h = torch.stack([scores, torch.zeros(N)], -1)[None, None]  # (1, 1, 6, 2)
    sign = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0])  # the last chunk prefers LOW scores
    r = torch.stack([sign, torch.zeros(N)], -1)[None, None]
    _, logits = bsbr_attention(q, k, v, r, h, chunk_size=C, top_k=2, return_retrieval=True)
    chosen = [sorted(torch.isfinite(logits[0, 0, c]).nonzero().flatten().tolist()) for c in range(N)]
    assert chosen == [[], [0], [0, 1], [0, 1], [1, 3], [0, 2]]
    _, logits = bsbr_attention(q, k, v, r, h, chunk_size=C, top_k=2, retrieval="all", return_retrieval=True)
    chosen = [sorted(torch.isfinite(logits[0, 0, c]).nonzero().flatten().tolist()) for c in range(N)]
    assert chosen == [[1, 5], [3, 5], [1, 5], [1, 5], [1, 5], [0, 2]]


@pytest.mark.parametrize("retrieval", ["past", "all"])
def test_topk_selected_blocks_random(retrieval):
    """Random tie-free scores: the chosen set is the K best visible chunks, computed independently."""
    T, C, K = 300, 10, 4
    inputs, gate, mask = make_inputs(T, C, torch.float32, seed=5, padding=True)
    r, h = tie_free_retrieval(B, T // C, seed=5, dtype=torch.float32)
    _, logits = bsbr_attention(
        *inputs[:3],
        r,
        h,
        chunk_size=C,
        top_k=K,
        retrieval=retrieval,
        key_padding_mask=mask,
        return_retrieval=True,
    )
    valid = mask.view(B, -1, C).any(-1)
    for b in range(B):
        for hd in range(H):
            for c in range(T // C):
                seen = [
                    j for j in range(T // C) if valid[b, j] and (j < c if retrieval == "past" else j != c)
                ]
                best = sorted(seen, key=lambda j: -(r[b, hd, c] @ h[b, hd, j]).item())[:K]
                got = torch.isfinite(logits[b, hd, c]).nonzero().flatten().tolist()
                assert sorted(got) == sorted(best), (b, hd, c)


def test_retrieval_logits_visibility():
    inputs, _, mask = make_inputs(100, 10, torch.float64, padding=True)
    _, logits = bsbr_attention(*inputs, chunk_size=10, key_padding_mask=mask, return_retrieval=True)
    valid = mask.view(B, 10, 10).any(-1)  # chunk 1 of batch 1 is all padding
    expected = torch.ones(10, 10, dtype=torch.bool).tril(-1)[None, None] & valid[:, None, None, :]
    assert torch.equal(torch.isfinite(logits), expected.expand(B, H, 10, 10))
    r, h = inputs[3], inputs[4]
    assert_close(
        "logits",
        (r @ h.transpose(-1, -2) / math.sqrt(D))[expected.expand(B, H, 10, 10)],
        logits[torch.isfinite(logits)],
        1e-12,
    )


@pytest.mark.parametrize("top_k", [None, 2], ids=["dense", "top2"])
def test_token_causality(top_k):
    """causal=True: perturbing token t (and what a caller's r derives from it) changes nothing before t."""
    T, C, t = 200, 32, 77
    (q, k, v, r, h), gate, _ = make_inputs(T, C, torch.float64, batch=1)
    base = bsbr_attention(q, k, v, r, h, chunk_size=C, causal=True, gate=gate, top_k=top_k)
    q2, k2, v2, r2, h2 = (x.clone() for x in (q, k, v, r, h))
    for x in (q2, k2, v2):
        x[:, :, t] += 1.0
    h2[:, :, t // C] += 1.0  # meta key of the perturbed token's chunk
    r2[:, :, t // C + 1 :] += 1.0  # meta queries of later chunks summarise earlier chunks
    out = bsbr_attention(q2, k2, v2, r2, h2, chunk_size=C, causal=True, gate=gate, top_k=top_k)
    assert torch.equal(out[:, :, :t], base[:, :, :t])
    assert (out[:, :, t:] - base[:, :, t:]).abs().amax(dim=(0, 1, 3)).gt(1e-6).float().mean() > 0.9


@pytest.mark.parametrize("top_k", [None, 2], ids=["dense", "top2"])
def test_past_retrieval_causality(top_k):
    """retrieval='past': perturbing chunk j (tokens, r_j, h_j) changes no output in chunks before j."""
    T, C, j = 256, 32, 3
    (q, k, v, r, h), gate, _ = make_inputs(T, C, torch.float64, batch=1)
    base = bsbr_attention(q, k, v, r, h, chunk_size=C, gate=gate, top_k=top_k)
    q2, k2, v2, r2, h2 = (x.clone() for x in (q, k, v, r, h))
    for x in (q2, k2, v2):
        x[:, :, j * C : (j + 1) * C] += torch.randn_like(x[:, :, j * C : (j + 1) * C])
    r2[:, :, j] += 1.0
    h2[:, :, j] += 5.0  # make chunk j attractive, so top-k picks it for later chunks
    out = bsbr_attention(q2, k2, v2, r2, h2, chunk_size=C, gate=gate, top_k=top_k)
    assert torch.equal(out[:, :, : j * C], base[:, :, : j * C])
    later = (out[:, :, (j + 1) * C :] - base[:, :, (j + 1) * C :]).abs().amax(dim=(0, 1, 3))
    assert later.gt(1e-6).all() if top_k is None else later.gt(1e-6).any()  # retrieval from chunk j is live


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_padding_invariance(causal):
    """New padded q, k, v (and r, h of all-padding chunks) change no real output; padded outputs are 0."""
    T, C = 100, 10
    inputs, gate, mask = make_inputs(T, C, torch.float64, seed=3, padding=True)
    xs = [x.clone().requires_grad_() for x in inputs]
    base = bsbr_attention(*xs, chunk_size=C, causal=causal, key_padding_mask=mask, gate=gate)
    grads = torch.autograd.grad(base.sum(), xs[:3])
    pad = ~mask[:, None, :, None]
    noisy = [torch.where(pad, x + 100 * torch.randn_like(x), x) for x in inputs[:3]]
    dead = ~mask.view(B, -1, C).any(-1)[:, None, :, None]  # all-padding chunks
    noisy += [torch.where(dead, x + 100, x) for x in inputs[3:]]
    out = bsbr_attention(*noisy, chunk_size=C, causal=causal, key_padding_mask=mask, gate=gate)
    real = mask[:, None, :, None].expand_as(out)
    assert (out[real] - base[real]).abs().max() < 1e-12
    assert torch.equal(out[~real], torch.zeros_like(out[~real]))
    for grad in grads:
        assert torch.equal(grad[pad.expand_as(grad)], torch.zeros_like(grad[pad.expand_as(grad)]))


def test_gate_zero_is_chunked_softmax_attention_and_none_is_one():
    T, C = 90, 32
    (q, k, v, r, h), _, mask = make_inputs(T, C, torch.float64, padding=True)
    out = bsbr_attention(
        q, k, v, r, h, chunk_size=C, key_padding_mask=mask, gate=torch.zeros(H, dtype=torch.float64)
    )
    for c in range(0, T, C):
        m = mask[:, c : c + C]
        ref = F.scaled_dot_product_attention(
            q[:, :, c : c + C],
            k[:, :, c : c + C],
            v[:, :, c : c + C],
            attn_mask=m[:, None, None, :] | torch.eye(m.shape[1], dtype=torch.bool),
        )
        ref = ref.masked_fill(~m[:, None, :, None], 0)
        assert (out[:, :, c : c + C] - ref).abs().max() < 1e-12
    ones = bsbr_attention(q, k, v, r, h, chunk_size=C, gate=torch.ones(H, dtype=torch.float64))
    assert torch.equal(ones, bsbr_attention(q, k, v, r, h, chunk_size=C))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mode", ["bidir", "causal", "top2", "all"])
def test_half_precision_finite(dtype, mode):
    """Low precision stays finite with all-padding chunks, a first chunk that sees nothing, big logits."""
    T, C = 300, 32
    inputs, gate, mask = make_inputs(T, C, torch.float32, seed=7, padding=True)
    mask[1, 2 * C : 5 * C] = False
    inputs[3] = inputs[3] * 30  # large retrieval logits
    kw = {"bidir": {}, "causal": {"causal": True}, "top2": {"top_k": 2}, "all": {"retrieval": "all"}}[mode]
    ref = bsbr_attention(*inputs, chunk_size=C, key_padding_mask=mask, gate=gate, **kw)
    xs = [x.to(dtype).requires_grad_() for x in inputs]
    out = bsbr_attention(*xs, chunk_size=C, key_padding_mask=mask, gate=gate.to(dtype), **kw)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert_close("out", ref, out.float(), 0.05)
    grads = torch.autograd.grad(out.float().sum(), xs)
    assert all(torch.isfinite(g).all() for g in grads)


def test_long_sequence_memory_is_linear():
    """T = 131072 forward on CPU: well under 2 GB extra peak RSS (a T x T fp32 tensor alone is 64 GB)."""
    script = textwrap.dedent("""
        import resource, torch
        from model.bsbr import bsbr_attention
        T, H, D, C = 131072, 2, 16, 256
        q, k, v = (torch.randn(1, H, T, D) for _ in range(3))
        r, h = (torch.randn(1, H, T // C, D) for _ in range(2))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            for kw in ({}, {"causal": True}, {"top_k": 8}):
                out = bsbr_attention(q, k, v, r, h, chunk_size=C, **kw)
                assert out.shape == q.shape and torch.isfinite(out).all()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert res.returncode == 0, res.stderr
    extra = int(res.stdout.split()[-1])
    assert extra < 2 * 2**30, f"peak extra RSS {extra / 2**20:.0f} MiB"


def test_invalid_arguments():
    (q, k, v, r, h), _, _ = make_inputs(64, 16, torch.float32)
    with pytest.raises(ValueError, match="causal=True needs retrieval='past'"):
        bsbr_attention(q, k, v, r, h, chunk_size=16, causal=True, retrieval="all")
    with pytest.raises(ValueError, match="ceil"):
        bsbr_attention(q, k, v, r[:, :, :2], h, chunk_size=16)
    with pytest.raises(ValueError, match="retrieval"):
        bsbr_attention(q, k, v, r, h, chunk_size=16, retrieval="future")
    with pytest.raises(ValueError, match="top_k"):
        bsbr_attention(q, k, v, r, h, chunk_size=16, top_k=0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        bsbr_attention(q, k, v, r, h, chunk_size=16, key_padding_mask=torch.ones(B, 64))
    with pytest.raises(ValueError, match="compress"):
        bsbr_attention_with_cache(
            q, k, v, r, h, None, None, None, chunk_size=16, compress=torch.nn.Identity()
        )


def _split_run(inputs, mask, C, bounds, **kw):
    """Run chunk blocks [bounds[i], bounds[i+1]) one after another through the cache op."""
    q, k, v, r, h = inputs
    outs, states, keys, valid = [], None, None, None
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        sl = slice(a * C, b * C)
        m = None if mask is None else mask[:, sl]
        res = bsbr_attention_with_cache(
            q[:, :, sl],
            k[:, :, sl],
            v[:, :, sl],
            r[:, :, a:b],
            h[:, :, a:b],
            states,
            keys,
            valid,
            chunk_size=C,
            key_padding_mask=m,
            **kw,
        )
        outs.append(res.out)
        new_valid = (
            m.view(m.shape[0], -1, C).any(-1)
            if m is not None
            else torch.ones(q.shape[0], b - a, dtype=torch.bool)
        )
        states = res.states if states is None else torch.cat([states, res.states], 2)
        keys = h[:, :, a:b] if keys is None else torch.cat([keys, h[:, :, a:b]], 2)
        valid = new_valid if valid is None else torch.cat([valid, new_valid], 1)
    return torch.cat(outs, 2), states


@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"top_k": 3}], ids=["dense", "causal", "top3"])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
def test_streaming_equals_whole_pass(kw, padding):
    """retrieval='past': chunks fed in blocks against the growing cache == one pass over all of them."""
    T, C = 160, 10
    inputs, gate, mask = make_inputs(T, C, torch.float64, seed=11, padding=padding)
    whole = bsbr_attention_with_cache(
        *inputs, None, None, None, chunk_size=C, key_padding_mask=mask, gate=gate, **kw
    )
    out, states = _split_run(inputs, mask, C, [0, 1, 5, 6, 16], gate=gate, **kw)
    assert (out - whole.out).abs().max() < 1e-12
    assert (states - whole.states).abs().max() < 1e-12


@pytest.mark.parametrize(
    "kw",
    [{}, {"retrieval": "all"}, {"top_k": 4}, {"causal": True, "top_k": 2}, {"compress": True}],
    ids=["past", "all", "top4", "causal-top2", "compressed"],
)
def test_cache_op_matches_reference_with_shared_cache(kw):
    """A batch-1 cache shared by 3 query sequences: fast == reference (outputs and gradients)."""
    C, M, T = 8, 12, 20
    dt = torch.float64
    g = torch.Generator().manual_seed(2)
    kw = dict(kw)
    if kw.pop("compress", False):
        down, up = torch.nn.Linear(D * D, 16, dtype=dt), torch.nn.Linear(16, D * D, dtype=dt)
        kw.update(compress=down, decompress=up)
        cached_states = torch.randn(1, H, M, 16, generator=g, dtype=dt)
    else:
        cached_states = torch.randn(1, H, M, D, D, generator=g, dtype=dt)
    cached_keys = torch.randn(1, H, M, D, generator=g, dtype=dt)
    cached_valid = torch.rand(1, M, generator=g) > 0.3
    inputs, gate, mask = make_inputs(T, C, dt, seed=4, padding=True, batch=3)
    results = []
    for fn in (bsbr_attention_with_cache, bsbr_attention_with_cache_reference):
        xs = [x.clone().requires_grad_() for x in [*inputs, cached_states, cached_keys]]
        res = fn(
            *xs[:5],
            xs[5],
            xs[6],
            cached_valid,
            chunk_size=C,
            key_padding_mask=mask,
            gate=gate,
            return_retrieval=True,
            **kw,
        )
        grads = torch.autograd.grad(
            (
                res.out * torch.randn(res.out.shape, generator=torch.Generator().manual_seed(0), dtype=dt)
            ).sum(),
            xs,
        )
        results.append((res, grads))
    (res, grads), (ref, ref_grads) = results
    assert res.logits.shape == (3, H, math.ceil(T / C), M + math.ceil(T / C))
    assert torch.equal(torch.isfinite(res.logits), torch.isfinite(ref.logits))
    assert_close("out", ref.out, res.out, 1e-10)
    assert_close("states", ref.states, res.states, 1e-10)
    names = ["q", "k", "v", "r", "h", "cached_states", "cached_keys"]
    for name, a, b in zip(names, ref_grads, grads, strict=True):
        assert_close(f"d{name}", a, b, 1e-10)


@pytest.mark.parametrize(
    "kw", [{}, {"causal": True}, {"top_k": 3}, {"cache": True}], ids=["dense", "causal", "top3", "cached"]
)
def test_row_groups_match_reference(kw, monkeypatch):
    """Past retrieval splits query chunks into row groups at long N; force it at small N and compare."""
    monkeypatch.setattr(bsbr_module, "ROW_GROUP_CHUNKS", 4)  # 30 chunks -> 7 row groups
    T, C = 240, 8
    kw = dict(kw)
    inputs, gate, mask = make_inputs(T, C, torch.float64, seed=9, padding=True)
    cache = (None, None, None)
    if kw.pop("cache", False):
        g = torch.Generator().manual_seed(3)
        cache = (
            torch.randn(1, H, 5, D, D, generator=g, dtype=torch.float64),
            torch.randn(1, H, 5, D, generator=g, dtype=torch.float64),
            torch.tensor([[True, False, True, True, True]]),
        )
    results = []
    for fn in (bsbr_attention_with_cache, bsbr_attention_with_cache_reference):
        xs = [x.clone().requires_grad_() for x in inputs]
        res = fn(*xs, *cache, chunk_size=C, key_padding_mask=mask, gate=gate, return_retrieval=True, **kw)
        results.append((res, torch.autograd.grad(res.out.sin().sum(), xs)))
    (res, grads), (ref, ref_grads) = results
    assert_close("out", ref.out, res.out, 1e-10)
    for name, a, b in zip(["q", "k", "v", "r", "h"], ref_grads, grads, strict=True):
        assert_close(f"d{name}", a, b, 1e-10)
    assert torch.equal(torch.isfinite(res.logits), torch.isfinite(ref.logits))


GPU_CASES = [{}, {"causal": True}, {"top_k": 3}, {"retrieval": "all", "top_k": 2}]


@pytest.mark.gpu
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kw", GPU_CASES, ids=["dense", "causal", "top3", "all-top2"])
def test_cuda_matches_cpu(kw, dtype, padding):
    """The CUDA kernels (flash / efficient SDPA, embedding_bag, baddbmm) compute the CPU fp64 result."""
    T, C = 1024, 64
    inputs, gate, mask = make_inputs(T, C, torch.float64, seed=21, padding=padding)
    inputs[3], inputs[4] = tie_free_retrieval(B, T // C, seed=21, dtype=torch.float64)
    ref, ref_grads = run_both(inputs, gate, mask, torch.float64, chunk_size=C, **kw)[0]
    xs = [x.cuda().to(dtype).requires_grad_() for x in inputs]
    m = None if mask is None else mask.cuda()
    out = bsbr_attention(*xs, chunk_size=C, key_padding_mask=m, gate=gate.cuda().to(dtype), **kw)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * weight.cuda()).sum(), xs)
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    assert_close("out", ref, out.double().cpu(), tol, 1e-6)
    for name, a, b in zip(["q", "k", "v", "r", "h"], ref_grads[:5], grads, strict=True):
        assert_close(f"d{name}", a, b.double().cpu(), tol, 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("top_k", [None, 4], ids=["dense", "top4"])
def test_cuda_long_row_groups(top_k, monkeypatch):
    """N = 2048 chunks on CUDA (4 row groups) == the same with a single row group."""
    T, C = 2048 * 16, 16
    (q, k, v, r, h), gate, _ = make_inputs(T, C, torch.float32, seed=2, batch=1)
    xs = [x.cuda() for x in (q, k, v, r, h)]
    monkeypatch.setattr(bsbr_module, "FUSED_KERNELS", False)  # row groups are the PyTorch path's
    grouped = bsbr_attention(*xs, chunk_size=C, causal=True, top_k=top_k, gate=gate.cuda())
    monkeypatch.setattr(bsbr_module, "ROW_GROUP_CHUNKS", 10**9)
    single = bsbr_attention(*xs, chunk_size=C, causal=True, top_k=top_k, gate=gate.cuda())
    assert_close("out", single.cpu(), grouped.cpu(), 1e-5, 1e-6)
