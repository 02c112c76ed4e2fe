"""GraphedCall (model/cuda_graph.py): a captured call replays new inputs of its shapes; other shapes fail."""

from __future__ import annotations

import pytest
import torch

from model.cuda_graph import GraphedCall

pytestmark = pytest.mark.gpu


def test_a_graph_replays_new_inputs_and_returns_copies():
    weight = torch.randn(16, 8, device="cuda")
    calls = []

    def fn(x, mask):
        calls.append(1)
        return ((x @ weight).softmax(-1) * mask[..., None], x.sum())

    x, mask = torch.randn(4, 16, device="cuda"), torch.ones(4, device="cuda")
    graph = GraphedCall(fn, (x, mask))
    n_calls = len(calls)  # the warm-up calls and the capture; replays run no Python
    for _ in range(3):
        x, mask = torch.randn(4, 16, device="cuda"), (torch.rand(4, device="cuda") > 0.5).float()
        out, total = graph(x, mask)
        want, want_total = fn(x, mask)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(total, want_total)
        again, _ = graph(torch.zeros_like(x), mask)
        torch.testing.assert_close(out, want)  # the first result is a copy, not the graph's buffer
        assert not torch.equal(again, out)
    assert len(calls) == n_calls + 3  # only the reference calls above
    with pytest.raises(ValueError, match="captured for"):
        graph(torch.randn(5, 16, device="cuda"), torch.ones(5, device="cuda"))
