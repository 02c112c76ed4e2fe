"""ingest.tokenizer: the MiniLM tokenizer, and the import floor the GPU machine relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ingest.tokenizer import load_tokenizer, minilm_dir

ROOT = Path(__file__).resolve().parents[2]

# Raises on import of what the GPU machine does not carry; then imports what it runs.
_BLOCKED_IMPORTS = """
import sys

BLOCKED = ("pypdf", "faiss", "gradio", "langchain_text_splitters", "langchain_core")


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {name}")


sys.meta_path.insert(0, Block())
import ingest, ingest.tokenizer, ingest.chunk, ingest.types, model.encoder, model.qa, model.bench
assert ingest.chunk.CHUNK_TOKENS == model.encoder.BSBRConfig().chunk_size == 256
print("ok")
"""


def test_the_tokenizer_is_the_packaged_fast_one_loaded_once() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.is_fast and load_tokenizer() is tokenizer
    assert (minilm_dir() / "config.json").exists()
    ids = tokenizer("Hello world")["input_ids"]
    assert ids == [tokenizer.cls_token_id, 7592, 2088, tokenizer.sep_token_id]


def test_model_imports_without_pdf_faiss_gradio_or_langchain() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
