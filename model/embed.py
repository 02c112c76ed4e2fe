"""Sentence embeddings from the packaged all-MiniLM-L6-v2: mean-pooled, L2-normalised (the FAISS baseline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from model.minilm import load_tokenizer, minilm_dir, quiet_transformers

ProgressFn = Callable[[int, int], None]


class SentenceEmbedder:
    """all-MiniLM-L6-v2 as its model card prescribes: token embeddings mean-pooled over the attention
    mask, then L2-normalised, so inner product == cosine similarity.

    Args:
        device: "cpu" or "cuda".
        max_tokens: truncation length including [CLS]/[SEP] (chunks are built to fit 256).
        batch_size: texts per forward pass (texts are sorted by length to limit padding).
    """

    dim = 384

    def __init__(self, device: str = "cpu", max_tokens: int = 256, batch_size: int = 64) -> None:
        from transformers import AutoModel

        quiet_transformers()
        self.device = torch.device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModel.from_pretrained(str(minilm_dir()), dtype=dtype).to(self.device).eval()
        self.tokenizer = load_tokenizer()
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """Embed `texts`.

        Returns:
            float32 array [len(texts), 384], rows of unit norm (zero rows for empty input strings).
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for done in range(0, len(order), self.batch_size):
            idx = order[done : done + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # (b, t, 384)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.cpu().numpy()
            if progress is not None:
                progress(min(done + self.batch_size, len(order)), len(order))
        return out
