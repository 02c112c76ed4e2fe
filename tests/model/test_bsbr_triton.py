"""Fused Triton forward (model/bsbr_triton.py) == the naive reference: outputs, states and retrieval
logits on awkward shapes (padding, T not a multiple of C, one chunk, many chunks, a cache), fp32 and
bf16; plus the dispatch from `bsbr_attention` and its fallbacks.

Without CUDA the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set before
triton is imported), so these shapes stay tiny; the @gpu tests run the bench configuration on CUDA.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import model.bsbr as bsbr_module  # noqa: E402
from model import bsbr_triton  # noqa: E402
from model.bsbr import (  # noqa: E402
    bsbr_attention,
    bsbr_attention_reference,
    bsbr_attention_with_cache,
    bsbr_attention_with_cache_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # rms error ratio vs the fp64 reference


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 so that tiny inputs run several blocks in every kernel loop."""
    for name in ("STATES_BLOCK_T", "PROBS_BLOCK_C", "PROBS_BLOCK_I", "GEMM_BLOCK_M", "GEMM_BLOCK_E",
                 "GEMM_BLOCK_K", "LOCAL_BLOCK_M", "LOCAL_BLOCK_N"):  # fmt: skip
        monkeypatch.setattr(bsbr_triton, name, 16)


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float) -> None:
    """rms(ref - out) / rms(ref) <= ratio, every element finite (as in tests/model/test_bsbr.py)."""
    assert out.shape == ref.shape, f"{name}: shape {out.shape} != {ref.shape}"
    out = out.double().cpu()
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    if ref.numel() == 0:
        return
    err = (ref.double() - out).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt().clamp(min=1e-30)
    assert err.item() <= ratio, f"{name}: error ratio {err.item():.3g} > {ratio:.3g}"


def make_inputs(batch, heads, T, C, D, seed, padding):
    """fp64 CPU q, k, v, r, h, gate and a padding mask (random holes, the tail of batch 0, all of chunk
    1 of batch 1 when it exists), or None."""
    g = torch.Generator().manual_seed(seed)
    N = math.ceil(T / C)
    q, k, v = (torch.randn(batch, heads, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    r, h = (torch.randn(batch, heads, N, D, generator=g, dtype=torch.float64) for _ in range(2))
    gate = torch.randn(heads, generator=g, dtype=torch.float64)
    mask = None
    if padding:
        mask = torch.rand(batch, T, generator=g) > 0.25
        mask[0, T - T // 5 :] = False
        mask[0, 0] = True
        if N >= 3 and batch > 1:
            mask[1, C : 2 * C] = False
    return [q, k, v, r, h], gate, mask


def on_device(xs, dtype):
    return [None if x is None else x.to(DEVICE, dtype) for x in xs]


def run_fused(xs, gate, mask, dtype, cache=(None, None, None), **kw):
    """fused_forward on `dtype` copies of the inputs; the cache's states/keys cast too."""
    states, keys, valid = cache
    q, k, v, r, h, g, cs, ck = on_device([*xs, gate, states, keys], dtype)
    m = None if mask is None else mask.to(DEVICE)
    cv = None if valid is None else valid.to(DEVICE)
    assert bsbr_triton.unsupported_reason(q, (q, k, v, r, h, g), None, 0.0, False) is None
    kw.setdefault("causal", False)
    kw.setdefault("retrieval", "past")
    kw.setdefault("return_retrieval", False)
    return bsbr_triton.fused_forward(q, k, v, r, h, cs, ck, cv, key_padding_mask=m, gate=g, **kw)


def reference(xs, gate, mask, dtype, cache=(None, None, None), **kw):
    """The fp64 reference on the inputs rounded to `dtype` (so only the kernels' arithmetic differs)."""
    rounded = [None if x is None else x.to(dtype).double() for x in [*xs, gate, cache[0], cache[1]]]
    q, k, v, r, h, g, cs, ck = rounded
    return bsbr_attention_with_cache_reference(
        q, k, v, r, h, cs, ck, cache[2], key_padding_mask=mask, gate=g, **kw
    )


CASES = {  # id: (batch, heads, T, C, D, padding, options)
    "one-chunk": (2, 2, 20, 32, 16, False, {}),
    "one-chunk-pad": (2, 2, 20, 32, 16, True, {"causal": True}),
    "exact-multiple": (1, 2, 64, 16, 16, False, {}),
    "ragged-tail": (2, 2, 77, 16, 16, False, {}),
    "ragged-pad": (2, 2, 77, 16, 16, True, {}),
    "causal": (2, 2, 77, 16, 16, False, {"causal": True}),
    "causal-pad": (2, 2, 77, 16, 16, True, {"causal": True}),
    "all-pad": (2, 2, 77, 16, 16, True, {"retrieval": "all"}),
    "odd-chunk": (1, 2, 100, 24, 32, True, {"causal": True}),
    "many-chunks": (1, 2, 43 * 8 + 3, 8, 16, True, {"causal": True}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference(case, dtype, small_blocks):
    """Output, states and logits of the kernels == the reference (blocks of 16: several per loop)."""
    batch, heads, T, C, D, padding, kw = CASES[case]
    xs, gate, mask = make_inputs(batch, heads, T, C, D, seed=len(case), padding=padding)
    res = run_fused(xs, gate, mask, dtype, chunk_size=C, return_retrieval=True, **kw)
    ref = reference(xs, gate, mask, dtype, chunk_size=C, return_retrieval=True, **kw)
    assert_close("out", ref.out, res.out, TOL[dtype])
    assert_close("states", ref.states, res.states, TOL[dtype])
    seen = torch.isfinite(ref.logits)
    assert torch.equal(torch.isfinite(res.logits).cpu(), seen)
    assert_close("logits", ref.logits[seen], res.logits.cpu()[seen], TOL[dtype])
    if mask is not None:  # padded queries are exactly 0
        assert (res.out.cpu()[~mask[:, None, :, None].expand_as(res.out)] == 0).all()


def test_overlapped_segments(small_blocks, monkeypatch):
    """Query chunks split into 3 segments (the long-input schedule: states, GEMM and outputs per
    segment, the GEMM on a side stream on CUDA) compute the same as one segment."""
    monkeypatch.setattr(bsbr_triton, "OVERLAP_SEGMENTS", 3)
    monkeypatch.setattr(bsbr_triton, "OVERLAP_MIN_CHUNKS", 1)
    xs, gate, mask = make_inputs(1, 2, 43 * 8 + 3, 8, 16, seed=8, padding=True)
    res = run_fused(xs, gate, mask, torch.float32, chunk_size=8, causal=True)
    ref = reference(xs, gate, mask, torch.float32, chunk_size=8, causal=True)
    assert_close("out", ref.out, res.out, TOL[torch.float32])
    assert_close("states", ref.states, res.states, TOL[torch.float32])


@pytest.mark.parametrize("cache_batch", [1, 2], ids=["shared-cache", "own-cache"])
def test_cache_matches_reference(cache_batch):
    """New chunks that also retrieve from M cached chunks (one all-padding), as the question pass and
    the streamed document pass do; a question of one chunk against the cache too."""
    g = torch.Generator().manual_seed(5)
    M, D, heads = 5, 16, 2
    cs = torch.randn(cache_batch, heads, M, D, D, generator=g, dtype=torch.float64)
    ck = torch.randn(cache_batch, heads, M, D, generator=g, dtype=torch.float64)
    cv = torch.ones(cache_batch, M, dtype=torch.bool)
    cv[:, 2] = False
    for T, C in ((45, 16), (11, 11)):  # three new chunks; one question chunk
        xs, gate, mask = make_inputs(2, heads, T, C, D, seed=T, padding=True)
        kw = dict(chunk_size=C, return_retrieval=True)
        res = run_fused(xs, gate, mask, torch.float32, cache=(cs, ck, cv), **kw)
        ref = reference(xs, gate, mask, torch.float32, cache=(cs, ck, cv), **kw)
        assert_close("out", ref.out, res.out, TOL[torch.float32])
        seen = torch.isfinite(ref.logits)
        assert torch.equal(torch.isfinite(res.logits).cpu(), seen)
        assert_close("logits", ref.logits[seen], res.logits.cpu()[seen], TOL[torch.float32])


def test_strided_inputs_and_gate_zero():
    """Transposed (B, T, H, D) views as the encoder passes them; with the gate at 0 the output is the
    within-chunk attention alone (the converted encoder == the pretrained one)."""
    xs, gate, mask = make_inputs(2, 2, 50, 16, 16, seed=3, padding=True)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in xs]
    strided[2] = xs[2].transpose(-1, -2).contiguous().transpose(-1, -2)  # v: D not unit-stride
    assert not strided[0].is_contiguous() and strided[2].stride(-1) != 1
    res = run_fused(strided, gate, mask, torch.float32, chunk_size=16)
    assert_close("out", reference(xs, gate, mask, torch.float32, chunk_size=16).out, res.out, 1e-5)
    zero = torch.zeros_like(gate)
    local = reference([*xs[:3], torch.zeros_like(xs[3]), xs[4]], zero, mask, torch.float32, chunk_size=16)
    assert_close("gate 0", local.out, run_fused(xs, zero, mask, torch.float32, chunk_size=16).out, 1e-5)


def test_unsupported_options_fall_back():
    """Every option the kernels lack is named, so `bsbr_attention` takes the PyTorch path."""
    q = torch.zeros(1, 1, 8, 16, device=DEVICE)
    reason = bsbr_triton.unsupported_reason
    assert reason(q, (q,), None, 0.0, False) is None
    assert reason(q, (q,), 4, 0.0, False) == "top_k"
    assert reason(q, (q,), None, 0.1, False) == "dropout"
    assert reason(q, (q,), None, 0.0, True) == "state compression"
    assert reason(q.double(), (q,), None, 0.0, False).startswith("dtype")
    assert reason(q[..., :12], (q,), None, 0.0, False).startswith("head size")
    grad = q.clone().requires_grad_()
    assert reason(q, (grad,), None, 0.0, False).startswith("autograd")
    with torch.no_grad():
        assert reason(q, (grad,), None, 0.0, False) is None


def test_cpu_keeps_pytorch_path(monkeypatch):
    """On CPU tensors `bsbr_attention` never calls the kernels, interpreter or not."""
    called = []
    monkeypatch.setattr(bsbr_triton, "fused_forward", lambda *a, **k: called.append(1))
    xs, gate, _ = make_inputs(1, 2, 40, 16, 16, seed=1, padding=False)
    out = bsbr_attention(*[x.float() for x in xs], chunk_size=16, gate=gate.float())
    assert not called
    assert_close("out", bsbr_attention_reference(*xs, chunk_size=16, gate=gate), out, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kw", [{"causal": True}, {}], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
def test_cuda_bench_shape(kw, padding, monkeypatch):
    """12 heads x 64, bf16, chunk 256 (the bench's shape), T not a multiple of 256: the fused kernels
    (default blocks) == the fp64 reference, and `bsbr_attention` on CUDA dispatches to them."""
    monkeypatch.setattr(bsbr_module, "FUSED_KERNELS", True)
    T, C = 5 * 256 + 77, 256
    xs, gate, mask = make_inputs(1, 12, T, C, 64, seed=9, padding=padding)
    res = run_fused(xs, gate, mask, torch.bfloat16, chunk_size=C, return_retrieval=True, **kw)
    ref = reference(xs, gate, mask, torch.bfloat16, chunk_size=C, return_retrieval=True, **kw)
    assert_close("out", ref.out, res.out, TOL[torch.bfloat16])
    assert_close("states", ref.states, res.states, TOL[torch.bfloat16])
    q, k, v, r, h, g = on_device([*xs, gate], torch.bfloat16)
    m = None if mask is None else mask.cuda()
    with torch.no_grad():
        out = bsbr_attention(q, k, v, r, h, chunk_size=C, key_padding_mask=m, gate=g, **kw)
    assert torch.equal(out, res.out)


@pytest.mark.gpu
def test_cuda_long_fp32_and_fallback(monkeypatch):
    """N = 300 chunks in fp32 (several row blocks at default sizes) == the PyTorch path; top_k and
    FUSED_KERNELS=False go to the PyTorch path."""
    T, C = 300 * 16 - 5, 16
    xs, gate, mask = make_inputs(2, 2, T, C, 32, seed=4, padding=True)
    q, k, v, r, h, g = on_device([*xs, gate], torch.float32)
    m = mask.cuda()
    monkeypatch.setattr(bsbr_module, "FUSED_KERNELS", True)
    res = bsbr_attention_with_cache(q, k, v, r, h, None, None, None, chunk_size=C, causal=True,
                                    key_padding_mask=m, gate=g, return_retrieval=True)  # fmt: skip
    monkeypatch.setattr(bsbr_module, "FUSED_KERNELS", False)
    torch_res = bsbr_attention_with_cache(q, k, v, r, h, None, None, None, chunk_size=C, causal=True,
                                          key_padding_mask=m, gate=g, return_retrieval=True)  # fmt: skip
    assert_close("out", torch_res.out.double().cpu(), res.out, 1e-4)
    assert_close("states", torch_res.states.double().cpu(), res.states, 1e-4)
    called = []
    monkeypatch.setattr(bsbr_module, "FUSED_KERNELS", True)
    monkeypatch.setattr(bsbr_triton, "fused_forward", lambda *a, **k: called.append(1))
    bsbr_attention(q, k, v, r, h, chunk_size=C, causal=True, top_k=3, gate=g)
    assert not called
