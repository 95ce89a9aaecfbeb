"""Fidelity of a compressed model to its original: ``lincompress eval`` and its building blocks.

    from lincompress.evaluation import evaluate
    results = evaluate(target, "out/shapes-lin50", samples=8, steps=20)
"""

from lincompress.evaluation.metrics import psnr, ssim, velocity_errors
from lincompress.evaluation.runner import evaluate, markdown_report

__all__ = ["evaluate", "markdown_report", "psnr", "ssim", "velocity_errors"]
