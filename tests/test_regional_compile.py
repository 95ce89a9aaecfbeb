"""Regional compilation: blocks compiled inside the ``with`` (same outputs), every module eager again after."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from lincompress.regional_compile import RECOMPILE_LIMIT, compile_regions, compiled_blocks
from zoo import HandWrittenDiT


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 4, 4, generator=g), torch.full((2,), 500.0), torch.randn(2, 3, 16, generator=g))


def test_blocks_are_compiled_inside_and_eager_again_after():
    torch.manual_seed(0)
    model = HandWrittenDiT(depth=3).eval()
    want = model(*_inputs())
    limit = torch._dynamo.config.recompile_limit
    graphs = counters["stats"]["unique_graphs"]
    with compiled_blocks([model], backend="aot_eager") as n:
        assert n == 3 and all(b._compiled_call_impl is not None for b in model.blocks)
        assert model._compiled_call_impl is None  # regional: the blocks, not the model
        assert torch._dynamo.config.recompile_limit == max(limit, RECOMPILE_LIMIT)
        got = model(*_inputs())
    assert counters["stats"]["unique_graphs"] == graphs + 1  # one graph, shared by the three blocks
    torch.testing.assert_close(got, want)
    assert all(b._compiled_call_impl is None for b in model.blocks)
    assert torch._dynamo.config.recompile_limit == limit


def test_a_failure_inside_still_restores_and_user_compiled_blocks_stay_compiled():
    model = HandWrittenDiT(depth=2).eval()
    model.blocks[0].compile(backend="eager")  # the user's own
    theirs = model.blocks[0]._compiled_call_impl
    with pytest.raises(RuntimeError, match="boom"), compiled_blocks([model, model], backend="eager") as n:
        assert n == 1  # block 1 only: block 0 is the user's, and a model given twice is compiled once
        raise RuntimeError("boom")
    assert model.blocks[0]._compiled_call_impl is theirs and model.blocks[1]._compiled_call_impl is None


def test_a_model_without_repeated_blocks_is_compiled_whole():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    assert compile_regions(model) == [model]
    x = torch.randn(3, 4)
    with compiled_blocks([model], backend="eager"):
        assert model._compiled_call_impl is not None
        torch.testing.assert_close(model(x), model[2](model[1](model[0](x))))
    assert model._compiled_call_impl is None
