"""No pickle anywhere: loading a pickle runs arbitrary code, and the store holds files users uploaded.

The scan parses every .py file of the repository (so "never pickle" in a comment is fine) and fails on
an import of a pickle-based module, torch.load, read_pickle, or allow_pickle=True. Shipped weights must
be safetensors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", "__pycache__"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "pickletools"}
PICKLE_IMPORTS = {"torch.load", "pandas.read_pickle"}
PICKLE_CALLS = {"read_pickle", "Unpickler"}  # by last name: pd.read_pickle, pandas.read_pickle, ...
PICKLE_WEIGHT_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz"}


def python_files() -> list[Path]:
    return sorted(
        p
        for p in REPO.rglob("*.py")
        if not any(part in SKIPPED_DIRS or part.startswith(".") for part in p.relative_to(REPO).parts)
    )


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def pickle_uses(source: str) -> list[str]:
    """Each pickle use in `source` as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            prefix = f"{node.module}." if isinstance(node, ast.ImportFrom) else ""
            names = [prefix + alias.name for alias in node.names]
            found += [
                f"{node.lineno}: import {n}"
                for n in names
                if n.split(".")[0] in PICKLE_MODULES or n in PICKLE_IMPORTS
            ]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" or name.rsplit(".", 1)[-1] in PICKLE_CALLS:
                found.append(f"{node.lineno}: {name}()")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    found.append(f"{node.lineno}: {name}(allow_pickle=...)")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import joblib as jl",
        "from pickle import loads",
        "from dill import load",
        "from torch import load",
        "import torch\nstate = torch.load('w.pt')",
        "import numpy as np\nx = np.load('a.npy', allow_pickle=True)",
        "import pandas as pd\ndf = pd.read_pickle('f')",
    ],
)
def test_the_scan_finds_each_kind_of_pickle_use(snippet: str) -> None:
    assert pickle_uses(snippet)


def test_the_scan_allows_safe_loading() -> None:
    safe = "import numpy as np\nx = np.load('a.npy', allow_pickle=False)\n# never pickle\ns = 'pickle'"
    assert pickle_uses(safe) == []


def test_no_python_file_in_the_repository_uses_pickle() -> None:
    files = python_files()
    assert len(files) > 20  # the scan really walked the repository
    offences = {
        str(f.relative_to(REPO)): uses for f in files if (uses := pickle_uses(f.read_text(encoding="utf-8")))
    }
    assert offences == {}


def test_shipped_weights_are_safetensors() -> None:
    shipped = [p for p in (REPO / "assets").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in shipped)
    assert [p for p in shipped if p.suffix.lower() in PICKLE_WEIGHT_SUFFIXES] == []
