import pytest


@pytest.fixture
def one_process(monkeypatch):
    """Training in this process, whatever torchrun variables the environment has."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
