"""Fused Triton forward of BSBR attention (inference): the same function as `model.bsbr`'s PyTorch path.

Shape legend as in model/bsbr.py (B, H, T, D, C, N, M; E = D*D). Four launches, no T x T tensor:

    1. states     F_j = K_j^T V_j / n_j                    (B, H, N, D, D)   reads k, v once
    2. probs      P_ci = coef_c softmax_i(r_c . h_i / sqrt(D)) over the visible chunks i of
                  [cache, new], 0 elsewhere; coef_c = g_h / sqrt(D), or 0 when c sees nothing
                                                           (B, H, N, M + N)  reads r, h, cached keys
    3. retrieve   S_c = sum_i P_ci F_i                     (B, H, N, E)      a GEMM; with past
                  retrieval each row block stops at its own diagonal (half the work)
    4. output     o_t = softmax(q_t K_c^T / sqrt(D)) V_c + q_t^T S_c, zero at padded queries
                                                           (B, H, T, D)      reads q, k, v, S once

Launch 4 fuses the local attention (a FlashAttention loop over the chunk's key blocks) with the
retrieval term, so the local output never goes through memory. The kernels take any strides for
q, k, v, r, h (the encoder passes transposed views) and any T, chunk size and padding.

Supported: bf16, fp16 and fp32; D in {16, 32, 64, 128}; causal or not; retrieval "past" or "all";
key_padding_mask; a cache of M chunks (batch 1 shared, or B); return_retrieval. Not supported (the
caller falls back to PyTorch): top_k, state compression, dropout, autograd (no backward kernel), fp64.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext as _nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor

from model.bsbr import BSBRCacheOutput, _logit_dtype

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for fp32 scores: rows that see nothing stay NaN-free
LOG2E = 1.4426950408889634
LOG2E_C = tl.constexpr(LOG2E)
# Block caps (powers of 2, >= 16); tests lower them to run several blocks per loop on tiny inputs.
# The GEMM and local-attention tiles are the fastest of a sweep at T = 1M, 12 x 64, bf16 on an H100
# (docs/BENCHMARKS.md, "Fused Triton forward"): GEMM 1.60 -> 1.24 ms, outputs 3.64 -> 3.00 ms.
STATES_BLOCK_T, STATES_WARPS = 128, 4  # tokens per step of the state sum
PROBS_BLOCK_C, PROBS_BLOCK_I = 64, 64  # query chunks per program, key chunks per step
GEMM_BLOCK_M, GEMM_BLOCK_E, GEMM_BLOCK_K = 128, 256, 64  # S = P @ F tiles
LOCAL_BLOCK_M, LOCAL_BLOCK_N = 64, 64  # queries per program, keys per step
GEMM_GROUP_M, GEMM_WARPS, GEMM_STAGES = 8, 8, 3
LOCAL_WARPS, LOCAL_STAGES = 4, 2
# Long inputs: split the query chunks into this many segments so that the GEMM of one (side stream)
# overlaps the states and outputs of others (main stream). 1 = one segment, one stream.
OVERLAP_SEGMENTS, OVERLAP_MIN_CHUNKS, SIDE_STREAM_PRIORITY = 1, 1024, -1


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Triton's CPU interpreter (3.9) multiplies bf16 operands of tl.dot as their raw 16-bit patterns; there
# the dots take fp32 copies instead, which is the same arithmetic (bf16 products are exact in fp32).
UPCAST_DOTS = tl.constexpr(_interpreting())


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    if UPCAST_DOTS:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def unsupported_reason(
    q: Tensor,
    tensors: tuple[Tensor | None, ...],
    top_k: int | None,
    dropout_p: float,
    compressed: bool,
) -> str | None:
    """Why the fused kernels cannot serve this call (None when they can).

    Args:
        q: (B, H, T, D) queries. tensors: every tensor input (None entries ignored), for autograd.
        top_k, dropout_p: as in `bsbr_attention`. compressed: compress/decompress given.
    """
    if not (q.is_cuda or _interpreting()):
        return "not on CUDA"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype}"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head size {q.shape[-1]}"
    if top_k is not None:
        return "top_k"
    if compressed:
        return "state compression"
    if dropout_p:
        return "dropout"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return "autograd (forward-only kernels)"
    return None


@triton.jit
def _states_kernel(
    k_ptr, v_ptr, mask_ptr, f_ptr,
    skb, skh, skt, svb, svh, svt, smb, sfb, sfh, sfn,
    H, T, C, j_off,
    D: tl.constexpr, BLOCK_T: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One (chunk j_off + pid, batch*head): F = sum over the chunk's real tokens of k v^T / their count."""
    j, bh = tl.program_id(0) + j_off, tl.program_id(1)
    b, hd = bh // H, bh % H
    start = j * C
    end = tl.minimum(start + C, T)
    k_base = k_ptr + b.to(tl.int64) * skb + hd.to(tl.int64) * skh + start.to(tl.int64) * skt
    v_base = v_ptr + b.to(tl.int64) * svb + hd.to(tl.int64) * svh + start.to(tl.int64) * svt
    d = tl.arange(0, D)
    acc = tl.zeros((D, D), dtype=tl.float32)
    count = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for t0 in range(0, end - start, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        real = start + t < end
        if HAS_MASK:
            real &= tl.load(mask_ptr + b.to(tl.int64) * smb + start + t, mask=real, other=0) != 0
        kb = tl.load(k_base + t[:, None] * skt + d[None, :], mask=real[:, None], other=0.0)
        vb = tl.load(v_base + t[:, None] * svt + d[None, :], mask=real[:, None], other=0.0)
        acc = _dot(tl.trans(kb), vb, acc, PRECISION)
        count += real.to(tl.float32)
    acc = acc / tl.maximum(tl.sum(count, axis=0), 1.0)
    f_base = f_ptr + b.to(tl.int64) * sfb + hd.to(tl.int64) * sfh + j.to(tl.int64) * sfn
    tl.store(f_base + d[:, None] * D + d[None, :], acc.to(f_ptr.dtype.element_ty))


@triton.jit
def _logit_tile(
    rs, key_ptr, valid_ptr, i0, n_cols, c, skn, scale, is_new: tl.constexpr, PAST: tl.constexpr,
    D: tl.constexpr, BLOCK_I: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Logits (rows, BLOCK_I) = rs . key_i * scale for keys i0.. of one source (products in the input
    dtype, fp32 sums), NEG where invisible; also the visibility. New chunks obey past/all ordering."""
    i = i0 + tl.arange(0, BLOCK_I)
    inside = i < n_cols
    keys = tl.load(key_ptr + i[:, None] * skn + tl.arange(0, D)[None, :], mask=inside[:, None], other=0.0)
    s = _dot(rs, tl.trans(keys), None, PRECISION) * scale  # (rows, BLOCK_I)
    seen = (inside & (tl.load(valid_ptr + i, mask=inside, other=0) != 0))[None, :]
    if is_new:
        if PAST:
            seen &= i[None, :] < c[:, None]
        else:
            seen &= i[None, :] != c[:, None]
    return tl.where(seen, s, NEG), seen


@triton.jit
def _probs_kernel(
    r_ptr, h_ptr, ck_ptr, cvalid_ptr, nvalid_ptr, gate_ptr, p_ptr, logits_ptr,
    srb, srh, srn, shb, shh, shn, sckb, sckh, sckn, scvb, snvb, spb, sph, spn, slb, slh, sln,
    H, N, M, scale,
    D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, PAST: tl.constexpr,
    WRITE_LOGITS: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Rows c0..c0+BLOCK_C of P: pass 1 finds each row's max and normaliser over [cache, new], pass 2
    writes coef_c * p (and, if asked, the logits with -inf where invisible) for every column."""
    pid, bh = tl.program_id(0), tl.program_id(1)
    b, hd = bh // H, bh % H
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = c < N
    r_base = r_ptr + b.to(tl.int64) * srb + hd.to(tl.int64) * srh
    rs = tl.load(r_base + c[:, None] * srn + tl.arange(0, D)[None, :], mask=rows[:, None], other=0.0)
    ck = ck_ptr + b.to(tl.int64) * sckb + hd.to(tl.int64) * sckh
    cv = cvalid_ptr + b.to(tl.int64) * scvb
    hk = h_ptr + b.to(tl.int64) * shb + hd.to(tl.int64) * shh
    nv = nvalid_ptr + b.to(tl.int64) * snvb
    m = tl.full((BLOCK_C,), NEG, dtype=tl.float32)
    den = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for i0 in range(0, M, BLOCK_I):
        s, _ = _logit_tile(rs, ck, cv, i0, M, c, sckn, scale, False, PAST, D, BLOCK_I, PRECISION)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        den = den * tl.exp2((m - m_new) * LOG2E_C) + tl.sum(tl.exp2((s - m_new[:, None]) * LOG2E_C), axis=1)
        m = m_new
    new_hi = N
    if PAST:  # no visible column beyond the row block
        new_hi = tl.minimum(pid * BLOCK_C + BLOCK_C, N)
    for i0 in range(0, new_hi, BLOCK_I):
        s, _ = _logit_tile(rs, hk, nv, i0, N, c, shn, scale, True, PAST, D, BLOCK_I, PRECISION)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        den = den * tl.exp2((m - m_new) * LOG2E_C) + tl.sum(tl.exp2((s - m_new[:, None]) * LOG2E_C), axis=1)
        m = m_new
    gate = tl.load(gate_ptr + hd).to(tl.float32)
    # m stays NEG only when the row sees nothing: then coef = 0 and the row of P is all zeros.
    coef = tl.where(m > NEG * 0.5, gate * scale, 0.0) / den
    p_base = p_ptr + b.to(tl.int64) * spb + hd.to(tl.int64) * sph + c.to(tl.int64)[:, None] * spn
    l_base = logits_ptr + b.to(tl.int64) * slb + hd.to(tl.int64) * slh + c.to(tl.int64)[:, None] * sln
    for i0 in range(0, M, BLOCK_I):
        s, seen = _logit_tile(rs, ck, cv, i0, M, c, sckn, scale, False, PAST, D, BLOCK_I, PRECISION)
        i = i0 + tl.arange(0, BLOCK_I)[None, :]
        p = tl.where(seen, tl.exp2((s - m[:, None]) * LOG2E_C) * coef[:, None], 0.0)
        tl.store(p_base + i, p.to(p_ptr.dtype.element_ty), mask=rows[:, None] & (i < M))
        if WRITE_LOGITS:
            lg = tl.where(seen, s, -float("inf"))
            tl.store(l_base + i, lg.to(logits_ptr.dtype.element_ty), mask=rows[:, None] & (i < M))
    for i0 in range(0, N, BLOCK_I):
        s, seen = _logit_tile(rs, hk, nv, i0, N, c, shn, scale, True, PAST, D, BLOCK_I, PRECISION)
        i = i0 + tl.arange(0, BLOCK_I)[None, :]
        p = tl.where(seen, tl.exp2((s - m[:, None]) * LOG2E_C) * coef[:, None], 0.0)
        tl.store(p_base + M + i, p.to(p_ptr.dtype.element_ty), mask=rows[:, None] & (i < N))
        if WRITE_LOGITS:
            lg = tl.where(seen, s, -float("inf"))
            tl.store(l_base + M + i, lg.to(logits_ptr.dtype.element_ty), mask=rows[:, None] & (i < N))


@triton.jit
def _gemm_source(
    acc, p_row, f_base, sfn, rows_ok, n_cols, e, e_ok,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """acc += P[rows, 0:n_cols] @ F[0:n_cols, e] for one source of chunks (cache or new)."""
    kk = tl.arange(0, BLOCK_K)
    for k0 in range(0, n_cols, BLOCK_K):
        cols = k0 + kk
        a = tl.load(p_row + cols[None, :], mask=rows_ok[:, None] & (cols[None, :] < n_cols), other=0.0)
        f = tl.load(
            f_base + cols.to(tl.int64)[:, None] * sfn + e[None, :],
            mask=(cols[:, None] < n_cols) & e_ok[None, :],
            other=0.0,
        )
        acc = _dot(a, f, acc, PRECISION)
    return acc


@triton.jit
def _retrieve_kernel(
    p_ptr, f_ptr, cf_ptr, s_ptr,
    spb, sph, spn, sfb, sfh, sfn, scfb, scfh, scfn, ssb, ssh, ssn,
    H, N, M, E, lo, hi,
    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """S[rows, e-tile] = P[rows, :M] @ F_cache + P[rows, M:] @ F_new for query chunks [lo, hi) (lo a
    multiple of BLOCK_M); with past retrieval the new part stops at the row block's end (P is 0 beyond
    the diagonal). Heavy (late) row blocks start first; GROUP_M row blocks share each F tile in L2."""
    pid, bh = tl.program_id(0), tl.program_id(1)
    b, hd = bh // H, bh % H
    num_m, num_e = tl.cdiv(hi - lo, BLOCK_M), tl.cdiv(E, BLOCK_E)
    group = pid // (GROUP_M * num_e)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pm = first_m + (pid % (GROUP_M * num_e)) % size_m
    pe = (pid % (GROUP_M * num_e)) // size_m
    if PAST:
        pm = num_m - 1 - pm
    pm += lo // BLOCK_M
    c = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    e = pe * BLOCK_E + tl.arange(0, BLOCK_E)
    rows_ok, e_ok = c < hi, e < E
    p_row = p_ptr + b.to(tl.int64) * spb + hd.to(tl.int64) * sph + c.to(tl.int64)[:, None] * spn
    acc = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    cf_base = cf_ptr + b.to(tl.int64) * scfb + hd.to(tl.int64) * scfh
    acc = _gemm_source(acc, p_row, cf_base, scfn, rows_ok, M, e, e_ok, BLOCK_K, PRECISION)
    f_base = f_ptr + b.to(tl.int64) * sfb + hd.to(tl.int64) * sfh
    new_hi = N
    if PAST:
        new_hi = tl.minimum(pm * BLOCK_M + BLOCK_M, N)
    acc = _gemm_source(acc, p_row + M, f_base, sfn, rows_ok, new_hi, e, e_ok, BLOCK_K, PRECISION)
    s_base = s_ptr + b.to(tl.int64) * ssb + hd.to(tl.int64) * ssh
    tl.store(
        s_base + c.to(tl.int64)[:, None] * ssn + e[None, :],
        acc.to(s_ptr.dtype.element_ty),
        mask=rows_ok[:, None] & e_ok[None, :],
    )


@triton.jit
def _output_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, s_ptr, o_ptr,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, smb, ssb, ssh, ssn, sob, soh, sot,
    H, T, C, qk_scale, c_off,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_S: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Queries qb*BLOCK_M.. of chunk c (from c_off): FlashAttention over the chunk's real keys
    (token-causal if asked), plus q^T S_c, zero at padded queries. qk_scale = log2(e) / sqrt(D)."""
    pid, bh = tl.program_id(0), tl.program_id(1)
    blocks = tl.cdiv(C, BLOCK_M)
    c, qb = pid // blocks + c_off, pid % blocks
    b, hd = bh // H, bh % H
    start = c * C
    end = tl.minimum(start + C, T)
    i = qb * BLOCK_M + tl.arange(0, BLOCK_M)  # query offsets in the chunk
    d = tl.arange(0, D)
    q_real = start + i < end
    if HAS_MASK:
        m_base = mask_ptr + b.to(tl.int64) * smb + start
        q_real &= tl.load(m_base + i, mask=q_real, other=0) != 0
    q_base = q_ptr + b.to(tl.int64) * sqb + hd.to(tl.int64) * sqh + start.to(tl.int64) * sqt
    k_base = k_ptr + b.to(tl.int64) * skb + hd.to(tl.int64) * skh + start.to(tl.int64) * skt
    v_base = v_ptr + b.to(tl.int64) * svb + hd.to(tl.int64) * svh + start.to(tl.int64) * svt
    q = tl.load(q_base + i[:, None] * sqt + d[None, :], mask=(start + i < end)[:, None], other=0.0)
    m = tl.full((BLOCK_M,), NEG, dtype=tl.float32)
    den = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    hi = end - start
    if CAUSAL:
        hi = tl.minimum(hi, qb * BLOCK_M + BLOCK_M)
    for j0 in range(0, hi, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        key_ok = j < hi
        if HAS_MASK:
            key_ok &= tl.load(m_base + j, mask=key_ok, other=0) != 0
        kb = tl.load(k_base + j[:, None] * skt + d[None, :], mask=key_ok[:, None], other=0.0)
        vb = tl.load(v_base + j[:, None] * svt + d[None, :], mask=key_ok[:, None], other=0.0)
        s = _dot(q, tl.trans(kb), None, PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        ok = key_ok[None, :]
        if CAUSAL:
            ok &= j[None, :] <= i[:, None]
        s = tl.where(ok, s, NEG)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        den = den * alpha + tl.sum(p, axis=1)
        acc = _dot(p.to(vb.dtype), vb, acc * alpha[:, None], PRECISION)
        m = m_new
    out = acc / tl.maximum(den, 1e-30)[:, None]
    if HAS_S:
        s_base = s_ptr + b.to(tl.int64) * ssb + hd.to(tl.int64) * ssh + c.to(tl.int64) * ssn
        state = tl.load(s_base + d[:, None] * D + d[None, :])  # (D, D): g S_c / sqrt(D)
        out = _dot(q, state, out, PRECISION)
    out = tl.where(q_real[:, None], out, 0.0)
    o_base = o_ptr + b.to(tl.int64) * sob + hd.to(tl.int64) * soh + start.to(tl.int64) * sot
    in_chunk = (start + i < end)[:, None]
    tl.store(o_base + i[:, None] * sot + d[None, :], out.to(o_ptr.dtype.element_ty), mask=in_chunk)


def _pow2_block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def _int8(x: Tensor) -> Tensor:
    return x.to(torch.int8).contiguous()


def _batch_stride(x: Tensor) -> int:
    """Stride of dim 0, or 0 for batch 1 (a cache or mask shared by all B queries)."""
    return 0 if x.shape[0] == 1 else x.stride(0)


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device, priority=SIDE_STREAM_PRIORITY)
    return _SIDE_STREAMS[device]


class _Launches:
    """The four launches of one call over shared tensors; states/gemm/output take a range of chunks."""

    def __init__(self, q, k, v, r, h, cache, mask, chunk_size, causal, retrieval, gate, want_logits):
        B, H, T, D = q.shape
        self.q, self.k, self.v, self.r, self.h, self.mask = q, k, v, r, h, mask
        self.B, self.H, self.T, self.D, self.E = B, H, T, D, D * D
        self.N, self.C = math.ceil(T / chunk_size), min(chunk_size, T)
        self.causal, self.past = causal, retrieval == "past"
        self.precision = "ieee" if q.dtype == torch.float32 else "tf32"  # ieee: fp32 dots stay fp32
        dev, dtype, N = q.device, q.dtype, self.N
        self.states = torch.empty(B, H, N, D, D, device=dev, dtype=dtype)
        self.out = torch.empty(B, H, T, D, device=dev, dtype=dtype)
        states, keys, valid = cache
        self.M = 0 if states is None else states.shape[2]
        self.retrieves = not (self.M == 0 and N == 1)  # else there is nothing to retrieve from
        self.gemm_block_m = _pow2_block(N, 16, GEMM_BLOCK_M)
        self.S = self.P = self.logits = None
        if want_logits:
            self.logits = q.new_full((B, H, N, self.M + N), -math.inf, dtype=_logit_dtype(dtype))
        if not self.retrieves:
            return
        if mask is not None:  # chunks holding at least one real token
            padded = torch.nn.functional.pad(mask, (0, N * self.C - T))
            self.chunk_valid = _int8(padded.view(B, N, self.C).amax(-1))  # (B, N)
        else:
            self.chunk_valid = torch.ones(1, N, device=dev, dtype=torch.int8)
        if self.M:
            self.ckeys, self.cvalid = keys.to(r.dtype), _int8(valid)  # (Bc, H, M, D), (Bc, M)
            cstates = states.to(dtype).flatten(3)  # (Bc, H, M, E)
            self.cstates = cstates if cstates.stride(-1) == 1 else cstates.contiguous()
        else:  # placeholders, never read (loops over M = 0 columns run no iteration)
            self.ckeys, self.cvalid, self.cstates = h, self.chunk_valid, self.states.flatten(3)
        self.gate = (gate if gate is not None else q.new_ones(H)).float().contiguous()
        self.P = torch.empty(B, H, N, self.M + N, device=dev, dtype=dtype)
        self.S = torch.empty(B, H, N, self.E, device=dev, dtype=dtype)

    def chunk_states(self, lo: int, hi: int) -> None:
        k, v, mask, st = self.k, self.v, self.mask, self.states
        _states_kernel[(hi - lo, self.B * self.H)](
            k, v, mask if mask is not None else k, st,
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            0 if mask is None else mask.stride(0), st.stride(0), st.stride(1), st.stride(2),
            self.H, self.T, self.C, lo, D=self.D, BLOCK_T=_pow2_block(self.C, 16, STATES_BLOCK_T),
            HAS_MASK=mask is not None, PRECISION=self.precision,
            num_warps=STATES_WARPS if self.D <= 64 else 8,
        )  # fmt: skip

    def probs(self) -> None:
        r, h, P = self.r, self.h, self.P
        lg = self.logits if self.logits is not None else P
        block_c = _pow2_block(self.N, 16, PROBS_BLOCK_C)
        _probs_kernel[(triton.cdiv(self.N, block_c), self.B * self.H)](
            r, h, self.ckeys, self.cvalid, self.chunk_valid, self.gate, P, lg,
            r.stride(0), r.stride(1), r.stride(2), h.stride(0), h.stride(1), h.stride(2),
            _batch_stride(self.ckeys), self.ckeys.stride(1), self.ckeys.stride(2),
            _batch_stride(self.cvalid), _batch_stride(self.chunk_valid),
            P.stride(0), P.stride(1), P.stride(2), lg.stride(0), lg.stride(1), lg.stride(2),
            self.H, self.N, self.M, self.D**-0.5, D=self.D, BLOCK_C=block_c, BLOCK_I=PROBS_BLOCK_I,
            PAST=self.past, WRITE_LOGITS=self.logits is not None, PRECISION=self.precision, num_warps=4,
        )  # fmt: skip

    def gemm(self, lo: int, hi: int) -> None:
        P, F, cf, S = self.P, self.states.flatten(3), self.cstates, self.S
        block_m, block_e = self.gemm_block_m, min(GEMM_BLOCK_E, self.E)
        grid = (triton.cdiv(hi - lo, block_m) * triton.cdiv(self.E, block_e), self.B * self.H)
        _retrieve_kernel[grid](
            P, F, cf, S,
            P.stride(0), P.stride(1), P.stride(2), F.stride(0), F.stride(1), F.stride(2),
            _batch_stride(cf), cf.stride(1), cf.stride(2), S.stride(0), S.stride(1), S.stride(2),
            self.H, self.N, self.M, self.E, lo, hi,
            BLOCK_M=block_m, BLOCK_E=block_e, BLOCK_K=GEMM_BLOCK_K, GROUP_M=GEMM_GROUP_M, PAST=self.past,
            PRECISION=self.precision, num_warps=GEMM_WARPS if block_m * block_e >= 128 * 128 else 4,
            num_stages=GEMM_STAGES,
        )  # fmt: skip

    def output(self, lo: int, hi: int) -> None:
        q, k, v, mask, S, o = self.q, self.k, self.v, self.mask, self.S, self.out
        block_m = _pow2_block(self.C, 16, LOCAL_BLOCK_M)
        _output_kernel[((hi - lo) * triton.cdiv(self.C, block_m), self.B * self.H)](
            q, k, v, mask if mask is not None else q, S if S is not None else q, o,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), 0 if mask is None else mask.stride(0),
            *((S.stride(0), S.stride(1), S.stride(2)) if S is not None else (0, 0, 0)),
            o.stride(0), o.stride(1), o.stride(2), self.H, self.T, self.C, LOG2E / math.sqrt(self.D), lo,
            D=self.D, BLOCK_M=block_m, BLOCK_N=_pow2_block(self.C, 16, LOCAL_BLOCK_N), CAUSAL=self.causal,
            HAS_MASK=mask is not None, HAS_S=S is not None, PRECISION=self.precision,
            num_warps=LOCAL_WARPS if block_m * self.D >= 128 * 64 else 4, num_stages=LOCAL_STAGES,
        )  # fmt: skip


def _segments(run: _Launches) -> list[tuple[int, int]]:
    """Query-chunk ranges, block-aligned: several when the retrieval GEMM can overlap the memory-bound
    launches (past retrieval, N >= OVERLAP_MIN_CHUNKS), else one."""
    n, N = OVERLAP_SEGMENTS, run.N
    if n <= 1 or not run.retrieves or not run.past or N < OVERLAP_MIN_CHUNKS:
        return [(0, N)]
    step = triton.cdiv(triton.cdiv(N, n), run.gemm_block_m) * run.gemm_block_m
    return [(lo, min(lo + step, N)) for lo in range(0, N, step)]


def fused_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r: Tensor,
    h: Tensor,
    cached_states: Tensor | None,
    cached_keys: Tensor | None,
    cached_valid: Tensor | None,
    *,
    chunk_size: int,
    causal: bool,
    retrieval: str,
    key_padding_mask: Tensor | None,
    gate: Tensor | None,
    return_retrieval: bool,
) -> BSBRCacheOutput:
    """`bsbr_attention_with_cache` on the fused kernels; arguments already validated by the caller
    (model.bsbr._check_args) and supported (`unsupported_reason` is None).

    With several segments (long inputs, past retrieval) the compute-bound GEMM of segment s runs on a
    side stream while the main stream computes later states and earlier outputs (memory-bound).

    Args:
        q, k, v: (B, H, T, D); r, h: (B, H, N, D); cached_states: (Bc, H, M, D, D) or None;
        cached_keys: (Bc, H, M, D); cached_valid: (Bc, M) bool; key_padding_mask: (B, T) bool or None;
        gate: (H,) or None (1).
    Returns:
        BSBRCacheOutput(out (B, H, T, D), states (B, H, N, D, D), logits (B, H, N, M + N) or None).
    """
    mask = None if key_padding_mask is None else _int8(key_padding_mask)  # (B, T)
    # The kernels take any strides but a unit one along D (the encoder's transposed views have it).
    q, k, v, r, h = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, r, h))
    if cached_keys is not None and cached_keys.stride(-1) != 1:
        cached_keys = cached_keys.contiguous()
    cache = (cached_states, cached_keys, cached_valid)
    run = _Launches(q, k, v, r, h, cache, mask, chunk_size, causal, retrieval, gate, return_retrieval)
    segments = _segments(run)
    side = _side_stream(q.device) if len(segments) > 1 and q.is_cuda else None
    main = torch.cuda.current_stream(q.device) if side is not None else None
    if run.retrieves:
        if side is not None:
            side.wait_stream(main)  # inputs ready
        with torch.cuda.stream(side) if side is not None else _nullcontext():
            run.probs()
    done = []
    for lo, hi in segments:
        run.chunk_states(lo, hi)
        if not run.retrieves:
            continue
        if side is None:
            run.gemm(lo, hi)
            continue
        side.wait_stream(main)  # the states of chunks < hi
        with torch.cuda.stream(side):
            run.gemm(lo, hi)
            done.append(side.record_event())
    for s, (lo, hi) in enumerate(segments):
        if side is not None:
            main.wait_event(done[s])
        run.output(lo, hi)
    # Every side-stream launch precedes an event main waited for, so the caching allocator may reuse
    # P and S once they are freed on main.
    return BSBRCacheOutput(run.out, run.states, run.logits)
