"""BSBR encoder: BERT (the all-MiniLM-L6-v2 layout) whose self-attention is BSBR attention.

Shape legend
    B  batch           T  tokens           C  chunk size        N  = ceil(T / C) new chunks
    M  cached chunks   L  layers           H  heads             D  head size      E  state size (D*D or D*D/f)

The input is split into chunks of C consecutive positions exactly as given (the caller decides chunk
contents). Position ids restart at 0 in every chunk, so with every gate at 0 the encoder computes what
BERT computes on each chunk separately. A `DocumentCache` keeps, per layer, each chunk's state and meta
key, and each chunk's mean output, so a document is encoded once (`encode_document`) and questions
later retrieve from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ingest.chunk import CHUNK_TOKENS
from model.bsbr import RETRIEVAL_MODES, bsbr_attention_with_cache

CACHE_FORMAT = "bsbr-document-cache"
CACHE_VERSION = 1


@dataclass
class BSBRConfig:
    """Hyper-parameters of a BSBR encoder (defaults: all-MiniLM-L6-v2 with 256-token chunks)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    chunk_size: int = CHUNK_TOKENS  # default tokens per chunk; forward(chunk_size=...) may override it
    causal: bool = False  # token-causal local attention; meta query of chunk c from chunk c-1
    retrieval: str = "past"  # "past": chunk c retrieves from chunks j < c; "all": j != c
    top_k: int | None = None  # retrieve only the k best chunks; None = dense softmax over all
    compression_factor: int | None = None  # learned D*D -> D*D/f state compression; None = off
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1  # on local attention probabilities; both only in training
    # the cache's chunk outputs: means of windows of this many tokens (several vectors per chunk);
    # None = one mean per chunk
    output_window: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "chunk_size",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.chunk_size > self.max_position_embeddings:
            raise ValueError(
                f"chunk_size {self.chunk_size} > max_position_embeddings {self.max_position_embeddings}"
            )
        if self.retrieval not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval must be one of {RETRIEVAL_MODES}, got {self.retrieval!r}")
        if self.causal and self.retrieval != "past":
            raise ValueError("causal=True needs retrieval='past'")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k!r}")
        f = self.compression_factor
        if f is not None and (not isinstance(f, int) or f < 1 or self.head_dim**2 % f):
            raise ValueError(
                f"compression_factor must be a positive int dividing head_dim**2 = {self.head_dim**2}"
            )
        w = self.output_window
        if w is not None and (not isinstance(w, int) or w < 1):
            raise ValueError(f"output_window must be a positive int or None, got {w!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BSBRConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown BSBRConfig keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class DocumentCache:
    """Per-layer chunk states and meta keys of encoded chunks, in document order.

    states: per layer (B, H, N, D, D), or (B, H, N, E) codes with state compression.
    keys: per layer (B, H, N, D) meta keys h_j.
    summaries: per layer (B, hidden) mean layer input of the LAST chunk (the next chunk's causal meta query).
    valid: (B, N) bool, False for all-padding chunks (never retrieved).
    outputs: (B, N, V, hidden) mean last-layer output of each of a chunk's V windows (the QA model's
        output retrieval level; V = 1 without BSBRConfig.output_window), all zeros for a window without
        real tokens; or None in caches saved without it. (B, N, hidden) from older caches becomes V = 1.
    """

    states: list[Tensor]
    keys: list[Tensor]
    summaries: list[Tensor]
    valid: Tensor
    outputs: Tensor | None = None

    def __post_init__(self) -> None:
        if self.outputs is not None and self.outputs.dim() == 3:
            self.outputs = self.outputs.unsqueeze(2)

    @property
    def n_chunks(self) -> int:
        return self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def nbytes(self) -> int:
        tensors = [*self.states, *self.keys, *self.summaries, self.valid]
        tensors += [self.outputs] if self.outputs is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)

    def append(self, other: DocumentCache) -> DocumentCache:
        """A new cache: this one's chunks, then `other`'s (a batch of 1 is broadcast to the other's)."""
        return DocumentCache.concat([self, other])

    @staticmethod
    def concat(caches: list[DocumentCache]) -> DocumentCache:
        """Chunks of all caches in order; batch-1 caches are broadcast to the largest batch. The result
        has outputs only if every part has them."""
        B = max(c.batch_size for c in caches)

        def cat(ts: list[Tensor], dim: int = 2) -> Tensor:  # along the chunk dim: 2 in (B, H, N, ...)
            return torch.cat([t.expand(B, *t.shape[1:]) for t in ts], dim=dim)

        n = len(caches[0].states)
        return DocumentCache(
            states=[cat([c.states[i] for c in caches]) for i in range(n)],
            keys=[cat([c.keys[i] for c in caches]) for i in range(n)],
            summaries=[caches[-1].summaries[i].expand(B, -1) for i in range(n)],
            valid=cat([c.valid for c in caches], dim=1),
            outputs=cat([c.outputs for c in caches], dim=1)
            if all(c.outputs is not None for c in caches)
            else None,
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DocumentCache:
        """Moved and/or cast (float tensors only) copy."""

        def mv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return DocumentCache(
            [mv(t) for t in self.states],
            [mv(t) for t in self.keys],
            [mv(t) for t in self.summaries],
            self.valid.to(device),
            mv(self.outputs) if self.outputs is not None else None,
        )

    def save(self, path: str | Path) -> None:
        """safetensors file with the format name and version in its metadata."""
        tensors = {"valid": self.valid}
        for i, (s, k, m) in enumerate(zip(self.states, self.keys, self.summaries, strict=True)):
            tensors |= {f"layers.{i}.states": s, f"layers.{i}.keys": k, f"layers.{i}.summaries": m}
        if self.outputs is not None:
            tensors["outputs"] = self.outputs
        meta = {"format": CACHE_FORMAT, "version": str(CACHE_VERSION), "num_layers": str(len(self.states))}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> DocumentCache:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != str(CACHE_VERSION):
            raise ValueError(f"{path} is not a {CACHE_FORMAT} v{CACHE_VERSION} file (metadata {meta})")
        t = load_file(str(path), device=device)
        n = int(meta["num_layers"])
        return cls(
            [t[f"layers.{i}.states"] for i in range(n)],
            [t[f"layers.{i}.keys"] for i in range(n)],
            [t[f"layers.{i}.summaries"] for i in range(n)],
            t["valid"],
            t.get("outputs"),
        )


@dataclass
class BSBREncoderOutput:
    last_hidden_state: Tensor  # (B, T, hidden)
    cache: DocumentCache | None  # cached chunks followed by this call's chunks, when asked for
    retrieval_logits: list[Tensor] | None  # per layer (B, H, N, M + N), -inf where not retrieved


def chunk_means(x: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of each chunk: x (B, T, hidden) with T <= N*C (the tail is padding), mask (B, N, C)
    bool -> (B, N, hidden)."""
    return window_means(x, mask, mask.shape[-1])[:, :, 0]


def window_means(x: Tensor, mask: Tensor, window: int) -> Tensor:
    """Masked mean of each window of `window` tokens of each chunk: x (B, T, hidden) with T <= N*C, mask
    (B, N, C) bool -> (B, N, V, hidden), V = ceil(C / window); a window without real tokens is zeros."""
    B, N, C = mask.shape
    V = math.ceil(C / window)
    x = F.pad(x, (0, 0, 0, N * C - x.shape[1])).view(B, N, C, -1)  # (B, N, C, hidden)
    if V * window != C:  # the last window of each chunk is short: pad it
        x, mask = F.pad(x, (0, 0, 0, V * window - C)), F.pad(mask, (0, V * window - C))
    m = mask.reshape(B, N, V, window).to(x.dtype)
    total = torch.einsum("bnvwd,bnvw->bnvd", x.reshape(B, N, V, window, -1), m)  # (B, N, V, hidden)
    return total / m.sum(-1, keepdim=True).clamp(min=1)


class BSBRAttention(nn.Module):
    """BERT self-attention block (projections, output dense, residual LayerNorm) with BSBR attention."""

    def __init__(self, config: BSBRConfig):
        super().__init__()
        c, d = config, config.hidden_size
        self.config = c
        self.query, self.key, self.value, self.output = (nn.Linear(d, d) for _ in range(4))
        self.norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout)
        self.meta_query, self.meta_key = nn.Linear(d, d), nn.Linear(d, d)  # chunk summary -> r, h (H*D)
        self.gate = nn.Parameter(torch.zeros(c.num_heads))  # 0: exactly the pretrained BERT at start
        self.state_down = self.state_up = None
        if c.compression_factor is not None:
            e = c.head_dim**2
            self.state_down, self.state_up = (
                nn.Linear(e, e // c.compression_factor),
                nn.Linear(e // c.compression_factor, e),
            )

    def reset_new_parameters(self) -> None:
        """Init of the parts BERT lacks: small meta projections, gate 0, state codec = a projection."""
        for lin in (self.meta_query, self.meta_key):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.gate)
        if self.state_down is not None:
            nn.init.orthogonal_(self.state_down.weight)  # orthonormal rows: up(down(F)) projects F
            with torch.no_grad():
                self.state_up.weight.copy_(self.state_down.weight.T)
            nn.init.zeros_(self.state_down.bias)
            nn.init.zeros_(self.state_up.bias)

    def _heads(self, x: Tensor) -> Tensor:  # (B, L, H*D) -> (B, H, L, D)
        B, L, _ = x.shape
        return x.view(B, L, self.config.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        key_padding_mask: Tensor | None,
        chunk_size: int,
        cache: tuple[Tensor, Tensor, Tensor, Tensor] | None,
        return_retrieval: bool,
    ):
        """One attention block.

        Args:
            x: (B, T, hidden) layer input. mask: (B, N, C) bool chunked real-token mask (tail padded).
            key_padding_mask: (B, T) bool, or None when every token is real.
            cache: (states (Bc, H, M, E or D, D), keys (Bc, H, M, D), valid (Bc, M), summary (Bc, hidden)).
        Returns:
            (B, T, hidden), (states (B, H, N, ...), keys (B, H, N, D), last summary (B, hidden)), logits.
        """
        c = self.config
        B, T, _ = x.shape
        summaries = chunk_means(x, mask)  # (B, N, hidden)
        meta_in = summaries
        if c.causal:  # r_c summarises chunk c-1 only (the cache's last chunk, or zeros, for the first)
            first = cache[3].expand(B, -1) if cache is not None else torch.zeros_like(summaries[:, 0])
            meta_in = torch.cat([first[:, None], summaries[:, :-1]], dim=1)  # (B, N, hidden)
        r, h = self._heads(self.meta_query(meta_in)), self._heads(self.meta_key(summaries))  # (B, H, N, D)
        q, k, v = (self._heads(lin(x)) for lin in (self.query, self.key, self.value))  # (B, H, T, D)
        cached = cache[:3] if cache is not None else (None, None, None)
        res = bsbr_attention_with_cache(
            q, k, v, r, h, *cached, chunk_size=chunk_size, causal=c.causal, retrieval=c.retrieval,
            top_k=c.top_k, key_padding_mask=key_padding_mask, gate=self.gate,
            return_retrieval=return_retrieval, dropout_p=c.attention_dropout if self.training else 0.0,
            compress=self.state_down, decompress=self.state_up,
        )  # fmt: skip
        out = res.out.transpose(1, 2).reshape(B, T, -1)  # (B, T, hidden)
        y = self.norm(x + self.dropout(self.output(out)))
        return y, (res.states, h, summaries[:, -1]), res.logits


class BSBRLayer(nn.Module):
    """Post-LN transformer layer: BSBR attention block, then GELU feed-forward with residual LayerNorm."""

    def __init__(self, config: BSBRConfig):
        super().__init__()
        self.attention = BSBRAttention(config)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, mask, key_padding_mask, chunk_size, cache, return_retrieval):
        y, new_cache, logits = self.attention(x, mask, key_padding_mask, chunk_size, cache, return_retrieval)
        y = self.norm(y + self.dropout(self.output(F.gelu(self.intermediate(y)))))
        return y, new_cache, logits


class BSBREmbeddings(nn.Module):
    def __init__(self, config: BSBRConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, chunk_size: int) -> Tensor:
        # Positions restart at 0 in every chunk.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) % chunk_size
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))  # (B, T, hidden)


# Hugging Face BertModel parameter names -> ours ("{i}" is the layer index).
BERT_NAME_MAP = {
    "embeddings.word_embeddings": "embeddings.word",
    "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type",
    "embeddings.LayerNorm": "embeddings.norm",
    "encoder.layer.{i}.attention.self.query": "layers.{i}.attention.query",
    "encoder.layer.{i}.attention.self.key": "layers.{i}.attention.key",
    "encoder.layer.{i}.attention.self.value": "layers.{i}.attention.value",
    "encoder.layer.{i}.attention.output.dense": "layers.{i}.attention.output",
    "encoder.layer.{i}.attention.output.LayerNorm": "layers.{i}.attention.norm",
    "encoder.layer.{i}.intermediate.dense": "layers.{i}.intermediate",
    "encoder.layer.{i}.output.dense": "layers.{i}.output",
    "encoder.layer.{i}.output.LayerNorm": "layers.{i}.norm",
}
NEW_PARAMETERS = ("meta_query", "meta_key", "gate", "state_down", "state_up")


class BSBREncoder(nn.Module):
    """BERT-layout encoder with BSBR attention in every layer."""

    def __init__(self, config: BSBRConfig):
        super().__init__()
        self.config = config
        self.embeddings = BSBREmbeddings(config)
        self.layers = nn.ModuleList(BSBRLayer(config) for _ in range(config.num_layers))
        self.apply(self._init_weights)
        for layer in self.layers:
            layer.attention.reset_new_parameters()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:  # BERT's init
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        cache: DocumentCache | None = None,
        return_cache: bool = False,
        chunk_size: int | None = None,
        return_retrieval: bool = False,
    ) -> BSBREncoderOutput:
        """Encode B sequences of T tokens as chunks of chunk_size consecutive positions.

        Args:
            input_ids: (B, T). attention_mask: (B, T), 1/True = real token; None = all real.
            token_type_ids: (B, T) or None (zeros).
            cache: earlier chunks (batch 1, shared by all B sequences, or batch B). Every new chunk
                retrieves from every valid cached chunk plus new chunks j < c ("past") or j != c ("all").
            return_cache: return the cache extended with this call's chunks.
            chunk_size: tokens per chunk for this call (default config.chunk_size); a question may be
                one chunk of its own length against a document cache built with 256-token chunks.
            return_retrieval: return each layer's retrieval logits (B, H, N, M + N), cached chunks first.
        Returns:
            BSBREncoderOutput.
        """
        B, T = input_ids.shape
        C = min(chunk_size or self.config.chunk_size, T)
        if self.config.max_position_embeddings < C:
            raise ValueError(
                f"chunk_size {C} > max_position_embeddings {self.config.max_position_embeddings}"
            )
        if cache is not None and cache.batch_size not in (1, B):
            raise ValueError(f"cache batch {cache.batch_size} must be 1 or {B}")
        N = math.ceil(T / C)
        real = input_ids.new_ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        mask = F.pad(real, (0, N * C - T), value=False).view(B, N, C)  # (B, N, C)
        # No mask at all when nothing is padded: the op then uses the FlashAttention kernel on CUDA. Not
        # while a CUDA graph is captured (model/cuda_graph.py): the test would wait for the GPU, and the
        # graph must hold for the padded rows it will be replayed with.
        capturing = real.is_cuda and torch.cuda.is_current_stream_capturing()
        all_real = attention_mask is None or (not capturing and bool(real.all()))
        key_padding_mask = None if all_real else real
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, types, C)  # (B, T, hidden)
        new, all_logits = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None
            if cache is not None:
                layer_cache = (cache.states[i], cache.keys[i], cache.valid, cache.summaries[i])
            x, layer_new, logits = layer(x, mask, key_padding_mask, C, layer_cache, return_retrieval)
            new.append(layer_new)
            all_logits.append(logits)
        out_cache = None
        if return_cache:
            out_cache = DocumentCache(
                [s for s, _, _ in new],
                [k for _, k, _ in new],
                [m for _, _, m in new],
                mask.any(-1),
                window_means(x, mask, self.config.output_window or C),  # (B, N, V, hidden)
            )
            out_cache = cache.append(out_cache) if cache is not None else out_cache
        return BSBREncoderOutput(x, out_cache, all_logits if return_retrieval else None)

    @torch.no_grad()
    def encode_document(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        batch_chunks: int = 64,
        progress=None,
        return_hidden: bool = False,
    ):
        """Stream one document, given as its chunks in order, through the encoder (no grad).

        Args:
            input_ids: (N, C) token ids of the N chunks (each chunk exactly as it should be read).
            attention_mask: (N, C), 0 at padding; None = all real.
            batch_chunks: chunks encoded per forward pass (memory stays bounded by this block).
            progress: optional callable(done_chunks, total_chunks).
            return_hidden: also return the per-chunk outputs (N, C, hidden).
        Returns:
            DocumentCache of batch 1 with N chunks, or (cache, hidden) with return_hidden.
        """
        N, C = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        cache, hidden = None, []
        for start in range(0, N, batch_chunks):
            ids, m = input_ids[start : start + batch_chunks], mask[start : start + batch_chunks]
            out = self(ids.reshape(1, -1), m.reshape(1, -1), cache=cache, return_cache=True, chunk_size=C)
            cache = out.cache
            if return_hidden:
                hidden.append(out.last_hidden_state.view(-1, C, self.config.hidden_size))
            if progress is not None:
                progress(min(start + batch_chunks, N), N)
        return (cache, torch.cat(hidden)) if return_hidden else cache

    def load_bert_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load Hugging Face BertModel weights (names: BERT_NAME_MAP); BSBR-only parts keep their init."""
        mapped = {}
        for i in range(self.config.num_layers):
            for src, dst in BERT_NAME_MAP.items():
                for suffix in ("weight", "bias"):
                    key = f"{src.format(i=i)}.{suffix}"
                    if key in state:
                        mapped[f"{dst.format(i=i)}.{suffix}"] = state[key]
        missing, _ = self.load_state_dict(mapped, strict=False)
        missing = [m for m in missing if not any(f".{p}" in m for p in NEW_PARAMETERS)]
        if missing:
            raise ValueError(f"BERT weights lack {missing}")

    @classmethod
    def from_minilm(cls, **config_overrides) -> BSBREncoder:
        """all-MiniLM-L6-v2 (the packaged Hugging Face folder, offline) as a BSBR encoder with gates at 0."""
        from ingest.tokenizer import minilm_dir

        folder = minilm_dir()
        hf = json.loads((folder / "config.json").read_text())
        config = BSBRConfig(
            **{
                "vocab_size": hf["vocab_size"],
                "hidden_size": hf["hidden_size"],
                "num_layers": hf["num_hidden_layers"],
                "num_heads": hf["num_attention_heads"],
                "intermediate_size": hf["intermediate_size"],
                "max_position_embeddings": hf["max_position_embeddings"],
                "type_vocab_size": hf["type_vocab_size"],
                "layer_norm_eps": hf["layer_norm_eps"],
                "hidden_dropout": hf["hidden_dropout_prob"],
                "attention_dropout": hf["attention_probs_dropout_prob"],
                **config_overrides,
            }
        )
        model = cls(config)
        model.load_bert_state_dict(
            {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
        )
        return model

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json + model.safetensors (all weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors")
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BSBREncoder:
        folder = Path(folder)
        model = cls(BSBRConfig.from_dict(json.loads((folder / "config.json").read_text())))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model
