"""The shapes teacher as a lincompress Target: ``lincompress optimize examples/shapes/model.py --target-linear 0.5``.

A small diffusers ``WanTransformer3DModel`` (8 layers, 8 M parameters, pixel space,
512 video tokens) trained by ``train_teacher.py`` with flow matching on the procedural
world of ``world.py`` (coloured shapes moving in given directions); its weights ship as
``teacher.safetensors``. Recovery is conditioned on the world's prompts -- its 288
captions, "a red circle moving east, slow", encoded by ``world.CaptionEncoder`` -- and the
teacher samples with classifier-free guidance at the scale it was tuned for (its
metadata; 1, i.e. unguided, for weights trained without condition dropout) against the
empty prompt. ``Target.extras["world"]`` lets ``lincompress eval`` score what the samples
show (colour, shape, motion) analytically.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from lincompress import Target

HERE = Path(__file__).resolve().parent


def _sibling(name: str):
    """Import world.py / teacher.py from this folder under a unique module name (model.py is loaded by path)."""
    key = f"lincompress_examples_shapes_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:  # a half-imported module must not be found by the next import
            del sys.modules[key]
            raise
    return sys.modules[key]


world = _sibling("world")
teacher = _sibling("teacher")


def build() -> Target:
    model = teacher.load_teacher()
    shapes_world = world.ShapesWorld()
    encoder = world.CaptionEncoder()

    def example_inputs(batch_size: int) -> dict:
        g = torch.Generator().manual_seed(0)
        conditions = shapes_world.condition_inputs(shapes_world.sample_conditions(batch_size, g))
        return {
            "hidden_states": torch.randn(batch_size, *world.LATENT_SHAPE, generator=g),
            "timestep": torch.full((batch_size,), 500.0),
            **conditions,
            "return_dict": False,
        }

    return Target(
        model=model,
        example_inputs=example_inputs,
        scheduler=teacher.make_scheduler(),
        latent_shape=world.LATENT_SHAPE,
        prompts=[c.describe() for c in world.all_conditions()],
        prompt_encoder=encoder,
        negative_prompt="",  # the empty prompt: world.null_embedding()
        guidance_scale=teacher.guidance_scale(),
        name="shapes-teacher",
        extras={"world": shapes_world},
    )
