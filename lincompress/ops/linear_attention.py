"""``lincompress::linear_attention``: bidirectional, normalised linear attention as one op.

Per head, with ``f`` the elementwise feature map named by ``feature_map``::

    o_i = f(q_i)^T S / (f(q_i)^T z + eps),   S = sum_j f(k_j) v_j^T,   z = sum_j f(k_j)

Why one registered op rather than plain PyTorch: autograd, ``torch.compile`` and
``torch.export`` then see a single node, which the exporters map to one ONNX
``LinearAttention`` node / TensorRT plugin, and which the CUDA backend
(``lincompress.kernels``) implements with fused Triton kernels. The CPU (default)
implementation here is the PyTorch reference; it accumulates in fp32.

Signature (shared by every backend)::

    linear_attention(q, k, v, feature_map="identity", eps=1e-6, layout="bhnd") -> out
    linear_attention_backward(grad_out, q, k, v, feature_map, eps, layout) -> (dq, dk, dv)

* ``layout="bhnd"``: q, k ``[B, H, N, Dk]``, v ``[B, H, N, Dv]`` (SDPA's layout);
  ``layout="bnhd"``: ``[B, N, H, D]`` (what diffusers projections produce).
  q may have a different token count than k/v. ``out`` has v's layout and dtype.
* ``feature_map`` in ``ELEMENTWISE_FEATURE_MAPS``: ``identity`` (the caller already
  applied a feature map, e.g. Hedgehog), ``relu``, ``elu1`` (elu(x)+1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ELEMENTWISE_FEATURE_MAPS: tuple[str, ...] = ("identity", "relu", "elu1")
LAYOUTS: tuple[str, ...] = ("bhnd", "bnhd")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def apply_elementwise_feature_map(x: Tensor, feature_map: str) -> Tensor:
    """The elementwise part of a feature map, shared by reference and decompositions."""
    if feature_map == "identity":
        return x
    if feature_map == "relu":
        return F.relu(x)
    if feature_map == "elu1":
        return F.elu(x) + 1.0
    raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {ELEMENTWISE_FEATURE_MAPS}")


def _to_bhnd(x: Tensor, layout: str) -> Tensor:
    return x if layout == "bhnd" else x.transpose(1, 2)


def _acc(x: Tensor) -> Tensor:
    """Accumulation dtype: fp32 for half types, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def linear_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, feature_map: str = "identity", eps: float = 1e-6, layout: str = "bhnd"
) -> Tensor:
    """Differentiable PyTorch reference, fp32 accumulation; the CPU implementation of the op."""
    qf = apply_elementwise_feature_map(_acc(_to_bhnd(q, layout)), feature_map)
    kf = apply_elementwise_feature_map(_acc(_to_bhnd(k, layout)), feature_map)
    vf = _acc(_to_bhnd(v, layout))
    state = torch.einsum("bhnk,bhnv->bhkv", kf, vf)  # S = sum_j phi(k_j) v_j^T
    normaliser = kf.sum(dim=2)  # z = sum_j phi(k_j)
    numerator = torch.einsum("bhnk,bhkv->bhnv", qf, state)
    denominator = torch.einsum("bhnk,bhk->bhn", qf, normaliser).unsqueeze(-1) + eps
    out = (numerator / denominator).to(v.dtype)
    return out if layout == "bhnd" else out.transpose(1, 2)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> None:
    """One-line errors for unsupported inputs, raised before any kernel runs."""
    if layout not in LAYOUTS:
        raise ValueError(f"linear_attention: layout {layout!r} is not supported; use one of {LAYOUTS}")
    if feature_map not in ELEMENTWISE_FEATURE_MAPS:
        raise ValueError(
            f"linear_attention: feature_map {feature_map!r} is not elementwise; use one of {ELEMENTWISE_FEATURE_MAPS}"
        )
    if not (q.dim() == k.dim() == v.dim() == 4):
        raise ValueError(
            f"linear_attention: q, k, v must be 4-D ({layout}), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"linear_attention: {name} has dtype {t.dtype}; use float32, float16 or bfloat16")
    hd = (1, 2) if layout == "bhnd" else (2, 1)  # (head axis, token axis)
    if q.shape[0] != k.shape[0] or q.shape[0] != v.shape[0]:
        raise ValueError("linear_attention: q, k, v must share the batch size")
    if not (q.shape[hd[0]] == k.shape[hd[0]] == v.shape[hd[0]]):
        raise ValueError("linear_attention: q, k, v must share the number of heads (repeat k/v heads for GQA)")
    if k.shape[hd[1]] != v.shape[hd[1]]:
        raise ValueError("linear_attention: k and v must have the same number of tokens")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"linear_attention: q and k feature dims differ ({q.shape[-1]} vs {k.shape[-1]})")
    if eps <= 0:
        raise ValueError(f"linear_attention: eps must be > 0, got {eps}")


@torch.library.custom_op("lincompress::linear_attention", mutates_args=())
def linear_attention_op(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> Tensor:
    with torch.no_grad():
        return linear_attention_reference(q, k, v, feature_map, eps, layout).contiguous()


@linear_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> Tensor:
    # Both layouts keep q's first three axes and take v's feature dim.
    return v.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))


def elementwise_feature_map_grad(x: Tensor, feature_map: str) -> Tensor:
    """d f(x) / dx for the elementwise feature maps (used by the analytic backward)."""
    if feature_map == "identity":
        return torch.ones_like(x)
    if feature_map == "relu":
        return (x > 0).to(x.dtype)
    if feature_map == "elu1":
        return torch.where(x > 0, torch.ones_like(x), torch.exp(x))
    raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {ELEMENTWISE_FEATURE_MAPS}")


def linear_attention_backward_reference(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Analytic gradients in fp32 (the maths the fused backward kernels implement).

    With Q=f(q), K=f(k), S=K^T V, z=sum K, den=Q z+eps, O=Q S/den:
    dNum = dO/den, dDen = -sum(dO*O)/den, dQ = dNum S^T + dDen z^T,
    dS = Q^T dNum, dz = Q^T dDen, dK = V dS^T + dz, dV = K dS.
    """
    qb, kb = _acc(_to_bhnd(q, layout)), _acc(_to_bhnd(k, layout))
    vb, gb = _acc(_to_bhnd(v, layout)), _acc(_to_bhnd(grad_out, layout))
    qf, kf = apply_elementwise_feature_map(qb, feature_map), apply_elementwise_feature_map(kb, feature_map)
    state = torch.einsum("bhnk,bhnv->bhkv", kf, vb)
    normaliser = kf.sum(dim=2)
    den = torch.einsum("bhnk,bhk->bhn", qf, normaliser).unsqueeze(-1) + eps
    out = torch.einsum("bhnk,bhkv->bhnv", qf, state) / den
    d_num = gb / den
    d_den = -(gb * out).sum(-1) / den.squeeze(-1)
    dqf = torch.einsum("bhnv,bhkv->bhnk", d_num, state) + d_den.unsqueeze(-1) * normaliser.unsqueeze(2)
    d_state = torch.einsum("bhnk,bhnv->bhkv", qf, d_num)
    d_norm = torch.einsum("bhnk,bhn->bhk", qf, d_den)
    dkf = torch.einsum("bhnv,bhkv->bhnk", vb, d_state) + d_norm.unsqueeze(2)
    dv = torch.einsum("bhnk,bhkv->bhnv", kf, d_state)
    dq = dqf * elementwise_feature_map_grad(qb, feature_map)
    dk = dkf * elementwise_feature_map_grad(kb, feature_map)
    back = (lambda t: t) if layout == "bhnd" else (lambda t: t.transpose(1, 2))
    return back(dq).to(q.dtype), back(dk).to(k.dtype), back(dv).to(v.dtype)


@torch.library.custom_op("lincompress::linear_attention_backward", mutates_args=())
def linear_attention_backward_op(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str
) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = linear_attention_backward_reference(grad_out, q, k, v, feature_map, eps, layout)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@linear_attention_backward_op.register_fake
def _(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str):
    # Contiguous, like every real implementation (empty_like would keep a transposed view's strides).
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, feature_map, eps, layout = inputs
    ctx.save_for_backward(q, k, v)
    ctx.config = (feature_map, eps, layout)


def _backward(ctx, grad_out: Tensor):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = linear_attention_backward_op(grad_out.contiguous(), q, k, v, *ctx.config)
    return dq, dk, dv, None, None, None


linear_attention_op.register_autograd(_backward, setup_context=_setup_context)


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, feature_map: str = "identity", eps: float = 1e-6, layout: str = "bhnd"
) -> Tensor:
    """Validated entry point; dispatches to the registered backend for q's device."""
    check_inputs(q, k, v, feature_map, eps, layout)
    return torch.ops.lincompress.linear_attention(q, k, v, feature_map, float(eps), layout)
