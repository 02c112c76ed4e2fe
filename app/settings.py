"""Every setting read from the environment, in one place, with defaults that work."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "qa_model"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def _optional_flag(name: str) -> bool | None:
    """1 / 0 from the environment, None when unset, empty or "auto"."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in ("0", "1"):
        raise ValueError(f"environment variable {name} must be 0, 1 or auto, got {raw!r}")
    return raw == "1"


@dataclass(frozen=True)
class Settings:
    """Runtime settings.

    Attributes:
        home: app data folder (SQLite store, arrays, FAISS indexes, uploads).  DOCQA_HOME.
        device: "cuda", "cpu" or "auto" (cuda when available).  DOCQA_DEVICE.
        host, port: where the web app listens.  GRADIO_SERVER_NAME / DOCQA_HOST, GRADIO_SERVER_PORT / PORT.
        max_file_mb: largest accepted upload.  DOCQA_MAX_FILE_MB.
        max_pages: most pages read from one PDF.  DOCQA_MAX_PAGES.
        max_chars: most characters of text in one document.  DOCQA_MAX_CHARS.
        max_extract_seconds: time budget for reading a PDF's pages.  DOCQA_MAX_EXTRACT_SECONDS.
        read_k: candidates the reader rescores per method and question.  DOCQA_READ_K; default 20 on a
            GPU, 12 on a CPU (the same answers as 16 on FairytaleQA val and SQuAD dev within 0.002
            ROUGE-L for BSBR, in 3/4 of the reader's time; at 8 BSBR's recall@1 fell, 0.72 against 0.81).
        model_dir: the trained BSBR delta (without one, BSBR is not offered).  DOCQA_MODEL_DIR; default
            assets/qa_model.
        concurrency: calls of one web endpoint served at once (questions of different visitors).
            DOCQA_CONCURRENCY; default 4 on a GPU (the CPU-side steps of one overlap another's GPU work),
            1 on a CPU (one question already uses every core).
        zero_gpu: running on a Hugging Face Space with ZeroGPU hardware (app/zerogpu.py).
            SPACES_ZERO_GPU, set by the Space.
        aggregate: the same answer found in several read passages adds up their scores (log-sum-exp)
            instead of each passage competing alone.  DOCQA_AGGREGATE (1 or 0).
        cpu_bf16: on a CPU, the FAISS encoder (chunk windows and questions) runs in bfloat16, the
            BSBR document pass and the reader under bfloat16 autocast; BSBR's question pass stays fp32.
            DOCQA_CPU_BF16 (1, 0 or auto); auto (or unset): on where oneDNN finds bfloat16 instructions
            (AMX or AVX512-BF16), off elsewhere. On this project's 2-core Xeon with AMX, the sample
            book's whole ingest took 18.1 s instead of 43-64 s in fp32 (FAISS windows 5.9 s instead of
            17.0, BSBR document pass 10.0 s instead of 24.7), with SQuAD dev --limit 300 recall and F1
            unchanged (docs/BENCHMARKS.md, "CPU ingest against the LangChain-style recipe").
            GPUs are unaffected (fp16 / bf16 there already).
        cuda_graphs: on a GPU, BSBR's question pass and the reader replay CUDA graphs (app/engine.py),
            since their time there is kernel launches.  DOCQA_CUDA_GRAPHS (1 or 0); default 1. Off on a
            ZeroGPU Space, whose GPU is attached anew for each call.
    """

    home: Path
    device: str
    host: str
    port: int
    max_file_mb: int
    max_pages: int
    max_chars: int
    max_extract_seconds: int
    read_k: int | None
    aggregate: bool = True
    model_dir: Path = DEFAULT_MODEL_DIR
    concurrency: int | None = None
    zero_gpu: bool = False
    cpu_bf16: bool | None = None  # None: decided by the hardware (resolve_cpu_bf16)
    cuda_graphs: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        home = os.environ.get("DOCQA_HOME") or str(Path.home() / ".cache" / "bsbr-docqa")
        return cls(
            home=Path(home).expanduser(),
            device=os.environ.get("DOCQA_DEVICE", "auto"),
            host=os.environ.get("GRADIO_SERVER_NAME") or os.environ.get("DOCQA_HOST") or "127.0.0.1",
            port=_int("GRADIO_SERVER_PORT", _int("PORT", 7860)),
            max_file_mb=_int("DOCQA_MAX_FILE_MB", 100),
            max_pages=_int("DOCQA_MAX_PAGES", 5000),
            max_chars=_int("DOCQA_MAX_CHARS", 20_000_000),
            max_extract_seconds=_int("DOCQA_MAX_EXTRACT_SECONDS", 120),
            read_k=_int("DOCQA_READ_K", 0) or None,
            aggregate=bool(_int("DOCQA_AGGREGATE", 1)),
            model_dir=Path(os.environ.get("DOCQA_MODEL_DIR") or DEFAULT_MODEL_DIR),
            concurrency=_int("DOCQA_CONCURRENCY", 0) or None,
            zero_gpu=os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"),
            cpu_bf16=_optional_flag("DOCQA_CPU_BF16"),
            cuda_graphs=bool(_int("DOCQA_CUDA_GRAPHS", 1)),
        )


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_cpu_bf16(value: bool | None) -> bool:
    """Settings.cpu_bf16 -> whether the CPU ingest passes run in bfloat16 (None: where the CPU has
    bfloat16 instructions, which oneDNN's matmuls then use)."""
    if value is not None:
        return value
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False
