"""Pack the base MiniLM small enough to travel to the GPU machine, and unpack it there.

The GPU machine cannot reach the package index and the tree that travels is limited to 64 MiB, so the
90 MB fp32 model goes as fp16 with its two byte planes separated and xz-compressed (~38 MB).

    python -m scripts.gpu_carry pack .carry/minilm          # here
    python -m scripts.gpu_carry unpack .carry/minilm /tmp/minilm && export DOCQA_MINILM_DIR=/tmp/minilm
"""

from __future__ import annotations

import lzma
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def pack(dest: Path) -> None:
    import torch
    from safetensors.torch import load_file, save

    from ingest.tokenizer import minilm_dir

    src = minilm_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, dest / name)
    weights = {
        k: v.to(torch.float16).contiguous()
        for k, v in load_file(str(src / "model.safetensors")).items()
        if not k.startswith("pooler.")
    }
    raw = save(weights)
    n = struct.unpack("<Q", raw[:8])[0]
    head, body = raw[: 8 + n], np.frombuffer(raw[8 + n :], dtype=np.uint8)
    planes = body.reshape(-1, 2).T.tobytes()  # low bytes, then high bytes: the exponents compress well
    (dest / "weights.head").write_bytes(head)
    (dest / "weights.planes.xz").write_bytes(lzma.compress(planes, preset=6))


def unpack(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, dest / name)
    planes = np.frombuffer(lzma.decompress((src / "weights.planes.xz").read_bytes()), dtype=np.uint8)
    body = planes.reshape(2, -1).T.tobytes()
    (dest / "model.safetensors").write_bytes((src / "weights.head").read_bytes() + body)


if __name__ == "__main__":
    if sys.argv[1] == "pack":
        pack(Path(sys.argv[2]))
    else:
        unpack(Path(sys.argv[2]), Path(sys.argv[3]))
