"""BSBR attention: Block Sparse attention with Block Retrieval (fast op, cache op, naive references).

Shape legend
    B  batch                       H  heads                       D  head size
    T  tokens                      C  chunk size                  N  = ceil(T / C) chunks of the input
    M  chunks in a cache           K  top-k retrieved chunks      E  stored state size: D*D, or the
                                                                     compressed size D*D / f

Per head h and token t of chunk c = c(t):

    o_t    = local_t + g_h * (q_t / sqrt(D))^T S_c
    local_t = softmax(q_t K_c^T / sqrt(D)) V_c       own chunk only; bidirectional or token-causal;
                                                     padded keys are never attended
    F_j    = K_j^T V_j / n_j                         chunk state: the MEAN of k v^T over the n_j real
                                                     tokens of chunk j (0 for an all-padding chunk), so
                                                     its scale does not depend on the chunk length
    p_cj   = softmax_j(r_c . h_j / sqrt(D))          over the chunks that chunk c may see:
                                                     retrieval="past": j < c,  "all": j != c;
                                                     all-padding chunks are never seen; top_k keeps the
                                                     K largest logits
    S_c    = sum_j p_cj F_j                          0 when chunk c sees no chunk

Outputs at padded query positions are 0. `bsbr_attention_with_cache` adds M cached chunks (states and
meta keys of earlier chunks) that every new chunk may see, which is how a document is streamed block by
block and how a question chunk retrieves from a document encoded earlier.

The fast path never builds a T x T tensor: local attention is SDPA over (B*H, N, C, D) blocks (the
FlashAttention kernel on CUDA when nothing is padded), states are one batched matmul, dense retrieval is
P @ F with P (B, H, N, M+N) and F (B, H, M+N, D*D) (memory O(N^2 + N D^2); with past retrieval, row
groups skip P's empty upper triangle), top-k retrieval is an `embedding_bag` weighted gather-sum
(no (N, K, D, D) tensor). Per head: time O(T C D + N^2 D^2) dense, O(T C D + N^2 D + N K D^2) top-k;
memory O(T D + N^2 + N D^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

RETRIEVAL_MODES = ("past", "all")
ROW_GROUP_CHUNKS, MAX_ROW_GROUPS = 512, 8  # past retrieval: one row group per 512 query chunks, up to 8
StateMap = Callable[[Tensor], Tensor]
# True: CUDA forward-only calls use the Triton kernels of model/bsbr_triton.py where they support the call.
# Off until a GPU run has checked them against the reference (docs/BENCHMARKS.md, "Fused Triton forward").
FUSED_KERNELS = False


class BSBRCacheOutput(NamedTuple):
    """Result of `bsbr_attention_with_cache`.

    out: (B, H, T, D). states: (B, H, N, D, D), or (B, H, N, E) codes when `compress` is given: what a
    cache stores for the new chunks. logits: (B, H, N, M + N) retrieval logits, -inf where not retrieved
    (invisible, or outside the top-k), or None unless asked for.
    """

    out: Tensor
    states: Tensor
    logits: Tensor | None


def _fused_kernels(q, tensors, top_k, dropout_p, compress) -> Callable[..., BSBRCacheOutput] | None:
    """model.bsbr_triton.fused_forward where it serves the call (CUDA, Triton importable, options it
    supports and FUSED_KERNELS on), else None: the PyTorch path below."""
    if not (FUSED_KERNELS and q.is_cuda):
        return None
    try:
        from model import bsbr_triton  # lazy: model/ imports without Triton
    except ImportError:
        return None
    if bsbr_triton.unsupported_reason(q, tensors, top_k, dropout_p, compress is not None) is not None:
        return None
    return bsbr_triton.fused_forward


def _check_args(q, k, v, r, h, chunk_size, causal, retrieval, top_k, key_padding_mask, gate) -> int:
    """Validate shapes and options; returns N."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one (B, H, T, D) shape, got {q.shape}, {k.shape}, {v.shape}")
    B, H, T, D = q.shape
    if T < 1 or chunk_size < 1:
        raise ValueError(f"need T >= 1 and chunk_size >= 1, got T={T}, chunk_size={chunk_size}")
    N = math.ceil(T / chunk_size)
    if r.shape != (B, H, N, D) or h.shape != (B, H, N, D):
        raise ValueError(f"r and h must be (B, H, ceil(T/C), D) = {(B, H, N, D)}, got {r.shape}, {h.shape}")
    if retrieval not in RETRIEVAL_MODES:
        raise ValueError(f"retrieval must be one of {RETRIEVAL_MODES}, got {retrieval!r}")
    if causal and retrieval == "all":
        raise ValueError("causal=True needs retrieval='past': with 'all' a chunk would read later chunks")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if key_padding_mask is not None and (
        key_padding_mask.shape != (B, T) or key_padding_mask.dtype != torch.bool
    ):
        raise ValueError(f"key_padding_mask must be a (B, T) = {(B, T)} bool tensor")
    if gate is not None and gate.shape != (H,):
        raise ValueError(f"gate must have shape (H,) = {(H,)}, got {tuple(gate.shape)}")
    return N


def _logit_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16 logits overflow once finfo.min is involved; bf16 shares fp32's range (as under autocast).
    return torch.float32 if dtype == torch.float16 else dtype


def _visibility(chunk_valid: Tensor, cached_valid: Tensor | None, retrieval: str) -> Tensor:
    """Which chunks each new chunk may retrieve.

    Args:
        chunk_valid: (Bv, N) bool, new chunks holding at least one real token.
        cached_valid: (Bc, M) bool or None.
    Returns:
        (Bv', 1, N, M + N) bool: cached chunks first, then the new ones.
    """
    N = chunk_valid.shape[1]
    idx = torch.arange(N, device=chunk_valid.device)
    order = idx[None, :] < idx[:, None] if retrieval == "past" else idx[None, :] != idx[:, None]  # (N, N)
    visible = order[None] & chunk_valid[:, None, :]  # (Bv, N, N)
    if cached_valid is not None and cached_valid.shape[1] > 0:
        Bv = max(visible.shape[0], cached_valid.shape[0])
        cached = cached_valid[:, None, :].expand(Bv, N, -1)  # (Bv, N, M)
        visible = torch.cat([cached, visible.expand(Bv, -1, -1)], dim=-1)  # (Bv, N, M + N)
    return visible[:, None]


def _local_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout_p: float
) -> Tensor:
    """Softmax attention inside each chunk.

    Args:
        q, k, v: (B, H, N, C, D) contiguous.
        mask: (B, N, C) bool, True = real token; None = no padding anywhere.
    Returns:
        (B*H*N, C, D); rows of padded queries hold garbage (finite), zeroed by the caller.
    """
    B, H, N, C, D = q.shape
    if mask is None:  # no mask at all: the FlashAttention kernel on CUDA
        out = F.scaled_dot_product_attention(
            q.view(B * H, N, C, D),
            k.view(B * H, N, C, D),
            v.view(B * H, N, C, D),
            dropout_p=dropout_p,
            is_causal=causal,
        )  # (B*H, N, C, D)
        return out.reshape(B * H * N, C, D)  # a view unless the kernel returned another layout
    eye = torch.eye(C, dtype=torch.bool, device=q.device)
    allowed = mask[:, :, None, :]  # (B, N, 1, C) keys
    if causal:
        allowed = allowed & torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # A padded query may attend to itself, so no row is empty (no NaN); the caller zeroes its output.
    allowed = (allowed | eye).reshape(B * N, 1, C, C)  # (B*N, 1, C, C)

    def blocks(x: Tensor) -> Tensor:  # (B, H, N, C, D) -> (B*N, H, C, D), a view when B == 1 or N == 1
        return x.transpose(1, 2).reshape(B * N, H, C, D)

    out = F.scaled_dot_product_attention(
        blocks(q), blocks(k), blocks(v), attn_mask=allowed, dropout_p=dropout_p
    )
    return out.view(B, N, H, C, D).transpose(1, 2).reshape(B * H * N, C, D)


def chunk_states(k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Chunk states F_j = K_j^T V_j / n_j (mean over real tokens; 0 for an all-padding chunk).

    Args:
        k, v: (B, H, N, C, D).
        mask: (B, N, C) bool, True = real token, or None (every token real).
    Returns:
        (B, H, N, D, D).
    """
    B, H, N, C, D = k.shape
    if mask is None:  # the 1/C scale in the GEMM epilogue; beta=0 ignores the 0-dim `input`
        kt = k.reshape(B * H * N, C, D).transpose(1, 2)  # (B*H*N, D, C)
        out = torch.baddbmm(k.new_zeros(()), kt, v.reshape(B * H * N, C, D), beta=0, alpha=1 / C)
        return out.view(B, H, N, D, D)
    weight = mask.to(k.dtype) / mask.sum(-1, keepdim=True).clamp(min=1)  # (B, N, C)
    k = k * weight[:, None, :, :, None]  # (B, H, N, C, D), padded keys -> 0
    return torch.matmul(k.transpose(-1, -2), v)  # (B, H, N, D, D)


def _matmul_shared_batch(p: Tensor, x: Tensor) -> Tensor:
    """p @ x where x may have batch 1 shared by all of p's batch, without copying x B times.

    Args:
        p: (B, H, N, M); x: (B or 1, H, M, E), possibly a transposed view.
    Returns:
        (B, H, N, E).
    """
    B, H, N, M = p.shape
    if x.shape[0] == B:
        return torch.matmul(p, x)
    out = torch.matmul(p.transpose(0, 1).reshape(H, B * N, M), x[0])  # (H, B*N, E)
    return out.view(H, B, N, -1).transpose(0, 1)


def _gather_sum(p: Tensor, idx: Tensor, table: Tensor, offset: int) -> Tensor:
    """sum_k p[..., k] * table[b, h, idx[..., k] - offset] over the selected rows that fall in `table`.

    Args:
        p: (B, H, N, K) weights; idx: (B, H, N, K) chunk indices into the concatenation [cache, new].
        table: (Bt, H, L, E) with Bt in {1, B}, rows offset .. offset + L - 1 of that concatenation.
    Returns:
        (B, H, N, E).
    """
    B, H, N, K = idx.shape
    Bt, _, L, E = table.shape
    local = idx - offset
    inside = (local >= 0) & (local < L)
    base = torch.arange(Bt * H, device=idx.device).view(Bt, H, 1, 1) * L  # (Bt, H, 1, 1)
    rows = base + local.clamp(0, L - 1)  # (B, H, N, K); outside rows point at a valid row with weight 0
    weights = p * inside
    dtype = table.dtype
    # CUDA has no bf16 backward for embedding_bag's per-sample weights (torch 2.11): go through fp32.
    upcast = dtype == torch.bfloat16 and torch.is_grad_enabled() and (table.requires_grad or p.requires_grad)
    if upcast:
        table, weights = table.float(), weights.float()
    out = F.embedding_bag(
        rows.reshape(-1, K),
        table.reshape(Bt * H * L, E),
        per_sample_weights=weights.reshape(-1, K),
        mode="sum",
    )  # (B*H*N, E)
    return out.view(B, H, N, E).to(dtype)


def _retrieve_rows(rs, h, codes, cached_codes, cached_keys, visible, top_k, weight, want_logits):
    """Retrieval for query chunks whose visible new chunks all lie in h's first b rows.

    Args:
        rs: (B, H, n, D) meta queries / sqrt(D); h: (B, H, b, D) new meta keys; codes: (B, H, N, E) all
        new stored states (N >= b); cached_codes: (Bc, H, M, E) or None; cached_keys: (Bc, H, M, D) or
        None; visible: (Bv, 1, n, M + b) bool; weight: (Bv, H, n) factor on each row's p, or None.
    Returns:
        S: (B, H, n, E) = weight * sum_j p_j z_j; logits (B, H, n, M + b), -inf where not retrieved.
    """
    b, M = h.shape[2], 0 if cached_keys is None else cached_keys.shape[2]
    logits = torch.matmul(rs, h.transpose(-1, -2))  # (B, H, n, b)
    if M:
        cached_logits = _matmul_shared_batch(rs, cached_keys.transpose(-1, -2))  # (B, H, n, M)
        logits = torch.cat([cached_logits, logits], dim=-1)  # (B, H, n, M + b)
    # finfo.min, not -inf: a row that sees nothing stays finite (uniform), and its weight is 0.
    logits = logits.masked_fill_(~visible, torch.finfo(logits.dtype).min)
    if top_k is None:
        p = torch.softmax(logits, dim=-1).to(codes.dtype)  # (B, H, n, M + b)
        p = p if weight is None else p * weight[..., None].to(p.dtype)
        S = torch.matmul(p[..., M:], codes[:, :, :b])  # (B, H, n, E)
        if M:
            S = S + _matmul_shared_batch(p[..., :M], cached_codes)
        return S, (logits.masked_fill(~visible, -math.inf) if want_logits else None)
    vals, idx = logits.topk(min(top_k, M + b), dim=-1)  # (B, H, n, K)
    p = torch.softmax(vals, dim=-1).to(codes.dtype)
    p = p if weight is None else p * weight[..., None].to(p.dtype)
    S = _gather_sum(p, idx, codes, M)
    if M:
        S = S + _gather_sum(p, idx, cached_codes, 0)
    if not want_logits:
        return S, None
    chosen = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
    return S, logits.masked_fill(~(chosen & visible), -math.inf)


def _retrieve(r, h, codes, cached_codes, cached_keys, visible, top_k, weight, past, want_logits):
    """Retrieved (stored-form) states of every query chunk.

    Args:
        r, h: (B, H, N, D); codes: (B, H, N, E); cached_codes: (Bc, H, M, E) or None;
        cached_keys: (Bc, H, M, D) or None; visible: (Bv, 1, N, M + N) bool; top_k: int or None;
        weight: (Bv, H, N) factor on each query chunk's p, or None; past: retrieval == "past".
    Returns:
        S: (B, H, N, E); logits: (B, H, N, M + N) with -inf where not retrieved, or None.
    """
    B, H, N, D = r.shape
    M = 0 if cached_keys is None else cached_keys.shape[2]
    dtype = _logit_dtype(r.dtype)
    rs, h = r.to(dtype) * D**-0.5, h.to(dtype)
    cached_keys = None if M == 0 else cached_keys.to(dtype)
    # With past retrieval, query chunks [a, b) see no new chunk >= b: row groups skip the empty upper
    # triangle of P (8 groups do 56% of the N^2 work and memory traffic).
    groups = max(1, min(MAX_ROW_GROUPS, N // ROW_GROUP_CHUNKS)) if past else 1
    bounds = [N * g // groups for g in range(groups + 1)]
    parts, logits = [], None
    if want_logits:
        logits = r.new_full((B, H, N, M + N), -math.inf, dtype=dtype)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        b_cols = b if past else N
        rows_weight = None if weight is None else weight[:, :, a:b]
        S, lg = _retrieve_rows(
            rs[:, :, a:b], h[:, :, :b_cols], codes, cached_codes, cached_keys,
            visible[:, :, a:b, : M + b_cols], top_k, rows_weight, want_logits,
        )  # fmt: skip
        parts.append(S)
        if want_logits:
            logits[:, :, a:b, : M + b_cols] = lg
    return (parts[0] if groups == 1 else torch.cat(parts, dim=2)), logits


def bsbr_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r: Tensor,
    h: Tensor,
    *,
    chunk_size: int,
    causal: bool = False,
    retrieval: str = "past",
    top_k: int | None = None,
    key_padding_mask: Tensor | None = None,
    gate: Tensor | None = None,
    return_retrieval: bool = False,
    dropout_p: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """BSBR attention, fast path (pure PyTorch, CPU and CUDA, fp32/bf16/fp16/fp64).

    Args:
        q, k, v: (B, H, T, D). T need not be a multiple of chunk_size.
        r, h: (B, H, N, D) meta queries and meta keys of the N = ceil(T / chunk_size) chunks. With
            causal=True, r_c must only summarise tokens before chunk c (the caller's duty).
        chunk_size: C.
        causal: token-causal local attention (needs retrieval="past").
        retrieval: "past" (chunk c sees chunks j < c) or "all" (j != c).
        top_k: keep only the K best visible chunks per query chunk; None = dense softmax.
        key_padding_mask: (B, T) bool, True = real token; None = all real.
        gate: (H,) per-head retrieval gate g; None means 1.
        return_retrieval: also return the retrieval logits.
        dropout_p: dropout on the local attention probabilities (training only).
    Returns:
        out (B, H, T, D), and with return_retrieval the logits (B, H, N, N): r_c . h_j / sqrt(D) where
        retrieved, -inf elsewhere (invisible, or outside the top-k).
    """
    res = bsbr_attention_with_cache(
        q, k, v, r, h, None, None, None, chunk_size=chunk_size, causal=causal, retrieval=retrieval,
        top_k=top_k, key_padding_mask=key_padding_mask, gate=gate, return_retrieval=return_retrieval,
        dropout_p=dropout_p,
    )  # fmt: skip
    return (res.out, res.logits) if return_retrieval else res.out


def bsbr_attention_with_cache(
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
    causal: bool = False,
    retrieval: str = "past",
    top_k: int | None = None,
    key_padding_mask: Tensor | None = None,
    gate: Tensor | None = None,
    return_retrieval: bool = False,
    dropout_p: float = 0.0,
    compress: StateMap | None = None,
    decompress: StateMap | None = None,
) -> BSBRCacheOutput:
    """BSBR attention of N new chunks that also retrieve from M cached chunks (streaming form).

    Every new chunk may see every valid cached chunk, plus new chunks j < c ("past") or j != c ("all").
    With retrieval="past", encoding chunks in blocks with this function gives exactly the result of one
    `bsbr_attention` pass over all of them.

    Args:
        q, k, v, r, h, chunk_size, causal, retrieval, top_k, key_padding_mask, gate, dropout_p: as in
            `bsbr_attention`.
        cached_states: (Bc, H, M, D, D), or (Bc, H, M, E) codes when compressing; Bc is 1 (shared by
            the B queries) or B. None = no cache.
        cached_keys: (Bc, H, M, D) meta keys of the cached chunks.
        cached_valid: (Bc, M) bool, False for all-padding cached chunks.
        compress: maps flattened states (..., D*D) to codes (..., E); the cache then holds codes.
        decompress: AFFINE map from codes (..., E) back to (..., D*D). S_c = sum_j p_cj decompress(z_j).
    Returns:
        BSBRCacheOutput(out (B, H, T, D), states of the new chunks in stored form, logits
        (B, H, N, M + N) or None).
    """
    N = _check_args(q, k, v, r, h, chunk_size, causal, retrieval, top_k, key_padding_mask, gate)
    if (compress is None) != (decompress is None):
        raise ValueError("give both compress and decompress, or neither")
    if cached_states is not None and (cached_keys is None or cached_valid is None):
        raise ValueError("a cache needs cached_states, cached_keys and cached_valid")
    fused = _fused_kernels(q, (q, k, v, r, h, gate, cached_states, cached_keys), top_k, dropout_p, compress)
    if fused is not None:  # the Triton forward (model/bsbr_triton.py): same function, one pass fewer
        return fused(
            q, k, v, r, h, cached_states, cached_keys, cached_valid, chunk_size=chunk_size,
            causal=causal, retrieval=retrieval, key_padding_mask=key_padding_mask, gate=gate,
            return_retrieval=return_retrieval,
        )  # fmt: skip
    B, H, T, D = q.shape
    C = min(chunk_size, T)  # one chunk: no need to pad it to chunk_size
    pad = N * C - T
    mask = None
    if key_padding_mask is not None or pad:
        mask = key_padding_mask if key_padding_mask is not None else q.new_ones(B, T, dtype=torch.bool)
        mask = F.pad(mask, (0, pad), value=False).view(B, N, C)  # (B, N, C)
    # (B, H, N, C, D) contiguous: free for contiguous inputs (the benchmark), one copy for transposed ones
    q5, k5, v5 = (
        (F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(B, H, N, C, D).contiguous() for x in (q, k, v)
    )

    local = _local_attention(q5, k5, v5, mask, causal, dropout_p)  # (B*H*N, C, D)
    states = chunk_states(k5, v5, mask)  # (B, H, N, D, D)
    stored = states if compress is None else compress(states.flatten(-2))  # (B, H, N, D, D) or (B, H, N, E)

    M = 0 if cached_states is None else cached_states.shape[2]
    chunk_valid = mask.any(-1) if mask is not None else q.new_ones(1, N, dtype=torch.bool)  # (Bv, N)
    visible = _visibility(chunk_valid, cached_valid if M else None, retrieval)  # (Bv, 1, N, M + N)
    logits = None
    retrieves = not (M == 0 and N == 1)  # else there is nothing to retrieve from
    if not retrieves:
        out = local
        if return_retrieval:
            logits = q.new_full((B, H, 1, 1), -math.inf, dtype=_logit_dtype(q.dtype))
    else:
        codes = stored.flatten(3)  # (B, H, N, E)
        cached = None if M == 0 else cached_states.flatten(3).to(codes.dtype)  # (Bc, H, M, E)
        g = gate if gate is not None else q.new_ones(H)
        coef = g.view(1, H, 1) * D**-0.5 * visible.any(-1)  # (Bv, H, N): 0 where nothing is visible
        weight = coef if decompress is None else None  # g / sqrt(D) folded into p (cheapest place)
        past = retrieval == "past"
        S, logits = _retrieve(
            r, h, codes, cached, cached_keys, visible, top_k, weight, past, return_retrieval
        )
        if decompress is not None:  # affine, and the weights sum to 1: up(sum p z) = sum p up(z)
            S = decompress(S) * coef[..., None].to(S.dtype)
        S = S.reshape(B * H * N, D, D).to(q.dtype)  # g S_c / sqrt(D)
        qs = q5.reshape(B * H * N, C, D)
        # local + q S (B*H*N, C, D); in place when autograd does not need SDPA's output (saves T*H*D)
        out = torch.baddbmm(local, qs, S) if local.requires_grad else local.baddbmm_(qs, S)
    out = out.view(B, H, N, C, D)
    if mask is not None:  # padded queries -> 0; in place unless `out` is SDPA's output kept by autograd
        padded = ~mask[:, None, :, :, None]
        in_place = retrieves or not out.requires_grad
        out = out.masked_fill_(padded, 0) if in_place else out.masked_fill(padded, 0)
    out = out.view(B, H, N * C, D)[:, :, :T]  # (B, H, T, D)
    return BSBRCacheOutput(out, stored, logits)


def bsbr_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r: Tensor,
    h: Tensor,
    *,
    chunk_size: int,
    causal: bool = False,
    retrieval: str = "past",
    top_k: int | None = None,
    key_padding_mask: Tensor | None = None,
    gate: Tensor | None = None,
    return_retrieval: bool = False,
    dropout_p: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Naive reference of `bsbr_attention` (same signature and result; float64 inside, slow)."""
    res = bsbr_attention_with_cache_reference(
        q, k, v, r, h, None, None, None, chunk_size=chunk_size, causal=causal, retrieval=retrieval,
        top_k=top_k, key_padding_mask=key_padding_mask, gate=gate, return_retrieval=return_retrieval,
        dropout_p=dropout_p,
    )  # fmt: skip
    return (res.out, res.logits) if return_retrieval else res.out


def bsbr_attention_with_cache_reference(
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
    causal: bool = False,
    retrieval: str = "past",
    top_k: int | None = None,
    key_padding_mask: Tensor | None = None,
    gate: Tensor | None = None,
    return_retrieval: bool = False,
    dropout_p: float = 0.0,
    compress: StateMap | None = None,
    decompress: StateMap | None = None,
) -> BSBRCacheOutput:
    """Naive reference of `bsbr_attention_with_cache`: same signature and result, loops over batch, head and
    chunk in float64, straight from the definition."""
    N = _check_args(q, k, v, r, h, chunk_size, causal, retrieval, top_k, key_padding_mask, gate)
    dtype = q.dtype
    if dropout_p:
        raise ValueError("the reference has no dropout")
    B, H, T, D = q.shape
    C, dt = chunk_size, torch.float64
    q, k, v, r, h = (x.to(dt) for x in (q, k, v, r, h))
    real = key_padding_mask if key_padding_mask is not None else torch.ones(B, T, dtype=torch.bool)
    g = gate.to(dt) if gate is not None else torch.ones(H, dtype=dt)
    M = 0 if cached_states is None else cached_states.shape[2]
    out = torch.zeros(B, H, T, D, dtype=dt)
    logits_out = torch.full((B, H, N, M + N), -math.inf, dtype=dt)
    stored_all = []
    for b in range(B):
        cb = b if cached_states is not None and cached_states.shape[0] > 1 else 0
        for hd in range(H):
            spans = [range(j * C, min(T, (j + 1) * C)) for j in range(N)]
            reals = [[t for t in span if real[b, t]] for span in spans]
            states = [k[b, hd, ts].T @ v[b, hd, ts] / max(len(ts), 1) for ts in reals]  # (D, D) each
            stored = [s if compress is None else compress(s.flatten()) for s in states]
            stored_all.append(torch.stack(stored))
            # Candidate chunks in the order [cached 0..M-1, new 0..N-1]: meta key and full state each.
            keys = [cached_keys[cb, hd, m] for m in range(M)] + [h[b, hd, j] for j in range(N)]
            full = [cached_states[cb, hd, m] for m in range(M)] + stored
            full = [s.to(dt) if decompress is None else decompress(s.flatten().to(dt)) for s in full]
            usable = [bool(cached_valid[cb, m]) for m in range(M)] + [bool(ts) for ts in reals]
            for c in range(N):
                seen = [
                    i
                    for i in range(M + N)
                    if usable[i] and (i < M or (i - M < c if retrieval == "past" else i - M != c))
                ]
                logits = {i: r[b, hd, c] @ keys[i].to(dt) / math.sqrt(D) for i in seen}
                if top_k is not None:
                    seen = sorted(seen, key=lambda i: -logits[i].item())[:top_k]
                S = torch.zeros(D, D, dtype=dt)
                if seen:
                    p = torch.softmax(torch.stack([logits[i] for i in seen]), dim=0)
                    S = torch.einsum("j,jde->de", p, torch.stack([full[i].reshape(D, D) for i in seen]))
                    for i in seen:
                        logits_out[b, hd, c, i] = logits[i].detach()
                ts = torch.tensor(reals[c], dtype=torch.long)  # real tokens of chunk c
                if len(ts) == 0:
                    continue
                scores = q[b, hd, ts] @ k[b, hd, ts].T / math.sqrt(D)  # (n_c, n_c) queries x keys
                if causal:
                    scores = scores.masked_fill(ts[None, :] > ts[:, None], -math.inf)
                local = torch.softmax(scores, dim=-1) @ v[b, hd, ts]  # (n_c, D)
                out[b, hd, ts] = local + g[hd] * (q[b, hd, ts] / math.sqrt(D)) @ S
    states = torch.stack(stored_all).view(B, H, N, *stored_all[0].shape[1:])
    logits = logits_out.to(_logit_dtype(dtype)) if return_retrieval else None
    return BSBRCacheOutput(out.to(dtype), states.to(dtype), logits)
