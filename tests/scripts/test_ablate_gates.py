"""scripts/ablate_gates.py: the shipped delta with every BSBR gate at 0, everything else unchanged."""

import torch
from safetensors.torch import load_file

from scripts.ablate_gates import ablate

SHIPPED = "assets/qa_model"


def test_ablation_zeroes_the_gates_only_and_loads(tmp_path):
    from pathlib import Path

    from model.qa import DocQAModel

    gates = ablate(Path(SHIPPED), tmp_path / "nogate")
    assert len(gates) == 6  # one per layer
    before = load_file(f"{SHIPPED}/delta.safetensors")
    after = load_file(str(tmp_path / "nogate" / "delta.safetensors"))
    assert before.keys() == after.keys()
    for name, value in before.items():
        if name in gates:
            assert value.abs().max() > 0 and after[name].abs().max() == 0
        else:
            assert torch.equal(value, after[name])
    model = DocQAModel.from_pretrained(tmp_path / "nogate")
    assert all(layer.attention.gate.abs().max() == 0 for layer in model.encoder.layers)
