"""Learnable feature maps phi for linear attention, one instance per attention site.

Each map is a per-head linear projection of q/k (initialised to the identity so the
projected features start equal to the original q/k) followed by a non-negative map.
The elementwise maps (``relu``, ``elu1``) are *not* applied here: they are passed to
``lincompress::linear_attention`` by name so the fused kernels apply them on the
fly. Hedgehog's softmax map is not elementwise, so it runs here and the op gets
``identity``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

FEATURE_MAPS: tuple[str, ...] = ("relu", "elu1", "hedgehog")


class FeatureMap(nn.Module):
    """Per-head projection ``x @ W_h (+ b_h)`` on ``[B, H, N, D]`` tensors.

    ``elementwise`` names the map the op applies after ``forward``.
    """

    elementwise: ClassVar[str] = "identity"
    name: ClassVar[str] = ""

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        eye = torch.eye(head_dim).expand(num_heads, head_dim, head_dim).clone()
        self.weight = nn.Parameter(eye)
        self.bias = nn.Parameter(torch.zeros(num_heads, 1, head_dim))

    @property
    def out_dim(self) -> int:
        return self.weight.shape[-1]

    def project(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.weight.shape[0] or x.shape[-1] != self.weight.shape[1]:
            raise ValueError(
                f"feature map expects [B, {self.weight.shape[0]}, N, {self.weight.shape[1]}] inputs, got {tuple(x.shape)}"
            )
        w = self.weight.to(x.dtype)
        return torch.matmul(x, w) + self.bias.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(x)


class ReLUFeatureMap(FeatureMap):
    """phi(x) = relu(x W + b)."""

    elementwise = "relu"
    name = "relu"


class EluFeatureMap(FeatureMap):
    """phi(x) = elu(x W + b) + 1 (Katharopoulos et al., 2020)."""

    elementwise = "elu1"
    name = "elu1"


class HedgehogFeatureMap(FeatureMap):
    """phi(x) = [softmax(x W), softmax(-x W)] (Zhang et al., 2024, "The Hedgehog & the Porcupine").

    Spiky and monotone like softmax attention weights; output dim is 2 * head_dim.
    The softmax is taken in fp32 for stability and returned in x's dtype.
    """

    name = "hedgehog"

    @property
    def out_dim(self) -> int:
        return 2 * self.weight.shape[-1]

    def forward(self, x: Tensor) -> Tensor:
        z = self.project(x).float()
        return torch.cat([torch.softmax(z, dim=-1), torch.softmax(-z, dim=-1)], dim=-1).to(x.dtype)


_REGISTRY: dict[str, type[FeatureMap]] = {
    "relu": ReLUFeatureMap,
    "elu1": EluFeatureMap,
    "hedgehog": HedgehogFeatureMap,
}


def make_feature_map(name: str, num_heads: int, head_dim: int) -> FeatureMap:
    """Build the named feature map; one-line error for unknown names."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown feature map {name!r}; choose one of {FEATURE_MAPS}") from None
    return cls(num_heads, head_dim)
