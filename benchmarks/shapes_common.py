"""What the shapes-teacher evidence scripts (ablation.py, guidance.py, distill.py) share: the device they run on
and how a number is written in their markdown tables."""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch


def device_name(args: argparse.Namespace) -> str:
    """``--device``, else CUDA when there is one."""
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    """Wait for the GPU, so that wall times include the queued work (a no-op on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cell(v: Any) -> str:
    """A number as a table cell: 3 significant digits when small, 3 decimals, one decimal from 100 on; None is "-"."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
