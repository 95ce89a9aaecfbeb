"""The model.py contract: ``build()`` returns a ``Target`` (or a diffusers pipeline).

A Target bundles what every pass needs: the denoiser module and a function producing
the keyword arguments of one forward call. Recovery additionally uses the scheduler,
the condition source and the latent shape; they are optional here and the recovery
pass says exactly which one is missing.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress.errors import TargetError

ExampleInputs = Callable[[int], dict[str, Any]]


@dataclass
class Target:
    """What lincompress compresses.

    model: the denoiser (e.g. a diffusers transformer), called as ``model(**kwargs)``.
    example_inputs: ``fn(batch_size) -> kwargs`` for one forward call.
    scheduler: a diffusers scheduler (flow matching) used by recovery's samplers.
    conditions: ``fn(batch_size, generator) -> kwargs`` with the conditioning inputs
        (e.g. ``encoder_hidden_states``) for recovery; defaults to example_inputs' non-latent inputs.
    latent_shape: per-sample latent shape (C, F, H, W) for recovery's samplers.
    latent_key / timestep_key: which model kwargs carry the latent and the timestep.
    name: a human name for reports.
    """

    model: nn.Module
    example_inputs: ExampleInputs
    scheduler: Any = None
    conditions: Callable[[int, torch.Generator], dict[str, Any]] | None = None
    latent_shape: tuple[int, ...] | None = None
    latent_key: str = "hidden_states"
    timestep_key: str = "timestep"
    name: str = "model"
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TargetError(f"Target.model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not callable(self.example_inputs):
            raise TargetError("Target.example_inputs must be a function batch_size -> dict of model kwargs")

    def inputs(self, batch_size: int = 1) -> dict[str, Any]:
        """Example kwargs, validated to be a dict (a common model.py mistake)."""
        kwargs = self.example_inputs(batch_size)
        if not isinstance(kwargs, dict):
            raise TargetError(
                f"example_inputs({batch_size}) returned {type(kwargs).__name__}; return a dict of model(**kwargs) arguments"
            )
        return kwargs


def _capture_transformer_inputs(pipe: Any) -> dict[str, Any]:
    """Run a diffusers pipeline for one step and capture its transformer's kwargs."""

    class _Captured(Exception):
        pass

    captured: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.update(kwargs)
        raise _Captured

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(prompt="a video", num_inference_steps=1, output_type="latent")
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise TargetError("could not capture the transformer's inputs from the pipeline; return a Target instead")
    return {k: v for k, v in captured.items() if k != "return_dict"}


def target_from_pipeline(pipe: Any, name: str = "pipeline") -> Target:
    """A Target from a diffusers pipeline: its transformer, scheduler, and inputs captured from one call."""
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise TargetError(f"{type(pipe).__name__} has no .transformer module; return a lincompress.Target from build()")
    kwargs = _capture_transformer_inputs(pipe)

    def example_inputs(batch_size: int) -> dict[str, Any]:
        return {
            k: (v.expand(batch_size, *v.shape[1:]).clone() if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
            for k, v in kwargs.items()
        }

    return Target(model=transformer, example_inputs=example_inputs, scheduler=getattr(pipe, "scheduler", None), name=name)


def load_target(path: str | Path) -> Target:
    """Import ``model.py`` and call its ``build()``; every failure is a one-line TargetError."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"model file {path} does not exist; pass the path of a model.py that defines build()")
    module_name = f"_lincompress_model_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"{path} is not an importable Python file; pass a .py file that defines build()")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user code: report, do not crash
        raise TargetError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    build = getattr(module, "build", None)
    if not callable(build):
        raise TargetError(f"{path} defines no build() function; add `def build() -> lincompress.Target`")
    try:
        built = build()
    except Exception as exc:
        raise TargetError(f"{path}: build() raised {type(exc).__name__}: {exc}") from exc
    if isinstance(built, Target):
        target = built
    elif hasattr(built, "transformer") and hasattr(built, "scheduler"):
        target = target_from_pipeline(built, name=path.parent.name)
    else:
        raise TargetError(
            f"{path}: build() returned {type(built).__name__}; return lincompress.Target(model=..., example_inputs=...) "
            "or a diffusers pipeline"
        )
    if target.name == "model":
        target.name = path.parent.name or path.stem
    target.extras.setdefault("source", str(path.resolve()))
    return target
