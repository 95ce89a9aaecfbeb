"""The op against an independent, loop-free formula; autograd, compile and export see one node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lincompress.export_utils import attention_op_counts
from lincompress.ops import linear_attention, linear_attention_reference


def naive(q, k, v, feature_map, eps):
    """Per-query loop: o_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps)."""
    phi = {"identity": lambda x: x, "relu": F.relu, "elu1": lambda x: F.elu(x) + 1}[feature_map]
    fq, fk = phi(q.double()), phi(k.double())
    weights = fq @ fk.transpose(-1, -2)  # [B, H, Nq, Nk]
    return (weights @ v.double()) / (weights.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("feature_map", ["identity", "relu", "elu1"])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_forward_matches_naive(feature_map, layout):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 11, 6, generator=g), torch.randn(2, 3, 13, 6, generator=g)
    v = torch.randn(2, 3, 13, 5, generator=g)
    if feature_map == "identity":
        q, k = q.abs(), k.abs()
    expected = naive(q, k, v, feature_map, 1e-6)
    if layout == "bnhd":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    out = linear_attention(q, k, v, feature_map, 1e-6, layout)
    if layout == "bnhd":
        out = out.transpose(1, 2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feature_map", ["identity", "relu", "elu1"])
def test_backward_matches_autograd_of_naive(feature_map):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    if feature_map == "identity":
        q, k = q.abs() + 0.1, k.abs() + 0.1
    weight = torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda a, b, c: linear_attention(a, b, c, feature_map), lambda a, b, c: naive(a, b, c, feature_map, 1e-6)):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        (fn(*inputs) * weight).sum().backward()
        grads.append([t.grad for t in inputs])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_opcheck_and_reference_consistency():
    q, k, v = (torch.randn(2, 2, 7, 4, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.lincompress.linear_attention.default, (q, k, v, "elu1", 1e-6, "bhnd"))
    torch.testing.assert_close(linear_attention(q, k, v, "elu1"), linear_attention_reference(q, k, v, "elu1"))


def test_zero_features_give_zero_not_nan():
    q, k, v = torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    out = linear_attention(q, k, v, "relu")
    assert torch.isfinite(out).all() and out.abs().max() == 0


class _Tiny(torch.nn.Module):
    def forward(self, q, k, v):
        return linear_attention(q, k, v, "elu1") * 2


def test_export_and_compile_see_one_node():
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    program = torch.export.export(_Tiny(), (q, k, v))
    assert attention_op_counts(program)["linear_attention"] == 1
    assert not [n for n in program.graph.nodes if "einsum" in str(n.target)]
    compiled = torch.compile(_Tiny(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), _Tiny()(q, k, v))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), "gelu"), "not elementwise"),
        ((torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 3)), "must be 4-D"),
        ((torch.ones(1, 2, 3, 4, dtype=torch.long),) * 3, "dtype"),
        ((torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 4)), "feature dims differ"),
        ((torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 4, 4)), "same number of tokens"),
    ],
)
def test_bad_inputs_give_one_line_errors(args, message):
    with pytest.raises((ValueError, TypeError), match=message):
        linear_attention(*args)
