"""CUDA implementations of lincompress's custom ops (Triton).

Importing this package registers the fused Triton kernels as the ``cuda`` kernels of
``lincompress::linear_attention`` and its backward, so eager autograd,
``torch.compile`` and ``torch.export`` use them on GPU. Without Triton nothing is
registered and every device keeps the PyTorch reference; inputs the kernels do not
cover (float64, head dims over 256) also fall back to the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lincompress.ops.linear_attention import (
    linear_attention_backward_op,
    linear_attention_backward_reference,
    linear_attention_op,
    linear_attention_reference,
)

try:
    from lincompress.kernels import linear_attention_triton as _triton_impl
except ImportError:  # triton missing (or broken): the reference stays the only implementation
    _triton_impl = None

HAS_TRITON: bool = _triton_impl is not None


def _linear_attention_cuda(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> Tensor:
    if not _triton_impl.supports(q, k, v):
        with torch.no_grad():
            return linear_attention_reference(q, k, v, feature_map, eps, layout).contiguous()
    return _triton_impl.linear_attention_forward_triton(q, k, v, feature_map, eps, layout)


def _linear_attention_backward_cuda(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str
) -> tuple[Tensor, Tensor, Tensor]:
    if not _triton_impl.supports(q, k, v):
        grads = linear_attention_backward_reference(grad_out, q, k, v, feature_map, eps, layout)
        return tuple(g.contiguous() for g in grads)
    return _triton_impl.linear_attention_backward_triton(grad_out, q, k, v, feature_map, eps, layout)


if HAS_TRITON:
    linear_attention_op.register_kernel("cuda")(_linear_attention_cuda)
    linear_attention_backward_op.register_kernel("cuda")(_linear_attention_backward_cuda)

__all__ = ["HAS_TRITON"]
