"""Sentence embeddings from the packaged all-MiniLM-L6-v2: mean-pooled, L2-normalised (the FAISS baseline).

A chunk (up to 256 tokens) is embedded as several shorter windows (`encode_windows`): the model was
trained on texts of up to 128 word pieces, and one vector of a whole chunk is dominated by the chunk's
overall theme, so a short fact inside it is lost; the retriever scores a chunk by its best window.
Window size and overlap were chosen on SQuAD dev as one 330k-token document (2,000 questions, FAISS
retrieval recall@1 / @5 / @20 of the gold chunk): one vector per chunk 0.548 / 0.834 / 0.942; windows of
128 tokens, overlap 16: 0.640 / 0.873 / 0.960; 96/16: 0.650 / 0.885 / 0.967; 64/0: 0.661 / 0.901 / 0.969;
64/16: 0.684 / 0.896 / 0.973; 32/0: 0.663 / 0.888 / 0.966. 64/16 costs about 1.05x the CPU time of one
vector per chunk (more tokens through the model, but shorter attention).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ingest.chunk import CHUNK_TOKENS
from ingest.tokenizer import load_tokenizer, minilm_dir, quiet_transformers

ProgressFn = Callable[[int, int], None]

WINDOW_TOKENS = 64  # per window, [CLS] and [SEP] included
WINDOW_OVERLAP = 16  # tokens shared by neighbouring windows (at least), so no phrase is only ever cut


def window_spans(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans [start, end) covering n_tokens tokens with the fewest windows of at most `window`
    tokens whose neighbours share at least `overlap` tokens. All windows have one length (no short
    tail window) and their starts are spread evenly.

    Returns:
        [(0, n_tokens)] when it fits one window (also for n_tokens == 0), else the spans in order.
    """
    if not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < window, got overlap {overlap} and window {window}")
    if n_tokens <= window:
        return [(0, n_tokens)]
    count = math.ceil((n_tokens - overlap) / (window - overlap))
    length = math.ceil((n_tokens + (count - 1) * overlap) / count)
    starts = [round(i * (n_tokens - length) / (count - 1)) for i in range(count)]
    return [(s, s + length) for s in starts]


class SentenceEmbedder:
    """all-MiniLM-L6-v2 as its model card prescribes: token embeddings mean-pooled over the attention
    mask, then L2-normalised, so inner product == cosine similarity.

    Args:
        device: "cpu" or "cuda".
        max_tokens: truncation length of `encode`, [CLS]/[SEP] included (chunks are built to fit 256).
        batch_size: texts per forward pass (texts are sorted by length to limit padding).
        cpu_bf16: on a CPU, keep the model in bfloat16 (Settings.cpu_bf16; fast where the CPU has
            bfloat16 instructions). On the sample book's windows: 5.2 s instead of 19.4 s in fp32 and
            6.3 s under bfloat16 autocast, every vector at cosine > 0.9998 to its fp32 one. Ignored
            on a GPU (fp16 there).
    """

    dim = 384

    def __init__(
        self,
        device: str = "cpu",
        max_tokens: int = CHUNK_TOKENS,
        batch_size: int = 64,
        cpu_bf16: bool = False,
    ) -> None:
        from transformers import AutoModel

        quiet_transformers()
        self.device = torch.device(device)
        self.cpu_bf16 = cpu_bf16 and self.device.type == "cpu"
        if self.device.type == "cuda":
            dtype = torch.float16
        else:
            dtype = torch.bfloat16 if self.cpu_bf16 else torch.float32
        self.model = AutoModel.from_pretrained(str(minilm_dir()), dtype=dtype).to(self.device).eval()
        self.tokenizer = load_tokenizer()
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """Embed `texts`, each truncated to max_tokens.

        Returns:
            float32 array [len(texts), 384], rows of unit norm.
        """
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens, verbose=False)
        return self._embed_ids(ids["input_ids"], progress)

    def encode_windows(
        self,
        texts: Sequence[str],
        window_tokens: int = WINDOW_TOKENS,
        overlap_tokens: int = WINDOW_OVERLAP,
        progress: ProgressFn | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed each text as windows of at most `window_tokens` tokens (specials included) that
        overlap by at least `overlap_tokens` (see `window_spans`); nothing is truncated.

        Args:
            progress: called as progress(done, len(texts)), in units of texts.
        Returns:
            (vectors float32 [m, 384] of unit norm, owners int64 [m]: the index of the text each window
            comes from, non-decreasing). Every text has at least one window (an empty text one of
            [CLS] [SEP] only).
        """
        if not texts:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        rows = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        windows, owners = [], []
        for i, row in enumerate(rows):
            for start, end in window_spans(len(row), window_tokens - 2, overlap_tokens):
                windows.append([cls, *row[start:end], sep])
                owners.append(i)

        def in_texts(done: int, total: int) -> None:
            progress(len(texts) * done // total, len(texts))

        vectors = self._embed_ids(windows, in_texts if progress is not None else None)
        return vectors, np.asarray(owners, dtype=np.int64)

    @torch.inference_mode()
    def _embed_ids(self, ids: list[list[int]], progress: ProgressFn | None) -> np.ndarray:
        """Mean-pooled, normalised embeddings of token id lists (specials already in) [len(ids), 384]."""
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for done in range(0, len(order), self.batch_size):
            idx = order[done : done + self.batch_size]
            input_ids, mask = self._pad([ids[i] for i in idx])  # (b, t) each
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (b, t, 384)
            weights = mask.unsqueeze(-1).float()  # (b, t, 1)
            pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
            if progress is not None:
                progress(min(done + self.batch_size, len(order)), len(order))
        return out

    def _pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input ids and attention mask [b, longest], on the model's device."""
        width = max(len(row) for row in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, row in enumerate(batch):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        return input_ids.to(self.device), mask.to(self.device)
