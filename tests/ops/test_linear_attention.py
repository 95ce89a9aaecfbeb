"""The op against an independent, loop-free formula; autograd, compile and export see one node; the eager path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lincompress.export_utils import attention_op_counts
from lincompress.ops import linear_attention, linear_attention_backward_reference, linear_attention_reference, spec

# Written out independently of lincompress.ops.spec: every spec map must have one here.
NAIVE_PHI = {
    "identity": lambda x: x,
    "relu": F.relu,
    "elu1": lambda x: F.elu(x) + 1,
    "hedgehog": lambda x: torch.cat([torch.softmax(x, -1), torch.softmax(-x, -1)], -1),
}
MAPS = list(spec.FEATURE_MAPS)


def naive(q, k, v, feature_map, eps):
    """Per-query form: o_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps)."""
    phi = NAIVE_PHI[feature_map]
    fq, fk = phi(q.double()), phi(k.double())
    weights = fq @ fk.transpose(-1, -2)  # [B, H, Nq, Nk]
    return (weights @ v.double()) / (weights.sum(-1, keepdim=True) + eps)


def _positive_if_identity(feature_map, *tensors):
    return tuple(t.abs() + 0.1 for t in tensors) if feature_map == "identity" else tensors


def test_every_spec_map_has_an_independent_formula():
    assert set(NAIVE_PHI) == set(spec.FEATURE_MAPS)


@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_forward_matches_naive(feature_map, layout):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 11, 6, generator=g), torch.randn(2, 3, 13, 6, generator=g)
    v = torch.randn(2, 3, 13, 5, generator=g)
    q, k = _positive_if_identity(feature_map, q, k)
    expected = naive(q, k, v, feature_map, 1e-6)
    if layout == "bnhd":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    out = linear_attention(q, k, v, feature_map, 1e-6, layout)
    if layout == "bnhd":
        out = out.transpose(1, 2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feature_map", MAPS)
def test_backward_matches_autograd_of_naive(feature_map):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    q, k = _positive_if_identity(feature_map, q, k)
    weight = torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda a, b, c: linear_attention(a, b, c, feature_map), lambda a, b, c: naive(a, b, c, feature_map, 1e-6)):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        (fn(*inputs) * weight).sum().backward()
        grads.append([t.grad for t in inputs])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_analytic_backward_reference_matches_autograd_of_reference(feature_map, layout):
    """The maths the kernels implement (analytic, Hedgehog's two softmaxes) == autograd through the reference."""
    g = torch.Generator().manual_seed(2)
    shape = (lambda n, d: (2, 3, n, d)) if layout == "bhnd" else (lambda n, d: (2, n, 3, d))
    q, k = torch.randn(*shape(7, 5), generator=g, dtype=torch.float64), torch.randn(*shape(10, 5), generator=g, dtype=torch.float64)
    v = torch.randn(*shape(10, 3), generator=g, dtype=torch.float64)
    q, k = _positive_if_identity(feature_map, q, k)
    grad_out = torch.randn(*shape(7, 3), generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    want = torch.autograd.grad(linear_attention_reference(*leaves, feature_map, 1e-6, layout), leaves, grad_out)
    got = linear_attention_backward_reference(grad_out, q, k, v, feature_map, 1e-6, layout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("feature_map", MAPS)
def test_feature_map_vjp_is_the_jacobian_of_phi(feature_map):
    fmap = spec.feature_map_spec(feature_map)
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    d_phi = torch.randn(3, 4, 6 * fmap.expansion, dtype=torch.float64)
    (want,) = torch.autograd.grad(fmap.phi(x), x, d_phi)
    torch.testing.assert_close(fmap.vjp(x.detach(), d_phi), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("feature_map", ["elu1", "hedgehog"])
def test_opcheck_and_reference_consistency(feature_map):
    q, k, v = (torch.randn(2, 2, 7, 4, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.lincompress.linear_attention.default, (q, k, v, feature_map, 1e-6, "bhnd"))
    torch.testing.assert_close(linear_attention(q, k, v, feature_map), linear_attention_reference(q, k, v, feature_map))


def test_zero_features_give_zero_not_nan():
    q, k, v = torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    out = linear_attention(q, k, v, "relu")
    assert torch.isfinite(out).all() and out.abs().max() == 0


@pytest.mark.parametrize("feature_map", [n for n, s in spec.FEATURE_MAPS.items() if s.masked_key_fill is not None])
def test_masked_key_fill_zeroes_the_features(feature_map):
    fmap = spec.feature_map_spec(feature_map)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.full((2, 3), fmap.masked_key_fill, dtype=dtype)
        assert fmap.phi(x.to(torch.promote_types(dtype, torch.float32))).abs().max() == 0


class _Tiny(torch.nn.Module):
    def forward(self, q, k, v):
        return linear_attention(q, k, v, "hedgehog") * 2


def test_export_and_compile_see_one_node():
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    program = torch.export.export(_Tiny(), (q, k, v))
    assert attention_op_counts(program)["linear_attention"] == 1
    assert not [n for n in program.graph.nodes if "einsum" in str(n.target) or "softmax" in str(n.target)]
    compiled = torch.compile(_Tiny(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), _Tiny()(q, k, v))


class _DataDependentTokens(torch.nn.Module):
    """Key and value token counts read from tensors (unbacked sizes), as models with a variable history have."""

    def forward(self, q, k, v, n_k, n_v):
        a, b = n_k.item(), n_v.item()
        torch._check(a >= 0), torch._check(a <= k.shape[2]), torch._check(b >= 0), torch._check(b <= v.shape[2])
        return linear_attention(q, k[:, :, :a], v[:, :, :b], "relu")


def test_shape_checks_export_with_data_dependent_token_counts():
    """The shape rules the tracer cannot decide become runtime assertions of the exported program."""
    q, k, v = torch.rand(1, 2, 5, 4), torch.rand(1, 2, 7, 4), torch.rand(1, 2, 7, 3)
    program = torch.export.export(_DataDependentTokens(), (q, k, v, torch.tensor(6), torch.tensor(6)))
    got = program.module()(q, k, v, torch.tensor(4), torch.tensor(4))
    torch.testing.assert_close(got, linear_attention_reference(q, k[:, :, :4], v[:, :, :4], "relu"))
    with pytest.raises(RuntimeError, match="Runtime assertion failed"):  # k and v token counts differ
        program.module()(q, k, v, torch.tensor(4), torch.tensor(5))


def test_eager_path_skips_the_dispatcher_and_matches_the_op():
    """Plain eager calls run one autograd.Function; the registered op (what graphs hold) gives the same numbers."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 5, 3, 4, generator=g, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(2, 5, 3, 4, generator=g)
    eager = linear_attention(q, k, v, "hedgehog", 1e-6, "bnhd")
    op = torch.ops.lincompress.linear_attention(q, k, v, "hedgehog", 1e-6, "bnhd")
    assert type(eager.grad_fn).__name__ == "_EagerLinearAttentionBackward"
    assert type(op.grad_fn).__name__ != "_EagerLinearAttentionBackward"
    torch.testing.assert_close(eager, op, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(eager, (q, k, v), grad_out), torch.autograd.grad(op, (q, k, v), grad_out)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        assert linear_attention(q, k, v, "hedgehog", 1e-6, "bnhd").grad_fn is None


def test_eager_path_under_activation_checkpointing():
    q, k, v = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
    from torch.utils.checkpoint import checkpoint

    out = checkpoint(lambda a, b, c: linear_attention(a, b, c, "hedgehog").square().sum(), q, k, v, use_reentrant=False)
    got = torch.autograd.grad(out, (q, k, v))
    want = torch.autograd.grad(linear_attention_reference(q, k, v, "hedgehog").square().sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), "gelu"), "unknown feature_map 'gelu'"),
        ((torch.randn(1, 2, 3, 4),) * 3 + ("relu", 0.0), "eps must be"),
        ((torch.randn(1, 2, 3, 4),) * 3 + ("relu", 1e-6, "nhbd"), "layout 'nhbd'"),
        ((torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 3)), "must be 4-D"),
        ((torch.ones(1, 2, 3, 4, dtype=torch.long),) * 3, "dtype"),
        ((torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 4)), "feature dims differ"),
        ((torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 4, 4)), "same number of tokens"),
    ],
)
def test_bad_inputs_give_one_line_errors(args, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        linear_attention(*args)
    assert "\n" not in str(info.value) and str(info.value).startswith("linear_attention: ")
