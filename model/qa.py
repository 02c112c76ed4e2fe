"""The QA model on the BSBR encoder: document cache, block-retrieval ranking, span reader, abstention.

Shape legend
    B  questions or reader rows    N  document chunks    C  document chunk tokens (256)
    Lq question-chunk tokens       Lr reader-row tokens ("[CLS] question [SEP] passage [SEP]", <= 320)
    L  layers                      H  heads

- Document pass: the document's chunks ("[CLS] chunk [SEP]", 256 tokens) stream through the encoder
  once; the DocumentCache keeps each layer's chunk states and meta keys.
- Question pass: "[CLS] question [SEP]" is one more chunk after the document. Its block-retrieval logits
  over the document chunks, averaged over heads and layers and scaled by a learned temperature, rank
  the evidence (`retrieval_scores`). With `output_level`, a seventh retrieval level on the last layer's
  output joins them: the cosine of the question's and each chunk's mean output (which the six BSBR levels,
  built on layer inputs, never see) times a second learned temperature. With the encoder's
  `output_window`, a chunk's cosine is that of its best window (the mean output of each run of that many
  tokens): a 256-token mean blurs the sentence a question is about.
- Reader: "[CLS] question [SEP] passage [SEP]" for each candidate passage, one chunk each, retrieving
  from the document cache (or from nothing, for the FAISS/BM25 baselines); a start/end head gives spans.
  With `reader_lora_rank`, reader rows run through a twin of the encoder that shares all its weights
  but has LoRA adapters of its own: the span loss then reaches the states that rank chunks only through
  the document cache.
  A passage's has-answer score is best_start + best_end - cls_start - cls_end (FINDINGS.md), which
  reranks candidates; below `abstain_threshold` the model abstains.

The trained part ships as a small delta over the packaged all-MiniLM-L6-v2: LoRA adapters on every
linear layer of the encoder (and of the reader twin, if any), the BSBR meta projections and gates, the
span head and the retrieval temperatures (fp16 safetensors + config.json).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ingest.chunk import CHUNK_TOKENS, SPECIAL_TOKENS
from model.encoder import BSBREncoder, DocumentCache, chunk_means

DELTA_FORMAT = "bsbr-docqa-delta"
DELTA_VERSION = 1
LORA_TARGETS = (
    "attention.query",
    "attention.key",
    "attention.value",
    "attention.output",
    "intermediate",
    "output",
)
TRAINED_EXACTLY = (
    "meta_query",
    "meta_key",
    "gate",
    "span_head",
    "retrieval_log_scale",
    "output_log_scale",
    "lora_",
)


@dataclass
class QAConfig:
    """Hyper-parameters of the QA model (saved as config.json beside the delta weights)."""

    encoder: dict = field(default_factory=dict)  # BSBRConfig overrides of the MiniLM config
    lora_rank: int = 16
    lora_alpha: float = 32.0
    question_tokens: int = 63  # question word-pieces kept (truncated beyond)
    passage_tokens: int = CHUNK_TOKENS - SPECIAL_TOKENS  # chunk word-pieces (the chunk window minus specials)
    max_answer_tokens: int = 30
    abstain_threshold: float = -math.inf  # calibrated after training; -inf = never abstain
    # BSBR reranking: reader has-answer score + this x the candidate's block-retrieval log-probability
    # (chosen on the held-out slice after training; 0 = the reader's score alone)
    rerank_retrieval_weight: float = 0.0
    # a retrieval level on the last layer's output (cosine of mean outputs) added to the block retrieval
    output_level: bool = False
    # > 0: the reader rows get adapters of their own, of this rank (same alpha / rank scale), so that span
    # training does not pull the document and question passes' states away from retrieval; 0: shared.
    # (Run 9 tried 64: the same retrieval as shared adapters, docs/BENCHMARKS.md.)
    reader_lora_rank: int = 0

    def __post_init__(self) -> None:
        if self.lora_rank < 0 or self.reader_lora_rank < 0:
            raise ValueError(f"LoRA ranks must be >= 0, got {self.lora_rank} and {self.reader_lora_rank}")
        if self.reader_lora_rank and not self.lora_rank:
            raise ValueError("reader_lora_rank needs lora_rank > 0 (its alpha / rank scale)")
        for name in ("question_tokens", "passage_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.reader_tokens > 512:
            raise ValueError(f"reader rows of {self.reader_tokens} tokens exceed 512 positions")

    @property
    def reader_tokens(self) -> int:
        return self.question_tokens + self.passage_tokens + 3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["abstain_threshold"] = None if math.isinf(self.abstain_threshold) else self.abstain_threshold
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QAConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown QAConfig keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("abstain_threshold") is None:
            d["abstain_threshold"] = -math.inf
        return cls(**d)


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) B A x, W and b frozen; B starts at 0, so the layer starts unchanged."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    def merged(self) -> nn.Linear:
        """A new plain Linear computing the same function (for inference: no adapter overhead). The base
        layer is left as it is: the reader's adapters may wrap the same one."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged = merged.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + (self.lora_b @ self.lora_a) * self.scale)
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


def add_lora(encoder: BSBREncoder, rank: int, alpha: float) -> None:
    """Wrap the encoder's linear layers named in LORA_TARGETS with LoRA adapters (in place)."""
    for layer in encoder.layers:
        for name in LORA_TARGETS:
            parent_name, _, leaf = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            setattr(parent, leaf, LoRALinear(getattr(parent, leaf), rank, alpha))


def reader_twin(encoder: BSBREncoder) -> BSBREncoder:
    """A second encoder for the reader rows that shares every parameter of `encoder` (base weights, meta
    projections, gates): only the LoRA adapters added to it afterwards are its own."""
    twin = copy.deepcopy(encoder)
    for name, _ in list(twin.named_parameters()):
        module_name, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(module_name), leaf, encoder.get_parameter(name))
    return twin


def merge_lora(module: nn.Module) -> None:
    """Replace every LoRALinear inside `module` by its merged Linear (in place)."""
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
        else:
            merge_lora(child)


class DocQAModel(nn.Module):
    """BSBR encoder + block-retrieval ranking + span reader. See the module docstring."""

    def __init__(self, config: QAConfig, encoder: BSBREncoder) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.span_head = nn.Linear(hidden, 2)
        # Mean-pooled states of a question and of its chunk differ by ~0.1-0.3 in dot product from other
        # chunks; a temperature of 20 turns that into a useful softmax from the first step.
        self.retrieval_log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.output_log_scale = None
        if config.output_level:
            self.add_output_level()
        # with reader_lora_rank, reader rows run through a twin encoder with adapters of its own
        self.reader_encoder = reader_twin(encoder) if config.reader_lora_rank else None
        if config.lora_rank:
            add_lora(encoder, config.lora_rank, config.lora_alpha)
        if self.reader_encoder is not None:
            scale = config.lora_alpha / config.lora_rank
            add_lora(self.reader_encoder, config.reader_lora_rank, scale * config.reader_lora_rank)

    def add_output_level(self) -> None:
        """Turn on the output retrieval level (a trained model without it goes on training with it).
        Its temperature starts at 20, the scale sentence-transformers train cosine similarities with."""
        self.config.output_level = True
        device = self.retrieval_log_scale.device
        self.output_log_scale = nn.Parameter(torch.tensor(math.log(20.0), device=device))

    @classmethod
    def from_minilm(cls, config: QAConfig | None = None) -> DocQAModel:
        """Untrained model over the packaged MiniLM; meta projections start as the identity, so block
        retrieval starts as the dot product of mean-pooled chunk states."""
        config = config or QAConfig()
        encoder = BSBREncoder.from_minilm(**config.encoder)
        with torch.no_grad():
            for layer in encoder.layers:
                for lin in (layer.attention.meta_query, layer.attention.meta_key):
                    lin.weight.copy_(torch.eye(lin.out_features, lin.in_features))
                    lin.bias.zero_()
        return cls(config, encoder)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Freeze the base MiniLM; train only what the shipped delta holds."""
        params = []
        for name, p in self.named_parameters():
            p.requires_grad_(any(key in name for key in TRAINED_EXACTLY))
            if p.requires_grad:
                params.append(p)
        return params

    def delta_state_dict(self) -> dict[str, Tensor]:
        """The trained tensors, each once (the reader twin's shared ones are the encoder's)."""
        return {
            k: v
            for k, v in self.state_dict().items()
            if any(key in k for key in TRAINED_EXACTLY)
            and ("lora_" in k or not k.startswith("reader_encoder."))
        }

    def save_delta(self, folder: str | Path, metadata: dict | None = None) -> None:
        """fp16 safetensors of the trained part + config.json (base weights come from the package)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in self.delta_state_dict().items()}
        meta = {"format": DELTA_FORMAT, "version": str(DELTA_VERSION), **(metadata or {})}
        save_file(tensors, str(folder / "delta.safetensors"), metadata={k: str(v) for k, v in meta.items()})

    @classmethod
    def from_pretrained(cls, folder: str | Path, merge: bool = True) -> DocQAModel:
        """Packaged MiniLM + the delta in `folder`. merge=True folds LoRA into the weights (inference)."""
        folder = Path(folder)
        config = QAConfig.from_dict(json.loads((folder / "config.json").read_text()))
        model = cls(config, BSBREncoder.from_minilm(**config.encoder))
        from safetensors import safe_open

        with safe_open(str(folder / "delta.safetensors"), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != DELTA_FORMAT or meta.get("version") != str(DELTA_VERSION):
            raise ValueError(f"{folder}: not a {DELTA_FORMAT} v{DELTA_VERSION} file")
        delta = {k: v.float() for k, v in load_file(str(folder / "delta.safetensors")).items()}
        expected = set(model.delta_state_dict())
        if set(delta) != expected:
            raise ValueError(
                f"{folder}: delta weights do not match the config "
                f"(missing {sorted(expected - set(delta))[:3]}, extra {sorted(set(delta) - expected)[:3]})"
            )
        model.load_state_dict(delta, strict=False)
        if merge:
            merge_lora(model.encoder)
            if model.reader_encoder is not None:
                merge_lora(model.reader_encoder)
        return model.eval()

    def document_cache(
        self, chunk_ids: Tensor, chunk_mask: Tensor, progress=None, batch_chunks: int = 64
    ) -> DocumentCache:
        """Document pass (no grad): chunk_ids, chunk_mask (N, C) -> DocumentCache of N chunks."""
        return self.encoder.encode_document(
            chunk_ids, chunk_mask, batch_chunks=batch_chunks, progress=progress
        )

    def retrieval_scores(self, question_ids: Tensor, question_mask: Tensor, cache: DocumentCache) -> Tensor:
        """Block-retrieval scores of the N document chunks for each question.

        Args:
            question_ids, question_mask: (B, Lq) "[CLS] question [SEP]" rows, padded.
            cache: the document cache (batch 1).
        Returns:
            (B, N): retrieval logits of the question chunk, averaged over heads and layers, times the
            learned temperature; with the output level, plus its scaled cosines. Chunks that are never
            visible (all padding) are -inf.
        """
        if self.config.output_level and cache.outputs is None:
            raise ValueError("this model's output retrieval level needs a document cache with outputs")
        out = self.encoder(
            question_ids, question_mask, cache=cache, chunk_size=question_ids.shape[1], return_retrieval=True
        )
        n = cache.n_chunks
        logits = torch.stack([lg[:, :, 0, :n] for lg in out.retrieval_logits])  # (L, B, H, N)
        finite = torch.isfinite(logits)
        mean = torch.where(finite, logits, 0).sum((0, 2)) / finite.sum((0, 2)).clamp(min=1)  # (B, N)
        scores = mean * self.retrieval_log_scale.exp()
        if self.config.output_level:
            question = chunk_means(out.last_hidden_state, question_mask.bool()[:, None])[:, 0]  # (B, hidden)
            outputs = cache.outputs.float()  # (1 or B, N, V, hidden): V windows per chunk
            norms = outputs.norm(dim=-1, keepdim=True)  # 0 for a window without real tokens
            windows = (outputs / norms.clamp(min=1e-12)).flatten(1, 2).transpose(1, 2)  # (., hidden, N*V)
            cosine = (F.normalize(question.float(), dim=-1)[:, None] @ windows).view(-1, *outputs.shape[1:3])
            empty = norms[..., 0] == 0  # (1 or B, N, V)
            # a chunk's best window; an empty one scores -2, under any cosine (finite: no NaN gradients)
            cosine = cosine.masked_fill(empty, -2.0).amax(-1)  # (B, N)
            scores = scores.float() + cosine * self.output_log_scale.exp()  # fp32: bf16 blurs the sum
        return scores.masked_fill(~finite.any(2).any(0), -math.inf)

    def read(
        self, input_ids: Tensor, mask: Tensor, token_types: Tensor, cache: DocumentCache | None
    ) -> tuple[Tensor, Tensor]:
        """Span logits for reader rows (B, Lr), each one chunk, retrieving from `cache` (None: nothing).

        Returns:
            start, end logits (B, Lr), fp32, -inf at padding.
        """
        encoder = self.encoder if self.reader_encoder is None else self.reader_encoder
        out = encoder(input_ids, mask, token_types, cache=cache, chunk_size=input_ids.shape[1])
        logits = self.span_head(out.last_hidden_state).float()  # (B, Lr, 2)
        logits = logits.masked_fill(~mask.bool()[..., None], -math.inf)
        return logits[..., 0], logits[..., 1]


def question_rows(questions: list[list[int]], cls_id: int, sep_id: int, device=None) -> tuple[Tensor, Tensor]:
    """ "[CLS] q [SEP]" rows padded to the longest: (B, Lq) ids and mask."""
    rows = [[cls_id, *q, sep_id] for q in questions]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def reader_rows(
    questions: Sequence[Sequence[int]],
    passages: Sequence[Sequence[int]],
    cls_id: int,
    sep_id: int,
    device=None,
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """ "[CLS] q [SEP] p [SEP]" rows for paired question/passage word-pieces (lists or 1-D arrays).

    Returns:
        ids, mask, token types (B, Lr) padded to the longest row, and for each row the position of
        the passage's first token (passage token i sits at offsets[row] + i).
    """
    lengths = [len(q) + len(p) + 3 for q, p in zip(questions, passages, strict=True)]
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)  # filled on the host, one copy over
    tt = np.zeros_like(ids)
    offsets = []
    ids[:, 0] = cls_id
    for i, (q, p) in enumerate(zip(questions, passages, strict=True)):
        start = len(q) + 2  # the passage's first token
        ids[i, 1 : start - 1] = q
        ids[i, start - 1] = ids[i, lengths[i] - 1] = sep_id
        ids[i, start : lengths[i] - 1] = p
        tt[i, start : lengths[i]] = 1
        offsets.append(start)
    mask = (np.arange(ids.shape[1]) < np.array(lengths)[:, None]).astype(np.int64)
    ids, mask, tt = (torch.from_numpy(x).to(device) for x in (ids, mask, tt))
    return ids, mask, tt, offsets


def passage_mask(offsets: list[int], lengths: list[int], width: int, device) -> Tensor:
    """(rows, width) True on each reader row's passage tokens (row i: offsets[i] .. + lengths[i])."""
    pos = torch.arange(width, device=device)
    off = torch.tensor(offsets, device=device)[:, None]
    n = torch.tensor(lengths, device=device)[:, None]
    return (pos >= off) & (pos < off + n)


def best_spans(
    start: Tensor, end: Tensor, offsets: list[int], lengths: list[int], max_answer_tokens: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Best passage span per row and its has-answer score.

    Args:
        start, end: (B, Lr) logits. offsets, lengths: where each row's passage starts and its token count.
    Returns:
        score (B,) = best start + best end - cls start - cls end; span start and end (B,) as passage
        token indexes (inclusive).
    """
    B, Lr = start.shape
    pos = torch.arange(Lr, device=start.device)
    off = torch.tensor(offsets, device=start.device)[:, None]
    in_passage = passage_mask(offsets, lengths, Lr, start.device)  # (B, Lr)
    s = start.masked_fill(~in_passage, -math.inf)
    e = end.masked_fill(~in_passage, -math.inf)
    pair = s[:, :, None] + e[:, None, :]  # (B, Lr, Lr)
    width = pos[None, :] - pos[:, None]  # end - start
    allowed = (width >= 0) & (width < max_answer_tokens)
    pair = pair.masked_fill(~allowed, -math.inf).flatten(1)
    best, flat = pair.max(1)
    span_start, span_end = flat // Lr, flat % Lr
    score = best - start[:, 0] - end[:, 0]
    return score, span_start - off[:, 0], span_end - off[:, 0]
