"""Learnable feature maps phi for linear attention, one instance per attention site.

Each map is a per-head linear projection of q/k (initialised to the identity so the
projected features start equal to the original q/k) followed by one of the op's
feature maps (``lincompress.ops.spec``), which is *not* applied here: its name is
passed to ``lincompress::linear_attention`` so the fused kernels apply it in registers
(Hedgehog's ``[softmax(x), softmax(-x)]`` included). ``features`` applies the whole
map in PyTorch, for the paths that keep it outside the op (``fused = False``, and
key-padding masks with Hedgehog, whose features cannot be zeroed through the op's input).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lincompress.ops.spec import SITE_FEATURE_MAPS, feature_map_spec

FEATURE_MAPS: tuple[str, ...] = SITE_FEATURE_MAPS  # relu, elu1, hedgehog: what a site can learn


class FeatureMap(nn.Module):
    """Per-head projection ``x @ W_h + b_h`` on ``[B, H, N, D]`` tensors; the op applies map ``name``.

    ``fused = False`` makes the site apply the map here (``features``) and pass
    ``identity`` to the op: the pre-fusion path, kept to measure against.
    """

    def __init__(self, name: str, num_heads: int, head_dim: int) -> None:
        super().__init__()
        if name not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map {name!r}; choose one of {FEATURE_MAPS}")
        self.name = name
        self.fused = True
        eye = torch.eye(head_dim).expand(num_heads, head_dim, head_dim).clone()
        self.weight = nn.Parameter(eye)
        self.bias = nn.Parameter(torch.zeros(num_heads, 1, head_dim))

    def extra_repr(self) -> str:
        return f"{self.name}, heads={self.weight.shape[0]}, head_dim={self.weight.shape[1]}"

    @property
    def feature_dim(self) -> int:
        """Width of phi(x) (2 x head_dim for Hedgehog)."""
        return feature_map_spec(self.name).expansion * self.weight.shape[-1]

    def forward(self, x: Tensor) -> Tensor:
        """The projection (what the op receives); x's dtype."""
        if x.shape[1] != self.weight.shape[0] or x.shape[-1] != self.weight.shape[1]:
            raise ValueError(
                f"feature map expects [B, {self.weight.shape[0]}, N, {self.weight.shape[1]}] inputs, got {tuple(x.shape)}"
            )
        return torch.matmul(x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)

    def features(self, projected: Tensor) -> Tensor:
        """phi of an already projected tensor, in PyTorch (fp32 maths, x's dtype out)."""
        return feature_map_spec(self.name).phi(projected.float()).to(projected.dtype)


def make_feature_map(name: str, num_heads: int, head_dim: int) -> FeatureMap:
    """Build the named feature map; one-line error for unknown names."""
    return FeatureMap(name, num_heads, head_dim)
