"""The per-site selection score r in [0, 1] (1 = softmax, 0 = linear).

Parameterised as AdaRound's rectified sigmoid, r = clip(sigmoid(a) * (zeta - gamma) + gamma, 0, 1):
unlike a plain sigmoid it reaches exactly 0 and 1, so a fully-softmax or fully-linear
hybrid is exact, while gradients flow everywhere inside (0, 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(logit: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(logit) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def logit_for_score(score: float) -> float:
    """The logit whose rectified sigmoid equals ``score`` (exactly, for 0 and 1)."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be in [0, 1], got {score}")
    if score >= 1.0:
        return 6.0  # sigmoid(6) * 1.2 - 0.1 > 1: clipped to exactly 1
    if score <= 0.0:
        return -6.0
    p = (score - GAMMA) / (ZETA - GAMMA)
    return math.log(p / (1.0 - p))
