"""``lincompress::linear_attention``: bidirectional, normalised linear attention as one op.

What the op computes and accepts is specified once in ``lincompress.ops.spec`` (feature
maps incl. Hedgehog, layouts, eps, shape/dtype rules); this module registers it.

Why one registered op rather than plain PyTorch: autograd, ``torch.compile`` and
``torch.export`` then see a single node, which the exporters map to one ONNX
``LinearAttention`` node / TensorRT plugin, and which the CUDA backend
(``lincompress.kernels``) implements with fused Triton kernels that apply the feature
map (Hedgehog's two softmaxes included) in registers. The default implementation here
is the PyTorch reference; it accumulates in fp32.

Signature (shared by every backend)::

    linear_attention(q, k, v, feature_map="identity", eps=1e-6, layout="bhnd") -> out
    linear_attention_backward(grad_out, q, k, v, feature_map, eps, layout) -> (dq, dk, dv)

``linear_attention()`` (the Python entry point models call) validates once and, when
called eagerly on plain tensors, runs the device backend through one
``torch.autograd.Function`` instead of the dispatcher's custom-op and autograd layers
(the op's CPU cost was larger than its GPU time); that path also keeps the forward's
per-head state for the backward. Under ``torch.compile``/``torch.export``, tensor
subclasses, dispatch modes or functorch transforms it calls the registered op, so
graphs hold one node. Both paths run the same backend functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lincompress.ops.spec import (
    DEFAULT_EPS,
    DEFAULT_FEATURE_MAP,
    DEFAULT_LAYOUT,
    check_inputs,
    feature_map_spec,
)


def _to_bhnd(x: Tensor, layout: str) -> Tensor:
    return x if layout == "bhnd" else x.transpose(1, 2)


def _acc(x: Tensor) -> Tensor:
    """Accumulation dtype: fp32 for half types, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def linear_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, feature_map: str = DEFAULT_FEATURE_MAP, eps: float = DEFAULT_EPS,
    layout: str = DEFAULT_LAYOUT,
) -> Tensor:  # fmt: skip
    """Differentiable PyTorch reference, fp32 accumulation; the default implementation of the op."""
    phi = feature_map_spec(feature_map).phi
    qf = phi(_acc(_to_bhnd(q, layout)))
    kf = phi(_acc(_to_bhnd(k, layout)))
    vf = _acc(_to_bhnd(v, layout))
    state = torch.einsum("bhnk,bhnv->bhkv", kf, vf)  # S = sum_j phi(k_j) v_j^T
    normaliser = kf.sum(dim=2)  # z = sum_j phi(k_j)
    numerator = torch.einsum("bhnk,bhkv->bhnv", qf, state)
    denominator = torch.einsum("bhnk,bhk->bhn", qf, normaliser).unsqueeze(-1) + eps
    out = (numerator / denominator).to(v.dtype)
    return out if layout == "bhnd" else out.transpose(1, 2)


def linear_attention_backward_reference(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Analytic gradients in fp32 (the maths the fused backward kernels implement).

    With Q=phi(q), K=phi(k), S=K^T V, z=sum K, den=Q z+eps, O=Q S/den:
    dNum = dO/den, dDen = -sum(dO*O)/den, dQ = dNum S^T + dDen z^T,
    dS = Q^T dNum, dz = Q^T dDen, dK = V dS^T + dz, dV = K dS; then dq, dk are
    dQ, dK pulled back through phi (``FeatureMapSpec.vjp``: Hedgehog's two softmaxes).
    """
    fmap = feature_map_spec(feature_map)
    qb, kb = _acc(_to_bhnd(q, layout)), _acc(_to_bhnd(k, layout))
    vb, gb = _acc(_to_bhnd(v, layout)), _acc(_to_bhnd(grad_out, layout))
    qf, kf = fmap.phi(qb), fmap.phi(kb)
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
    dq, dk = fmap.vjp(qb, dqf), fmap.vjp(kb, dkf)
    back = (lambda t: t) if layout == "bhnd" else (lambda t: t.transpose(1, 2))
    return back(dq).to(q.dtype), back(dk).to(k.dtype), back(dv).to(v.dtype)


# --------------------------------------------------------------------------- backends


ForwardFn = Callable[[Tensor, Tensor, Tensor, str, float, str, bool], tuple[Tensor, "Tensor | None"]]
BackwardFn = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None", str, float, str], tuple[Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class Backend:
    """One device's implementation of the op pair.

    ``forward(q, k, v, feature_map, eps, layout, keep_state) -> (out, state or None)``;
    ``backward(grad_out, q, k, v, state or None, feature_map, eps, layout) -> (dq, dk, dv)``,
    contiguous, inputs' dtypes. ``state`` is whatever the forward kept for the backward
    (the fused kernels: the per-head S and z, so the backward skips recomputing them).
    """

    forward: ForwardFn
    backward: BackwardFn


def _reference_forward(q, k, v, feature_map, eps, layout, keep_state):
    with torch.no_grad():
        return linear_attention_reference(q, k, v, feature_map, eps, layout).contiguous(), None


def _reference_backward(grad_out, q, k, v, state, feature_map, eps, layout):
    grads = linear_attention_backward_reference(grad_out, q, k, v, feature_map, eps, layout)
    return tuple(g.contiguous() for g in grads)


REFERENCE_BACKEND = Backend(_reference_forward, _reference_backward)
_BACKENDS: dict[str, Backend] = {}


@torch.library.custom_op("lincompress::linear_attention", mutates_args=())
def linear_attention_op(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> Tensor:
    return _reference_forward(q, k, v, feature_map, eps, layout, False)[0]


@linear_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> Tensor:
    # Both layouts keep q's first three axes and take v's feature dim (spec.output_shape).
    return v.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))


@torch.library.custom_op("lincompress::linear_attention_backward", mutates_args=())
def linear_attention_backward_op(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str
) -> tuple[Tensor, Tensor, Tensor]:
    return _reference_backward(grad_out, q, k, v, None, feature_map, eps, layout)


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
    dq, dk, dv = linear_attention_backward_op(grad_out, q, k, v, *ctx.config)  # kernels take any strides
    return dq, dk, dv, None, None, None


linear_attention_op.register_autograd(_backward, setup_context=_setup_context)


def register_backend(device_type: str, backend: Backend) -> None:
    """Make ``backend`` the op pair's kernel for ``device_type`` (the registered ops and the eager path)."""
    linear_attention_op.register_kernel(device_type)(
        lambda q, k, v, feature_map, eps, layout: backend.forward(q, k, v, feature_map, eps, layout, False)[0]
    )
    linear_attention_backward_op.register_kernel(device_type)(
        lambda grad_out, q, k, v, feature_map, eps, layout: backend.backward(
            grad_out, q, k, v, None, feature_map, eps, layout
        )
    )
    _BACKENDS[device_type] = backend


# --------------------------------------------------------------------------- the eager path


class _EagerLinearAttention(torch.autograd.Function):
    """The op's autograd in one Function (eager only): forward keeps the backend's state."""

    @staticmethod
    def forward(ctx, q, k, v, feature_map, eps, layout, backend):
        out, state = backend.forward(q, k, v, feature_map, eps, layout, True)
        ctx.save_for_backward(q, k, v, state)  # saved tensors, so activation checkpointing recomputes it too
        ctx.config = (feature_map, eps, layout)
        ctx.backend = backend
        return out

    @staticmethod
    @once_differentiable  # like the registered op: no double backward
    def backward(ctx, grad_out):
        q, k, v, state = ctx.saved_tensors
        dq, dk, dv = ctx.backend.backward(grad_out, q, k, v, state, *ctx.config)
        return dq, dk, dv, None, None, None, None


def _plain_eager(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the call can skip the dispatcher: real tensors, nothing tracing or transforming them."""
    return (
        type(q) is Tensor and type(k) is Tensor and type(v) is Tensor
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
    )  # fmt: skip


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, feature_map: str = DEFAULT_FEATURE_MAP, eps: float = DEFAULT_EPS,
    layout: str = DEFAULT_LAYOUT,
) -> Tensor:  # fmt: skip
    """Validated entry point; runs the backend for q's device (see the module docstring)."""
    check_inputs(q, k, v, feature_map, eps, layout)
    eps = float(eps)
    if not _plain_eager(q, k, v):
        return torch.ops.lincompress.linear_attention(q, k, v, feature_map, eps, layout)
    backend = _BACKENDS.get(q.device.type, REFERENCE_BACKEND)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _EagerLinearAttention.apply(q, k, v, feature_map, eps, layout, backend)
    return backend.forward(q, k, v, feature_map, eps, layout, False)[0]
