"""A model.py for command-line tests that start ``lincompress`` as a real process: tiny and diffusers-free.

Importing diffusers costs several seconds per process, so this is the hand-written DiT of the
recovery tests (``tests/recovery/tiny_targets.py``) with the few lines of flow-matching
scheduler recovery needs (``config.shift``, ``set_timesteps``, ``sigmas``). ``TINY_MODEL_DELAY``
(seconds) slows every forward down, so a test can signal or kill the process in the middle of
training; it changes no number.
"""

import dataclasses
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "recovery")]

from tiny_targets import recovery_target  # noqa: E402

DELAY = float(os.environ.get("TINY_MODEL_DELAY", "0"))


class FlowScheduler:
    """Rectified-flow sigmas with a static shift, as diffusers' FlowMatchEulerDiscreteScheduler makes them."""

    def __init__(self, shift: float = 2.0) -> None:
        self.config = SimpleNamespace(shift=shift, num_train_timesteps=1000, prediction_type="flow_prediction")
        self.sigmas = torch.ones(1)

    def set_timesteps(self, steps: int) -> None:
        s = torch.linspace(1.0, 1.0 / steps, steps)
        shift = self.config.shift
        self.sigmas = torch.cat([shift * s / (1 + (shift - 1) * s), torch.zeros(1)])


def _slow(module, args) -> None:
    time.sleep(DELAY)


def build():
    target = recovery_target(depth=3, scheduler=FlowScheduler())
    if DELAY:
        target.model.register_forward_pre_hook(_slow)
    return dataclasses.replace(target, name="tiny-dit")
