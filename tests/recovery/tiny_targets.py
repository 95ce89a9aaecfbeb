"""Tiny recovery targets: the hand-written DiT of tests/zoo.py with a flow-matching scheduler and conditions."""

from __future__ import annotations

from typing import Any

import torch

from lincompress import Pipeline, Target, passes
from zoo import HandWrittenDiT

LATENT = (4, 4, 4)  # 4 tokens after 2x2 patches: every forward is well under a millisecond of math
CONTEXT_LEN, CONTEXT_DIM = 3, 8


def recovery_target(depth: int = 4, scheduler: bool | Any = True, seed: int = 0) -> Target:
    """``scheduler``: True (diffusers' flow-matching Euler, shift 2), False (none) or a scheduler object."""
    if scheduler is True:
        from diffusers import FlowMatchEulerDiscreteScheduler  # imported here: it costs seconds per process

        scheduler = FlowMatchEulerDiscreteScheduler(shift=2.0)
    torch.manual_seed(seed)
    model = HandWrittenDiT(channels=4, dim=16, heads=2, depth=depth, context_dim=CONTEXT_DIM).eval()

    def conditions(batch: int, generator: torch.Generator) -> dict:
        return {"encoder_hidden_states": torch.randn(batch, CONTEXT_LEN, CONTEXT_DIM, generator=generator)}

    def example_inputs(batch: int) -> dict:
        g = torch.Generator().manual_seed(1)
        return {"hidden_states": torch.randn(batch, *LATENT, generator=g), "timestep": torch.full((batch,), 500.0),
                **conditions(batch, g)}

    return Target(model=model, example_inputs=example_inputs, conditions=conditions, latent_shape=LATENT,
                  scheduler=scheduler or None, name="tiny-hand")


def hybrid_state(depth: int = 4, **kwargs):
    """find -> hybridize on a fresh tiny target; returns the State."""
    return Pipeline([passes.FindAttention(), passes.Hybridize(**kwargs)]).run(recovery_target(depth))




def guided_target(depth: int = 2, scale: float = 3.0, seed: int = 0) -> Target:
    """The tiny target with classifier-free guidance: a fixed null context is its unconditional input."""
    import dataclasses

    null = torch.randn(1, CONTEXT_LEN, CONTEXT_DIM, generator=torch.Generator().manual_seed(99))
    base = recovery_target(depth, seed=seed)
    return dataclasses.replace(base, guidance_scale=scale,
                               negative_conditions=lambda batch: {"encoder_hidden_states": null.expand(batch, -1, -1).clone()})


def guided_hybrid_state(depth: int = 2, scale: float = 3.0, **kwargs):
    return Pipeline([passes.FindAttention(), passes.Hybridize(**kwargs)]).run(guided_target(depth, scale))
