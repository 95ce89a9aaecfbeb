"""Identity of a base model, so an artifact refuses to load onto the wrong weights.

Hashes every state_dict entry's name, shape and dtype plus a strided sample of its
values (up to 256 per tensor): cheap on a 14B model, and still changes when the
weights are different checkpoints of the same architecture.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from lincompress.attention import SITES_ATTR

_SAMPLES = 256


def model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if SITES_ATTR in name:
            continue
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        if tensor.numel() and tensor.dtype.is_floating_point or tensor.dtype in (torch.int64, torch.int32):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES)
            digest.update(flat[::step][:_SAMPLES].to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()
