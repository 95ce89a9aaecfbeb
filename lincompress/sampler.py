"""The sampler a distilled student was trained for, and running a diffusers pipeline with exactly that sampler.

``passes.Distill`` trains the student to sample in N Euler flow-matching steps on its own
sigma grid; that grid is part of the model (a 4-step student run at the teacher's 50 steps,
or on another grid, is a different and worse model). The record, in the distill step's
recipe metadata and as ``lincompress.json``'s ``"sampler"``::

    {"steps": 4, "sigmas": [1.0, 0.9, 0.75, 0.5, 0.0], "timesteps": [1000.0, 900.0, 750.0, 500.0],
     "solver": "euler", "num_train_timesteps": 1000.0,
     "guidance": {"scale": 5.0, "negative_prompt": "", "student": "distilled"}}

An artifact without a distill step has no ``"sampler"``: it keeps the teacher's own sampler
(the pipeline's scheduler, at whatever step count the user runs it).

Running a diffusers pipeline with it (the user's ``pipe`` and its scheduler stay untouched)::

    pipe.transformer = lincompress.apply(pipe.transformer, "out/model")
    sampler = lincompress.read_sampler("out/model")          # None: use the pipeline as before
    video = lincompress.run_sampler(pipe, "a red fox in the snow", sampler,
                                    height=480, width=832, num_frames=81).frames[0]

``run_sampler`` = ``sampler_pipeline`` (a new pipeline object sharing every component but
the scheduler) + ``sampler_call_kwargs`` (``num_inference_steps``, and ``sigmas`` where the
pipeline's ``__call__`` takes them) + ``lincompress.guidance.run_pipeline`` (the recorded
guidance: CFG scale, negative prompt, or scale 1 for a guidance-distilled student).

Why a scheduler and not just ``sigmas=``: in diffusers 0.42, ``FlowMatchEulerDiscreteScheduler
.set_timesteps`` takes ``sigmas=`` and ``timesteps=`` but shifts given sigmas by its ``shift``
(so only a shift-1 copy reproduces a grid), ``UniPCMultistepScheduler`` (Wan's default) takes
``sigmas=`` but integrates with a multistep solver the student was not trained for, and the
pipelines' ``__call__`` differ: ``sigmas=`` in Flux, SD3, HunyuanVideo and Sana, ``timesteps=``
in CogVideoX, LTX-Video, Mochi and Sana, neither in Wan. ``RecordedGridScheduler`` (an Euler
flow-matching scheduler that always sets the recorded grid) makes every one of them sample
exactly as the student was trained.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lincompress.errors import LinCompressError
from lincompress.guidance import GuidanceConfig, run_pipeline

SOLVERS: tuple[str, ...] = ("euler",)


class SamplerError(LinCompressError):
    """A malformed sampler record, or a pipeline call that contradicts it."""


@dataclass(frozen=True)
class SamplerConfig:
    """A few-step student's sampler: Euler flow matching over ``sigmas`` (``steps + 1`` values, decreasing to 0).

    The model is called at ``timestep = sigma * num_train_timesteps`` (diffusers' convention);
    ``guidance`` says how each step's velocity is formed (``GuidanceConfig``).
    """

    steps: int
    sigmas: tuple[float, ...]
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    num_train_timesteps: float = 1000.0
    solver: str = "euler"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SamplerError(f"a sampler needs steps >= 1 (an integer), got {self.steps!r}")
        try:
            sigmas = tuple(float(s) for s in self.sigmas)
        except (TypeError, ValueError):
            raise SamplerError(f"sampler sigmas must be numbers, got {self.sigmas!r}") from None
        object.__setattr__(self, "sigmas", sigmas)
        if len(sigmas) != self.steps + 1:
            raise SamplerError(f"a {self.steps}-step sampler needs {self.steps + 1} sigmas (the last one 0), got {len(sigmas)}")
        if not all(math.isfinite(s) for s in sigmas) or sigmas[-1] != 0.0 or sigmas[0] > 1.0:
            raise SamplerError(f"sampler sigmas must run from at most 1 down to 0, got {list(sigmas)}")
        if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
            raise SamplerError(f"sampler sigmas must be strictly decreasing, got {list(sigmas)}")
        if self.solver not in SOLVERS:
            raise SamplerError(f"unknown sampler solver {self.solver!r}; this lincompress knows {', '.join(SOLVERS)}")
        if not isinstance(self.guidance, GuidanceConfig):
            raise SamplerError(f"sampler guidance must be a GuidanceConfig, got {type(self.guidance).__name__}")
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
            raise SamplerError(f"a sampler's num_train_timesteps must be a positive number, got {n!r}")
        object.__setattr__(self, "num_train_timesteps", float(n))

    @property
    def timesteps(self) -> tuple[float, ...]:
        """The model's timestep at each step (``sigma * num_train_timesteps``), the terminal 0 excluded."""
        return tuple(s * self.num_train_timesteps for s in self.sigmas[:-1])

    @property
    def forwards(self) -> int:
        """Denoiser forwards per sample: steps x forwards per step (2 for a student that keeps CFG)."""
        return self.steps * self.guidance.forwards_per_step

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "sigmas": [round(s, 8) for s in self.sigmas],
                "timesteps": [round(t, 5) for t in self.timesteps], "solver": self.solver,
                "num_train_timesteps": self.num_train_timesteps, "guidance": self.guidance.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        if not isinstance(data, dict):
            raise SamplerError(f"a sampler record is a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"steps", "sigmas", "timesteps", "solver", "num_train_timesteps", "guidance"})
        if unknown:
            raise SamplerError(f"unknown sampler setting {unknown[0]!r}")
        missing = [k for k in ("steps", "sigmas") if k not in data]
        if missing:
            raise SamplerError(f"the sampler record lacks {missing[0]!r}")
        try:
            guidance = GuidanceConfig.from_dict(data.get("guidance"))
        except LinCompressError as exc:
            raise SamplerError(f"sampler guidance: {exc}") from None
        return cls(steps=data["steps"], sigmas=tuple(data["sigmas"]), guidance=guidance,
                   num_train_timesteps=data.get("num_train_timesteps", 1000.0), solver=data.get("solver", "euler"))

    def scheduler(self) -> Any:
        """A diffusers scheduler that samples exactly this way (``RecordedGridScheduler``), new each call."""
        return _scheduler_class()(grid=list(self.sigmas), num_train_timesteps=int(self.num_train_timesteps))


# --------------------------------------------------------------------------- reading


def sampler_from_manifest(manifest: dict[str, Any]) -> SamplerConfig | None:
    """The artifact's few-step sampler (its ``"sampler"`` record, else the recipe's), or None: the teacher's sampler."""
    record = manifest.get("sampler")
    if record is None:
        for step in reversed(manifest.get("recipe") or []):
            if isinstance(step, dict) and isinstance(step.get("metadata"), dict) and "sampler" in step["metadata"]:
                record = step["metadata"]["sampler"]
                break
    return None if record is None else SamplerConfig.from_dict(record)


def read_sampler(artifact: str | Path) -> SamplerConfig | None:
    """``lincompress.read_sampler(out_dir)``: the sampler the artifact's model was distilled for, or None.

    Reads only ``lincompress.json`` (no weights); None means the artifact keeps the
    teacher's sampler (no distillation).
    """
    from lincompress.artifacts import MANIFEST
    from lincompress.errors import ArtifactError

    path = Path(artifact) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{artifact} is not a lincompress artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return sampler_from_manifest(manifest)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt ({type(exc).__name__}); re-run `lincompress optimize`") from None
    except SamplerError as exc:
        raise ArtifactError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- diffusers


_SCHEDULER: Any = None


def _scheduler_class() -> Any:
    """``RecordedGridScheduler``, defined on first use (diffusers is imported only when a scheduler is needed)."""
    global _SCHEDULER
    if _SCHEDULER is not None:
        return _SCHEDULER
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.configuration_utils import register_to_config

    class RecordedGridScheduler(FlowMatchEulerDiscreteScheduler):
        """diffusers' Euler flow-matching scheduler, pinned to a recorded sigma grid.

        Whatever a pipeline passes to ``set_timesteps`` (a step count, its own default
        ``sigmas``/``timesteps``, a resolution-dependent ``mu``), the grid is the recorded
        one; a step count that differs from it is refused, since the student was trained
        for exactly these steps. Shift 1: the recorded sigmas are already shifted.
        """

        @register_to_config
        def __init__(self, grid: list[float] | None = None, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
            super().__init__(num_train_timesteps=num_train_timesteps, shift=1.0)
            if not grid or len(grid) < 2:
                raise SamplerError("RecordedGridScheduler needs the recorded sigma grid (steps + 1 values)")
            if shift != 1.0:
                raise SamplerError(f"RecordedGridScheduler samples its recorded (already shifted) grid; shift must be 1, got {shift}")
            self.grid = [float(s) for s in grid]

        def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, sigmas: Any = None,
                          mu: float | None = None, timesteps: Any = None) -> None:
            steps = len(self.grid) - 1
            asked = num_inference_steps
            if asked is None and sigmas is not None:
                asked = len(sigmas)
            if asked is None and timesteps is not None:
                asked = len(timesteps)
            if asked is not None and int(asked) != steps:
                raise SamplerError(f"this student samples in {steps} steps on its recorded sigma grid, not {asked}; "
                                   f"call the pipeline with num_inference_steps={steps} "
                                   "(lincompress.sampler.sampler_call_kwargs)")
            super().set_timesteps(sigmas=self.grid[:-1], device=device)

    _SCHEDULER = RecordedGridScheduler
    return _SCHEDULER


def _call_accepts(pipe: Any, name: str) -> bool:
    from lincompress.pipeline_adapters import call_accepts

    return call_accepts(pipe, name)


def sampler_pipeline(pipe: Any, sampler: SamplerConfig) -> Any:
    """A new pipeline of ``pipe``'s class with the same components and the sampler's scheduler.

    Nothing is copied (the transformer, VAE and text encoder are shared) and ``pipe`` itself,
    with its scheduler, is left as it was.
    """
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict) or "scheduler" not in components:
        raise SamplerError(f"{type(pipe).__name__} is not a diffusers pipeline with a scheduler component; "
                           "sample with SamplerConfig.scheduler() in your own loop")
    # optional settings (Wan 2.2's boundary_ratio, expand_timesteps, ...) are config entries, not components
    config = getattr(pipe, "config", {})
    settings = {k: config[k] for k in inspect.signature(type(pipe).__init__).parameters
                if k not in components and k != "self" and k in config}
    return type(pipe)(**{**components, **settings, "scheduler": sampler.scheduler()})


def sampler_call_kwargs(pipe: Any, sampler: SamplerConfig) -> dict[str, Any]:
    """The step kwargs of ``pipe(...)`` for ``sampler``: ``num_inference_steps`` (+ ``sigmas`` where ``__call__`` takes them).

    They merge with ``lincompress.guidance.pipeline_call_kwargs`` (guidance) and the user's
    own kwargs; run them on ``sampler_pipeline(pipe, sampler)``, whose scheduler holds the grid.
    """
    kwargs: dict[str, Any] = {"num_inference_steps": sampler.steps}
    if _call_accepts(pipe, "sigmas"):
        kwargs["sigmas"] = list(sampler.sigmas[:-1])
    return kwargs


def run_sampler(pipe: Any, prompt: str | list[str], sampler: SamplerConfig | None, **kwargs: Any) -> Any:
    """Run ``pipe(prompt, ...)`` as the compressed model was trained to sample.

    ``sampler`` None (an artifact without distillation) runs ``pipe`` as it is. Otherwise the
    pipeline samples on the recorded grid with the recorded guidance; giving
    ``num_inference_steps``, ``sigmas`` or ``timesteps`` yourself is refused (they would
    contradict the sampler). Other kwargs (``height``, ``width``, ``num_frames``,
    ``generator``, ``output_type``, ...) go to the pipeline unchanged.
    """
    if sampler is None:
        return pipe(prompt=prompt, **kwargs)
    clash = sorted(set(kwargs) & {"num_inference_steps", "sigmas", "timesteps"})
    if clash:
        raise SamplerError(f"run_sampler sets {clash[0]!r} from the recorded sampler; leave it out of the kwargs")
    student = sampler_pipeline(pipe, sampler)
    return run_pipeline(student, prompt, sampler.guidance, **sampler_call_kwargs(student, sampler), **kwargs)
