"""CUDA implementations of lincompress's custom ops (Triton).

Importing this package registers the fused Triton kernels as the ``cuda`` backend of
``lincompress::linear_attention`` and its backward (``ops.linear_attention.register_backend``),
so eager autograd, ``torch.compile`` and ``torch.export`` use them on GPU. Without Triton
nothing is registered and every device keeps the PyTorch reference; inputs the kernels
do not cover (float64, head dims over 256, a feature map without fused code) also fall
back to the reference.
"""

from __future__ import annotations

from torch import Tensor

from lincompress.ops.linear_attention import REFERENCE_BACKEND, Backend, register_backend

try:
    from lincompress.kernels import linear_attention_triton as _triton_impl
except ImportError:  # triton missing (or broken): the reference stays the only implementation
    _triton_impl = None

HAS_TRITON: bool = _triton_impl is not None


def _forward_cuda(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str, keep_state: bool):
    if not _triton_impl.supports(q, k, v, feature_map):
        return REFERENCE_BACKEND.forward(q, k, v, feature_map, eps, layout, keep_state)
    out, state = _triton_impl.forward(q, k, v, feature_map, eps, layout)
    return out, (state if keep_state else None)


def _backward_cuda(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, state: Tensor | None, feature_map: str,
                   eps: float, layout: str):  # fmt: skip
    if not _triton_impl.supports(q, k, v, feature_map):
        return REFERENCE_BACKEND.backward(grad_out, q, k, v, state, feature_map, eps, layout)
    return _triton_impl.backward(grad_out, q, k, v, state, feature_map, eps, layout)


if HAS_TRITON:
    register_backend("cuda", Backend(_forward_cuda, _backward_cuda))

__all__ = ["HAS_TRITON"]
