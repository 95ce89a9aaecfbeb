"""Fidelity metrics between a teacher's and a student's outputs.

* ``psnr`` / ``ssim`` on frames ``(N, F, H, W, C)`` (or images ``(N, H, W, C)``) in a
  known data range; SSIM is Wang et al. (2004) with an 11-tap Gaussian window,
  sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances and "valid" windows --
  the settings of scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)`` and of the original paper -- computed per
  frame and channel, averaged.
* ``velocity_errors``: how far the student's velocity is from the teacher's at the
  same point: relative MSE (``mean((v_s - v_t)^2) / mean(v_t^2)``) and cosine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_frames(x: Tensor) -> Tensor:
    """(N, F, H, W, C) float64 from (N, F, H, W, C) or (N, H, W, C)."""
    if x.dim() == 4:
        x = x[:, None]
    if x.dim() != 5:
        raise ValueError(f"expected frames (N, F, H, W, C) or images (N, H, W, C), got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-sample PSNR (dB) over all frames; identical samples give +inf."""
    a, b = _as_frames(a), _as_frames(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = (a - b).pow(2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(data_range**2 / mse.clamp(min=1e-30)), torch.full_like(mse, math.inf))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Per-sample mean SSIM over frames and channels (see the module docstring for the settings)."""
    a, b = _as_frames(a), _as_frames(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    n, nf, h, w, c = a.shape
    if h < window or w < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window} pixels, got {h}x{w}")
    # (N*F*C, 1, H, W)
    x = a.permute(0, 1, 4, 2, 3).reshape(-1, 1, h, w)
    y = b.permute(0, 1, 4, 2, 3).reshape(-1, 1, h, w)
    g = gaussian_window(window, sigma)
    kernel_h = g.view(1, 1, window, 1)
    kernel_w = g.view(1, 1, 1, window)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, kernel_h), kernel_w)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.reshape(n, -1).mean(1)


def velocity_errors(v_student: Tensor, v_teacher: Tensor) -> dict[str, Tensor]:
    """Per-sample relative MSE and cosine similarity of two velocity batches."""
    s = v_student.detach().flatten(1).to(torch.float64)
    t = v_teacher.detach().flatten(1).to(torch.float64)
    rel_mse = (s - t).pow(2).mean(1) / t.pow(2).mean(1).clamp(min=1e-30)
    cos = F.cosine_similarity(s, t, dim=1)
    return {"rel_mse": rel_mse, "cosine": cos}
