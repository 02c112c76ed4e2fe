"""Settings from the environment: DOCQA_CPU_BF16 (1 / 0 / auto) and its resolution on this CPU."""

from __future__ import annotations

import pytest
import torch

from app.settings import Settings, resolve_cpu_bf16


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("0", False), ("", None), ("auto", None), (" AUTO ", None), (" 1", True)],
    ids=["on", "off", "empty", "auto", "auto-spaced-upper", "on-spaced"],
)
def test_cpu_bf16_reads_1_0_or_auto(monkeypatch, raw, expected):
    monkeypatch.setenv("DOCQA_CPU_BF16", raw)
    assert Settings.from_env().cpu_bf16 is expected


def test_cpu_bf16_unset_is_auto(monkeypatch):
    monkeypatch.delenv("DOCQA_CPU_BF16", raising=False)
    assert Settings.from_env().cpu_bf16 is None


@pytest.mark.parametrize("raw", ["yes", "true", "2", "bf16"])
def test_cpu_bf16_bad_value_is_a_one_line_error_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("DOCQA_CPU_BF16", raw)
    with pytest.raises(ValueError, match="DOCQA_CPU_BF16 must be 0, 1 or auto") as error:
        Settings.from_env()
    assert "\n" not in str(error.value) and repr(raw) in str(error.value)


def test_resolve_cpu_bf16_keeps_an_explicit_choice_and_asks_the_cpu_otherwise():
    assert resolve_cpu_bf16(True) is True and resolve_cpu_bf16(False) is False
    assert resolve_cpu_bf16(None) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
