"""ZeroGPU wiring (app/zerogpu.py): off a ZeroGPU Space the GPU functions run as they are; on one
without the `spaces` package the app stops with one clear line. (The decorator itself needs a CUDA
build of torch, which CI does not have.)"""

import dataclasses
import subprocess
import sys
from pathlib import Path

from app import zerogpu
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_off_zero_gpu_functions_are_returned_unchanged() -> None:
    settings = dataclasses.replace(Settings.from_env(), zero_gpu=False)

    def ask(question: str) -> str:
        return question

    assert zerogpu.gpu(ask, settings) is ask
    zerogpu.prepare(settings)  # imports nothing


def test_settings_read_the_space_variable(monkeypatch) -> None:
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert Settings.from_env().zero_gpu
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")
    assert not Settings.from_env().zero_gpu


def test_zero_gpu_without_the_spaces_package_is_one_clear_error() -> None:
    code = (
        "import sys; sys.modules['spaces'] = None\n"  # makes `import spaces` fail as if not installed
        "from app import zerogpu; from app.settings import Settings\n"
        "zerogpu.prepare(Settings.from_env())\n"
    )
    env = {"SPACES_ZERO_GPU": "true", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "RuntimeError: SPACES_ZERO_GPU is set but the `spaces` package is not installed" in done.stderr


def test_importing_the_app_initialises_no_cuda() -> None:
    """On a ZeroGPU Space the main process must not touch CUDA (it fails on any other machine with a
    GPU too, where this test means something: the GPU test run executes it)."""
    code = (
        "import torch\n"
        "import app, app.serve, app.ui, app.evaluate, app.ingest_many, model.bsbr, model.qa, model.encoder\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
