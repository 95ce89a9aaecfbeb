"""The one specification of ``lincompress::linear_attention``.

Everything that says what the op accepts and computes lives here, and every consumer
imports it: the PyTorch reference and fake impls (``ops/linear_attention.py``), the
Triton kernels (``kernels/``), the ONNX exporter (function body and ``--decompose``),
the TensorRT plugin and the learnable site feature maps (``feature_maps.py``). A new
feature map is one ``FeatureMapSpec`` entry in ``FEATURE_MAPS`` below (plus, for speed,
a branch in the kernels' ``_features``/``_features_vjp``; without one, CUDA runs the
reference).

Per head, with ``phi`` the feature map named by ``feature_map``::

    o_i = phi(q_i)^T S / (phi(q_i)^T z + eps),   S = sum_j phi(k_j) v_j^T,   z = sum_j phi(k_j)

``phi`` acts on the last (feature) axis of q and k, ``[.., D] -> [.., expansion * D]``.
Layouts: ``bhnd`` = q, k ``[B, H, N, D]``, v ``[B, H, N, Dv]`` (SDPA's); ``bnhd`` =
``[B, N, H, D]`` (what diffusers projections produce). q may have a different token
count than k/v. The output has v's layout and dtype and q's batch/head/token axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import guard_or_true

OP_NAMESPACE = "lincompress"
OP_NAME = "linear_attention"
LAYOUTS: tuple[str, ...] = ("bhnd", "bnhd")
DEFAULT_FEATURE_MAP = "identity"
DEFAULT_EPS = 1e-6
DEFAULT_LAYOUT = "bhnd"
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)  # the fused kernels'
MAX_KERNEL_HEAD_DIM = 256  # q/k input dim and v dim the fused kernels take; larger runs the reference


class OnnxEmitter(Protocol):
    """What a feature map's ONNX recipe builds with: ``emit(op_type, *inputs, **attrs)`` and ``emit.constant(x)``.

    The ONNX exporter implements it twice: nodes of the ``LinearAttention`` function
    body, and onnxscript ops for ``decompose=True``; so both follow the same recipe.
    """

    def __call__(self, op_type: str, *inputs: Any, **attrs: Any) -> Any: ...

    def constant(self, value: float) -> Any: ...


@dataclass(frozen=True)
class FeatureMapSpec:
    """One feature map: its maths in PyTorch and ONNX, and how the kernels and sites treat it.

    ``phi``/``vjp`` take fp32 (or fp64) tensors, feature axis last. ``kernel_id`` is the
    fused kernels' ``FEATURE`` constant (None: no fused code, CUDA runs the reference).
    ``site``: offered as a learnable site feature map (projection, then this map);
    ``identity`` is op-only (the caller applied its own map). ``masked_key_fill``: a
    projected key value whose features are exactly zero, so padded keys can be dropped
    without leaving the fused op (None: no such value; mask in PyTorch instead).
    """

    name: str
    doc: str
    phi: Callable[[Tensor], Tensor]
    vjp: Callable[[Tensor, Tensor], Tensor]  # (x, d phi) -> d x
    onnx: Callable[[OnnxEmitter, Any], Any]
    expansion: int = 1
    kernel_id: int | None = None
    site: bool = True
    masked_key_fill: float | None = None


def _hedgehog_phi(x: Tensor) -> Tensor:
    return torch.cat([torch.softmax(x, dim=-1), torch.softmax(-x, dim=-1)], dim=-1)


def _hedgehog_vjp(x: Tensor, d_phi: Tensor) -> Tensor:
    """Through both softmaxes: J_softmax(x) g = p * (g - <g, p>), and d/dx softmax(-x) = -J_softmax(-x)."""
    p, n = torch.softmax(x, dim=-1), torch.softmax(-x, dim=-1)
    gp, gn = d_phi.split(x.shape[-1], dim=-1)
    return p * (gp - (gp * p).sum(-1, keepdim=True)) - n * (gn - (gn * n).sum(-1, keepdim=True))


_ZERO_FEATURE_INPUT = -1.0e4  # relu(-1e4) = 0 and elu(-1e4) + 1 = exp(-1e4) = 0 exactly, in every float dtype

FEATURE_MAPS: dict[str, FeatureMapSpec] = {
    spec.name: spec
    for spec in (
        FeatureMapSpec(
            "identity", "phi(x) = x (the caller already applied a feature map)",
            phi=lambda x: x, vjp=lambda x, g: g, onnx=lambda emit, x: x,
            kernel_id=0, site=False, masked_key_fill=0.0,
        ),
        FeatureMapSpec(
            "relu", "phi(x) = relu(x)",
            phi=F.relu, vjp=lambda x, g: g * (x > 0).to(g.dtype), onnx=lambda emit, x: emit("Relu", x),
            kernel_id=1, masked_key_fill=_ZERO_FEATURE_INPUT,
        ),
        FeatureMapSpec(
            "elu1", "phi(x) = elu(x) + 1 (Katharopoulos et al., 2020)",
            phi=lambda x: F.elu(x) + 1.0,
            vjp=lambda x, g: g * torch.where(x > 0, torch.ones_like(x), torch.exp(x)),
            onnx=lambda emit, x: emit("Add", emit("Elu", x, alpha=1.0), emit.constant(1.0)),
            kernel_id=2, masked_key_fill=_ZERO_FEATURE_INPUT,
        ),
        FeatureMapSpec(
            "hedgehog", "phi(x) = [softmax(x), softmax(-x)] over the feature axis (Zhang et al., 2024)",
            phi=_hedgehog_phi, vjp=_hedgehog_vjp,
            onnx=lambda emit, x: emit("Concat", emit("Softmax", x, axis=-1),
                                      emit("Softmax", emit("Neg", x), axis=-1), axis=-1),
            expansion=2, kernel_id=3,
        ),
    )
}  # fmt: skip

FEATURE_MAP_NAMES: tuple[str, ...] = tuple(FEATURE_MAPS)
SITE_FEATURE_MAPS: tuple[str, ...] = tuple(name for name, spec in FEATURE_MAPS.items() if spec.site)


def feature_map_spec(name: str) -> FeatureMapSpec:
    """The spec of ``name``; one-line ``ValueError`` naming the choices otherwise."""
    spec = FEATURE_MAPS.get(name)
    if spec is None:
        raise ValueError(f"unknown feature_map {name!r}; use one of {FEATURE_MAP_NAMES}")
    return spec


def feature_dim(feature_map: str, head_dim: int) -> int:
    """Width of phi(q): the state S is ``feature_dim x Dv`` per head."""
    return feature_map_spec(feature_map).expansion * head_dim


def check_attributes(feature_map: str, eps: float, layout: str) -> None:
    """The op's non-tensor arguments; ``ValueError`` with a one-line reason (callers add their prefix)."""
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {feature_map!r}; use one of {FEATURE_MAP_NAMES}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not supported; use one of {LAYOUTS}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")


def axes(layout: str) -> tuple[int, int]:
    """(head axis, token axis) of a 4-D tensor in ``layout``."""
    return (1, 2) if layout == "bhnd" else (2, 1)


def _require(cond: Any, message: str) -> None:
    """``cond`` (a bool, or a SymBool of symbolic sizes) must hold, else ``ValueError(message)``.

    Under torch.export / dynamic shapes a condition the tracer can decide is checked now;
    one it cannot (data-dependent token counts, e.g. a model that concatenates a variable
    history) becomes a runtime assertion in the graph instead of a guard that fails the trace.
    """
    if not guard_or_true(cond):
        raise ValueError(message)
    if not isinstance(cond, bool):
        torch._check(cond, lambda: f"linear_attention: {message}")


def check_shapes(q: Sequence[Any], k: Sequence[Any], v: Sequence[Any], layout: str) -> None:
    """Shape rules shared by the op, the plugin and the exporters (ints or symbolic sizes)."""
    if not (len(q) == len(k) == len(v) == 4):
        raise ValueError(f"q, k, v must be 4-D ({layout}), got {tuple(q)}, {tuple(k)}, {tuple(v)}")
    head, token = axes(layout)
    for other in (k, v):
        _require(q[0] == other[0], "q, k, v must share the batch size")
    for other in (k, v):
        _require(q[head] == other[head], "q, k, v must share the number of heads (repeat k/v heads for GQA)")
    _require(k[token] == v[token], "k and v must have the same number of tokens")
    _require(q[3] == k[3], f"q and k feature dims differ ({q[3]} vs {k[3]})")


def check_inputs(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> None:
    """Everything the op requires of its arguments, as one-line errors prefixed ``linear_attention:``."""
    try:
        check_attributes(feature_map, eps, layout)
        check_shapes(q.shape, k.shape, v.shape, layout)
    except ValueError as exc:
        raise ValueError(f"linear_attention: {exc}") from None
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"linear_attention: {name} has dtype {t.dtype}; use float32, float16 or bfloat16")
    if not (q.device == k.device == v.device):
        raise ValueError(f"linear_attention: q, k, v are on different devices ({q.device}, {k.device}, {v.device})")


def output_shape(q_shape: Sequence[Any], v_shape: Sequence[Any]) -> tuple[Any, ...]:
    """Both layouts keep q's first three axes and take v's feature dim (ints or symbolic dims)."""
    if len(q_shape) != 4 or len(v_shape) != 4:
        raise ValueError(f"q and v must be 4-D, got ranks {len(q_shape)} and {len(v_shape)}")
    return (q_shape[0], q_shape[1], q_shape[2], v_shape[3])
