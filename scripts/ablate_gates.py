"""Write a copy of a trained delta with every BSBR gate at 0: the same model with its between-chunk
retrieval switched off (no token reads any other chunk's state, in the document pass, the question pass
or the reader). The block-retrieval logits still rank chunks; only what they retrieve stops flowing.

    python -m scripts.ablate_gates assets/qa_model /tmp/qa_nogate
    DOCQA_MODEL_DIR=/tmp/qa_nogate python -m app eval ... --methods bsbr
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def ablate(src: Path, dest: Path) -> list[str]:
    """Copy the delta folder `src` to `dest` with the gate tensors zeroed; returns their names."""
    tensors = load_file(str(src / "delta.safetensors"))
    with safe_open(str(src / "delta.safetensors"), framework="pt") as f:
        metadata = f.metadata() or {}
    gates = [name for name in tensors if name.endswith(".gate")]
    if not gates:
        raise ValueError(f"{src}: no gate tensors in the delta")
    for name in gates:
        tensors[name] = tensors[name].zero_()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dest / "config.json")
    save_file(tensors, str(dest / "delta.safetensors"), metadata={**metadata, "ablation": "gates zeroed"})
    return gates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    gates = ablate(args.src, args.dest)
    print(f"{args.dest}: {len(gates)} gate tensors zeroed")


if __name__ == "__main__":
    main()
