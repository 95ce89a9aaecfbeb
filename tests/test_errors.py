"""Errors raised by the graph passes on models that cannot be compressed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lincompress import Pipeline, Target, passes
from lincompress.errors import LinCompressError, NoAttentionError, TraceError
from lincompress.graph import trace_model
from zoo import ZOO


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))

    def forward(self, x):
        return self.net(x)


class _Untraceable(nn.Module):
    def forward(self, x):
        if x.sum().item() > 0:  # data-dependent Python control flow on a tensor value
            return x.nonzero().float().sum() * x
        return x


def _target(model, fn):
    return Target(model=model, example_inputs=fn)


def test_model_without_attention():
    target = _target(_MLP(), lambda b: {"x": torch.randn(b, 3, 4)})
    with pytest.raises(NoAttentionError, match="no attention found in _MLP"):
        Pipeline([passes.FindAttention()]).run(target)


def test_cross_attention_only_model_cannot_be_hybridized():
    with pytest.raises(NoAttentionError, match="found only cross"):
        Pipeline([passes.FindAttention(), passes.Hybridize()]).run(ZOO["sana"].build())


def test_untraceable_model_is_read_by_running_it():
    traced = trace_model(_Untraceable(), {"x": torch.ones(3)})
    assert traced.method == "eager" and set(traced.fallback_reasons) == {"fx", "export"}


class _DoesNotRun(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _MLP()

    def forward(self, x):
        return self.net(x.T)  # wrong axis for the first Linear


def test_model_that_does_not_run_names_the_module_and_the_call():
    with pytest.raises(TraceError, match=r"could not run _DoesNotRun: its forward failed in net\.net\.0 \(Linear\) "
                                         r"at linear: RuntimeError") as exc:
        trace_model(_DoesNotRun(), {"x": torch.ones(3, 4)})
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("target_linear", [-0.1, 1.5])
def test_target_out_of_range(target_linear):
    with pytest.raises(LinCompressError, match="out of range"):
        passes.HeuristicSelect(target_linear=target_linear)


def test_unknown_feature_map_and_pass_order():
    target = ZOO["handwritten"].build()
    with pytest.raises(LinCompressError, match="feature_map='gelu' is unknown; choose one of relu, elu1, hedgehog"):
        passes.Hybridize(feature_map="gelu")  # configs are validated when they are made
    with pytest.raises(LinCompressError, match=r"hybridize \(pass 1 of 1\) needs discovered attention sites; "
                                               r"put passes.FindAttention\(\) before it"):
        Pipeline([passes.Hybridize()]).run(target)
    with pytest.raises(LinCompressError, match=r"fix \(pass 3 of 3\) needs a selection of linear sites"):
        Pipeline([passes.FindAttention(), passes.Hybridize(), passes.Fix()]).run(target)


def test_pipeline_rejects_non_passes():
    with pytest.raises(TypeError, match="is not a pass"):
        Pipeline([object()])
