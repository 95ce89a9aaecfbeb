"""PSNR / SSIM / velocity errors against known values."""

from __future__ import annotations

import math

import pytest
import torch

from lincompress.evaluation.metrics import psnr, ssim, velocity_errors


def test_psnr_known_values():
    a = torch.zeros(2, 3, 16, 16, 3)
    b = a + 0.1
    assert psnr(a, b).tolist() == pytest.approx([20.0, 20.0])  # mse 0.01 -> 20 dB
    assert psnr(a, b, data_range=2.0).tolist() == pytest.approx([20 + 20 * math.log10(2)] * 2)
    assert math.isinf(float(psnr(a, a)[0]))


def test_ssim_matches_scikit_image():
    """Reference: skimage.metrics.structural_similarity(channel_axis=-1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0) on each of the two frames, averaged (scikit-image 0.26)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 2, 24, 20, 3, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert float(ssim(a, b)[0]) == pytest.approx(0.9474299813669405, abs=1e-9)
    assert float(psnr(a, b)[0]) == pytest.approx(20.53844944232946, abs=1e-9)


def test_ssim_identity_and_constant_images():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 16, 16, 3, generator=g)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 3)
    # constant images: SSIM = (2xy + C1) / (x^2 + y^2 + C1) exactly
    x, y, c1 = 0.2, 0.7, 0.01**2
    got = float(ssim(torch.full((1, 16, 16, 1), x), torch.full((1, 16, 16, 1), y))[0])
    assert got == pytest.approx((2 * x * y + c1) / (x * x + y * y + c1), rel=1e-6)  # float32 inputs
    # a noisier copy scores lower
    noisy = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    slightly = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert (ssim(a, noisy) < ssim(a, slightly)).all()


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3))  # smaller than the window
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 16, 16, 3), torch.zeros(1, 16, 17, 3))


def test_velocity_errors():
    v = torch.randn(4, 3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    same = velocity_errors(v, v)
    assert same["rel_mse"].abs().max() < 1e-12 and same["cosine"].tolist() == pytest.approx([1.0] * 4)
    opposite = velocity_errors(-v, v)
    assert opposite["rel_mse"].tolist() == pytest.approx([4.0] * 4)
    assert opposite["cosine"].tolist() == pytest.approx([-1.0] * 4)
