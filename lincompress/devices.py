"""Which device and dtype to run on: one resolver for training, greedy selection and benchmarks."""

from __future__ import annotations

import torch

from lincompress.config import Arg, ArgumentError

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str | torch.device | None, arg: str = "device") -> torch.device:
    """``None``/``"auto"`` -> cuda when available, else cpu; refuses devices that are not there."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ArgumentError("{} is not a torch device; use {}, {} or {}", Arg(arg, name), Arg(arg, "cpu"),
                            Arg(arg, "cuda"), Arg(arg, "cuda:N")) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("{}: no CUDA GPU is available here; use {}", Arg(arg, str(name)), Arg(arg, "cpu"))
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ArgumentError(f"{{}}: only {torch.cuda.device_count()} CUDA device(s) here", Arg(arg, str(name)))
    elif device.type != "cpu":
        raise ArgumentError("{}: lincompress runs on cpu and cuda devices", Arg(arg, str(name)))
    return device


def resolve_dtype(name: str | None, device: torch.device, arg: str = "dtype") -> torch.dtype:
    """``auto`` -> bf16 on CUDA, fp32 on CPU."""
    if name in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ArgumentError(f"{{}} is not supported; choose one of auto, {', '.join(DTYPES)}", Arg(arg, name)) from None
