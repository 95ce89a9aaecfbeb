"""Classifier-free guidance settings of a compressed model, and running a pipeline the right way for them.

The teacher samples with CFG, ``v = v_uncond + S (v_cond - v_uncond)``, at its
pipeline's guidance scale S and negative prompt. The compressed *student* is trained in
one of two modes:

* ``cfg``: it keeps CFG: its conditional and unconditional predictions are each trained
  against the teacher's, and at inference it runs like the original pipeline (two
  denoiser forwards per step, or one of batch 2B).
* ``distilled``: guidance distillation: one forward on the conditional input is
  trained to predict the teacher's *guided* velocity, so at inference the pipeline runs
  at guidance scale 1 (one forward per step: half the denoiser work).

``GuidanceConfig`` is the recorded form (CLI flags ``--guidance-scale``,
``--negative-prompt``, ``--student-guidance``; the artifact's ``guidance``);
``guidance_of(artifact_dir)`` reads it back and ``run_pipeline`` runs a diffusers
pipeline as it says::

    pipe.transformer = lincompress.apply(pipe.transformer, "out/model")
    video = lincompress.run_pipeline(pipe, "a red fox in the snow", "out/model", num_inference_steps=50)

Light on imports: artifacts and the CLI use it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lincompress.errors import LinCompressError

STUDENT_GUIDANCE: tuple[str, ...] = ("cfg", "distilled")


def check_guidance_scale(scale: Any, who: str = "guidance_scale", error: type[LinCompressError] = LinCompressError) -> float:
    """A finite scale > 0 (1 = no guidance); one-line ``error`` otherwise."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise error(f"{who} must be a finite number > 0 (1 means no guidance), got {scale!r}")
    return float(scale)


def check_student_guidance(mode: Any, who: str = "student_guidance") -> str:
    if mode not in STUDENT_GUIDANCE:
        raise LinCompressError(f"unknown {who} {mode!r}; choose one of {', '.join(STUDENT_GUIDANCE)}")
    return str(mode)


@dataclass(frozen=True)
class GuidanceConfig:
    """How a compressed model samples.

    scale: the teacher's CFG scale S (None: the pipeline's default, else 1 = unguided).
    negative_prompt: the prompt of CFG's unconditional branch (None: the pipeline's default, "").
    student: ``"cfg"`` (the student keeps CFG) or ``"distilled"`` (one forward predicts the guided velocity).
    """

    scale: float | None = None
    negative_prompt: str | None = None
    student: str = "cfg"

    def __post_init__(self) -> None:
        if self.scale is not None:
            object.__setattr__(self, "scale", check_guidance_scale(self.scale))
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise LinCompressError(f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}")
        check_student_guidance(self.student)

    @property
    def guided(self) -> bool:
        """Does the teacher use CFG (a scale other than 1)?"""
        return self.scale is not None and self.scale != 1.0

    @property
    def forwards_per_step(self) -> int:
        """Denoiser forwards per sampler step at inference (a batched 2B forward counts as 2)."""
        return 2 if self.guided and self.student == "cfg" else 1

    def pipeline_scale(self) -> float | None:
        """The CFG scale to pass to the pipeline: the teacher's for ``cfg``, 1 for ``distilled``."""
        if self.student == "distilled":
            return 1.0
        return self.scale

    def updated(self, *, scale: float | None = None, student: str | None = None) -> GuidanceConfig:
        """This config with the given (non-None) scale / student mode replacing its own (``eval``'s overrides)."""
        changes = {k: v for k, v in (("scale", scale), ("student", student)) if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_target(cls, target: Any, student: str = "cfg") -> GuidanceConfig:
        """The record of how ``target``'s teacher samples (its scale and negative prompt), for a ``student`` mode."""
        return cls(scale=float(target.teacher_guidance_scale), negative_prompt=target.negative_prompt, student=student)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GuidanceConfig:
        data = dict(data or {})
        unknown = sorted(set(data) - {"scale", "negative_prompt", "student"})
        if unknown:
            raise LinCompressError(f"unknown guidance setting {unknown[0]!r}; known: scale, negative_prompt, student")
        return cls(**data)


def pipeline_call_kwargs(pipe: Any, guidance: GuidanceConfig) -> dict[str, Any]:
    """The ``pipe(...)`` kwargs that make a diffusers pipeline sample as ``guidance`` says.

    Uses the pipeline family's CFG argument (``true_cfg_scale`` for HunyuanVideo, whose
    ``guidance_scale`` is an embedded input, not CFG). ``distilled`` sets the CFG scale to
    1, so the pipeline runs one transformer forward per step.
    """
    from lincompress.pipeline_adapters import adapter_for, call_accepts

    adapter = adapter_for(pipe)
    kwargs: dict[str, Any] = {}
    scale = guidance.pipeline_scale()
    if scale is not None:
        if not call_accepts(pipe, adapter.cfg_param):
            raise LinCompressError(f"{type(pipe).__name__}.__call__ has no {adapter.cfg_param!r} argument to set the guidance scale")
        kwargs[adapter.cfg_param] = scale
    if guidance.student == "cfg" and guidance.guided and call_accepts(pipe, "negative_prompt"):
        negative = guidance.negative_prompt
        kwargs["negative_prompt"] = adapter.default_negative_prompt() if negative is None else negative
    return kwargs


def run_pipeline(pipe: Any, prompt: str | list[str], guidance: GuidanceConfig | str | Path, **kwargs: Any) -> Any:
    """Run ``pipe(prompt, ...)`` the way the compressed model was trained to sample.

    ``guidance``: an artifact directory (its recorded settings, read by ``guidance_of``; an
    artifact with a recorded few-step sampler runs through ``lincompress.run_sampler``) or a
    ``GuidanceConfig`` (guidance scale, negative prompt, student mode). For a ``distilled``
    student the pipeline runs at guidance scale 1 (one transformer forward per step); for
    ``cfg`` at the teacher's scale with its negative prompt. Other kwargs (``height``,
    ``width``, ``num_frames``, ``num_inference_steps``, ``generator``, ``output_type``...) go
    to the pipeline unchanged. Giving the CFG argument or ``negative_prompt`` yourself is
    refused, since they would contradict ``guidance``::

        pipe.transformer = lincompress.apply(pipe.transformer, "out/model")
        video = lincompress.run_pipeline(pipe, "a red fox in the snow", "out/model", num_inference_steps=50).frames[0]
    """
    from lincompress.pipeline_adapters import adapter_for

    if not isinstance(guidance, GuidanceConfig):
        from lincompress.sampler import read_sampler, run_sampler

        sampler = read_sampler(guidance)
        if sampler is not None:  # a distilled few-step student: its recorded grid, steps and guidance
            return run_sampler(pipe, prompt, sampler, **kwargs)
        guidance = guidance_of(guidance)
    guided = pipeline_call_kwargs(pipe, guidance)
    clash = sorted(set(kwargs) & ({adapter_for(pipe).cfg_param, "negative_prompt"} | set(guided)))
    if clash:
        raise LinCompressError(f"run_pipeline sets {clash[0]!r} from the guidance settings; leave it out of the kwargs")
    return pipe(prompt=prompt, **guided, **kwargs)


def guidance_of(artifact: Any) -> GuidanceConfig:
    """The guidance an artifact was trained for (teacher scale, negative prompt, student mode).

    ``artifact``: an artifact directory (only its ``lincompress.json`` is read) or a read
    ``lincompress.artifacts.Artifact``.
    """
    from lincompress.artifacts import Artifact, read_manifest

    manifest = artifact.manifest if isinstance(artifact, Artifact) else read_manifest(artifact)
    return guidance_from_manifest(manifest)


def student_guidance_of(recipe: list[Any]) -> str:
    """The student-guidance mode a recipe trained: its last training step's (recover or distill) ``student_guidance``.

    ``cfg`` when nothing was trained. The last one counts: a distillation stage after
    recovery decides how the deployed student samples.
    """
    mode = "cfg"
    for step in recipe:
        name = step.get("pass") if isinstance(step, dict) else getattr(step, "name", None)
        config = step.get("config") if isinstance(step, dict) else getattr(step, "config", None)
        if name in ("recover", "distill") and isinstance(config, dict) and config.get("student_guidance"):
            mode = check_student_guidance(config["student_guidance"])
    return mode


def guidance_from_manifest(manifest: dict[str, Any]) -> GuidanceConfig:
    """The guidance an artifact was trained for: its ``guidance`` record, else the recipe's student mode.

    Artifacts made before guidance was recorded (format 2 without ``guidance``: the recover
    step's config; format 1: its recovery settings) give their student mode with no scale
    (the target's own scale applies).
    """
    record = manifest.get("guidance")
    if isinstance(record, dict):
        return GuidanceConfig.from_dict({k: record.get(k) for k in ("scale", "negative_prompt", "student") if k in record})
    if isinstance(manifest.get("recipe"), list):
        return GuidanceConfig(student=student_guidance_of(manifest["recipe"]))
    recovery = (manifest.get("settings") or {}).get("recovery") or {}
    return GuidanceConfig(student=recovery.get("student_guidance", "cfg") or "cfg")
