"""The model.py contract: ``build()`` returns a ``Target`` (or a diffusers pipeline).

A Target bundles what every pass needs: the denoiser module and a function producing
the keyword arguments of one forward call. Recovery additionally uses the scheduler,
the condition source and the latent shape; they are optional here and the recovery
pass says exactly which one is missing.

Conditions come from ``conditions=fn(batch, generator)`` (hand-written targets) or from
``prompts`` encoded by a ``prompt_encoder`` (pipeline targets: the pipeline's own
``encode_prompt``; see ``lincompress.prompts``). Classifier-free guidance of the teacher
is ``guidance_scale`` with an unconditional input from ``negative_conditions=fn(batch)``
or the encoded ``negative_prompt``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress.config import Arg, ArgumentError, PassConfig, config_fields, literal, option
from lincompress.errors import TargetError
from lincompress.guidance import check_guidance_scale
from lincompress.pipeline_adapters import Resolution, adapter_for, call_accepts, capture_transformer_inputs
from lincompress.prompts import PromptConditions, PromptEncoder, PromptNegative, check_prompts, default_prompts, read_prompts

ExampleInputs = Callable[[int], dict[str, Any]]
Conditions = Callable[[int, torch.Generator], dict[str, Any]]
NegativeConditions = Callable[[int], dict[str, Any]]


@dataclass
class Target:
    """What lincompress compresses.

    model: the denoiser (e.g. a diffusers transformer), called as ``model(**kwargs)``.
    example_inputs: ``fn(batch_size) -> kwargs`` for one forward call.
    scheduler: a diffusers scheduler (flow matching) used by recovery's samplers.
    conditions: ``fn(batch_size, generator) -> kwargs`` with the conditioning inputs
        (e.g. ``encoder_hidden_states``) for recovery; defaults to the encoded ``prompts`` if
        there are any, else to example_inputs' non-latent inputs.
    latent_shape: per-sample latent shape (C, F, H, W) for recovery's samplers.
    latent_key / timestep_key: which model kwargs carry the latent and the timestep.
    name: a human name for reports.
    prompts: text prompts to condition recovery on, encoded by ``prompt_encoder``
        (None with an encoder: the default prompt set shipped with lincompress).
    prompt_encoder: ``fn(list[str]) -> {model kwarg: [N, ...] tensor}``; an ``identity``
        attribute (a string) keys its embedding cache, else a probe of its output does.
    negative_prompt: the prompt of CFG's unconditional branch, encoded by ``prompt_encoder``
        (None: the empty prompt).
    negative_conditions: ``fn(batch_size) -> kwargs`` of CFG's unconditional branch (e.g. a
        null embedding); defaults to the encoded ``negative_prompt`` when there is an encoder.
    guidance_scale: the teacher's CFG scale S, ``v = v_u + S (v_c - v_u)`` (None: 1, unguided;
        pipeline targets default to the pipeline's own default).
    resolution: the pixel size ``latent_shape`` stands for (pipeline targets), with its token count.
    """

    model: nn.Module
    example_inputs: ExampleInputs
    scheduler: Any = None
    conditions: Conditions | None = None
    latent_shape: tuple[int, ...] | None = None
    latent_key: str = "hidden_states"
    timestep_key: str = "timestep"
    name: str = "model"
    extras: dict[str, Any] = field(default_factory=dict)
    prompts: Sequence[str] | None = None
    prompt_encoder: PromptEncoder | None = None
    negative_prompt: str | None = None
    negative_conditions: NegativeConditions | None = None
    guidance_scale: float | None = None
    resolution: Resolution | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TargetError(f"Target.model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not callable(self.example_inputs):
            raise TargetError("Target.example_inputs must be a function batch_size -> dict of model kwargs")
        if self.prompt_encoder is not None and not callable(self.prompt_encoder):
            raise TargetError("Target.prompt_encoder must be a function list[str] -> dict of model kwargs")
        if self.negative_conditions is not None and not callable(self.negative_conditions):
            raise TargetError("Target.negative_conditions must be a function batch_size -> dict of model kwargs")
        if self.resolution is not None and not isinstance(self.resolution, Resolution):
            raise TargetError("Target.resolution must be a lincompress.pipeline_adapters.Resolution")
        self._wire_prompts()
        self._wire_negative()
        if self.guidance_scale is not None:
            self.guidance_scale = check_guidance_scale(self.guidance_scale, "Target.guidance_scale", TargetError)
            if self.guidance_scale != 1.0 and self.negative_conditions is None:
                raise TargetError(
                    f"Target(guidance_scale={self.guidance_scale:g}) needs an unconditional input for CFG: "
                    "negative_conditions=fn(batch_size) -> dict of model kwargs, or prompts with a prompt_encoder"
                )

    def _wire_prompts(self) -> None:
        """``conditions`` from the prompts (default set with an encoder and no conditions); kept if already made from them."""
        derived = isinstance(self.conditions, PromptConditions)  # made from prompts: rebuilt when they change
        if self.prompts is not None:
            self.prompts = check_prompts(self.prompts, "Target.prompts")
            if self.prompt_encoder is None:
                raise TargetError("Target(prompts=...) needs prompt_encoder=fn(list[str]) -> dict of model kwargs "
                                  "(or build() returning a diffusers pipeline, whose encode_prompt is used)")
            if self.conditions is not None and not derived:
                raise TargetError("give Target either conditions=fn or prompts=[...], not both")
        if self.prompt_encoder is None or not (self.conditions is None or derived):
            return
        if self.prompts is None:
            self.prompts = default_prompts()
        current = self.conditions
        if not (derived and current.prompts == self.prompts and current.encoder is self.prompt_encoder):
            self.conditions = PromptConditions(self.prompts, self.prompt_encoder)

    def _wire_negative(self) -> None:
        """``negative_conditions`` from the (empty by default) negative prompt, when there is an encoder and no fn."""
        if self.negative_prompt is not None and self.prompt_encoder is None:
            raise TargetError("Target(negative_prompt=...) needs prompt_encoder= to encode it; "
                              "or give negative_conditions=fn(batch_size) -> dict of model kwargs")
        current = self.negative_conditions
        if self.prompt_encoder is None or not (current is None or isinstance(current, PromptNegative)):
            return
        prompt = self.negative_prompt if self.negative_prompt is not None else ""
        if not (isinstance(current, PromptNegative) and current.prompt == prompt and current.encoder is self.prompt_encoder):
            self.negative_conditions = PromptNegative(prompt, self.prompt_encoder)

    @property
    def teacher_guidance_scale(self) -> float:
        """The CFG scale the teacher samples with (1 when none is set)."""
        return 1.0 if self.guidance_scale is None else self.guidance_scale

    def inputs(self, batch_size: int = 1) -> dict[str, Any]:
        """Example kwargs, validated to be a dict (a common model.py mistake)."""
        kwargs = self.example_inputs(batch_size)
        if not isinstance(kwargs, dict):
            raise TargetError(
                f"example_inputs({batch_size}) returned {type(kwargs).__name__}; return a dict of model(**kwargs) arguments"
            )
        return kwargs

    def prompt_info(self) -> dict[str, Any] | None:
        """Identity of the prompt set (what an artifact records): sha256, size; None without prompts."""
        if not isinstance(self.conditions, PromptConditions):
            return None
        return {"sha256": self.conditions.sha256, "size": self.conditions.size}


def prepare_conditions(target: Target, cache_dir: str | Path | None = None,
                       progress: Callable[[int, int], None] | None = None) -> None:
    """Encode the target's prompts (and negative prompt) once, through the cache in ``cache_dir`` when given."""
    if isinstance(target.conditions, PromptConditions):
        target.conditions.prepare(cache_dir, progress)
    if isinstance(target.negative_conditions, PromptNegative) and target.teacher_guidance_scale != 1.0:
        target.negative_conditions.prepare(cache_dir)


def resolution_warning(target: Target, flags: bool = False) -> str | None:
    """A warning when a pipeline target's resolution came from the pipeline's defaults (None otherwise).

    ``flags=True`` names the CLI flags (``--height``...), else the Python arguments.
    """
    res = target.resolution
    if res is None or not res.defaulted:
        return None
    names = [f"--{n}" if flags else f"{n}=" for n in res.defaulted]
    tokens = f" = {res.tokens:,} video tokens per sample" if res.tokens else ""
    pipeline = target.extras.get("pipeline", "the pipeline")
    return (f"no {', '.join(names)} given: {target.name} samples at {pipeline}'s default {res.height}x{res.width}, "
            f"{res.frames} frames{tokens}; recovery at this size is slow, give a smaller "
            f"{'/'.join(f'--{n}' if flags else n for n in ('height', 'width', 'frames'))} to train faster")


class TargetArgumentError(ArgumentError, TargetError):
    """A target problem whose fix is an argument (the CLI prints it with the flag)."""


class ResolutionWarning(UserWarning):
    """A pipeline target samples at the pipeline's default resolution (``resolution_warning`` says how big)."""

    def __init__(self, message: str, target: Target) -> None:
        super().__init__(message)
        self.target = target


@dataclass
class TargetOptions(PassConfig):
    """What a user states outside model.py: the prompt set, the teacher's guidance, a pipeline's resolution.

    ``load_target(model.py, options)`` applies them (to the pipeline ``build()`` returns, or to a
    copy of its Target); every field is a flag of ``lincompress optimize`` / ``inspect`` / ``eval`` /
    ``bench`` (``prompts_file`` is ``--prompts FILE``) and an option of ``lincompress.compress``.
    An artifact records them (``lincompress.target_record``), so the target can be rebuilt as it was.
    """

    prompts: list[str] | None = option(None, cli=False, record=False,
                                       help="The prompts to condition recovery on (Python; the CLI reads --prompts FILE).")
    prompts_file: str | None = option(
        None, cli="--prompts", record=False, metavar="FILE",
        help="Text file with one prompt per line to condition recovery on [default: the set shipped with lincompress].")
    negative_prompt: str | None = option(
        None, help="Prompt of classifier-free guidance's unconditional branch [default: the pipeline's, \"\"].")
    guidance_scale: float | None = option(
        None, low=0.0, low_open=True,
        help="The teacher's classifier-free guidance scale S (1: none) [default: the pipeline's own, else 1].")
    height: int | None = option(None, low=1, help="Height in pixels a pipeline samples at [default: the pipeline's].")
    width: int | None = option(None, low=1, help="Width in pixels a pipeline samples at [default: the pipeline's].")
    frames: int | None = option(None, low=1, help="Frames a pipeline samples [default: the pipeline's].")
    max_sequence_length: int | None = option(
        None, low=1, help="Text tokens per prompt of a pipeline's text encoder [default: the pipeline's].")

    def check(self) -> None:
        if self.prompts is not None and self.prompts_file is not None:
            raise TargetArgumentError("give either {} or {}, not both", Arg("prompts"), Arg("prompts_file"))
        if self.prompts is not None:
            self.prompts = check_prompts(self.prompts)
        if self.prompts_file is not None:
            read_prompts(self.prompts_file, "prompts_file")  # a missing or empty file fails before any model loads
        if self.guidance_scale is not None and not math.isfinite(self.guidance_scale):
            raise TargetArgumentError("{} must be a finite number > 0 (1 means no guidance)",
                                      Arg("guidance_scale", self.guidance_scale))

    @property
    def states_prompts(self) -> bool:
        return self.prompts is not None or self.prompts_file is not None

    def prompt_list(self) -> list[str] | None:
        if self.prompts_file is not None:
            return read_prompts(self.prompts_file, "prompts_file")
        return list(self.prompts) if self.prompts is not None else None

    def given(self) -> dict[str, Any]:
        """The fields that are set (not None)."""
        return {f.name: getattr(self, f.name) for f in config_fields(type(self)) if getattr(self, f.name) is not None}

    def updated(self, **overrides: Any) -> TargetOptions:
        """These options with the non-None ``overrides`` (field names) replacing them; new prompts replace both forms."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        fields = self.given()
        if "prompts" in overrides or "prompts_file" in overrides:
            fields.pop("prompts", None)
            fields.pop("prompts_file", None)
        return TargetOptions.build((), {**fields, **overrides}, "TargetOptions")

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``target_from_pipeline``."""
        options = {"max_sequence_length": self.max_sequence_length} if self.max_sequence_length else None
        return {"prompts": self.prompt_list(), "negative_prompt": self.negative_prompt,
                "guidance_scale": self.guidance_scale, "height": self.height, "width": self.width,
                "frames": self.frames, "prompt_options": options}

    def apply(self, target: Target) -> Target:
        """A copy of a hand-written ``target`` with these options (the user's object is left as it is)."""
        given = [n for n in ("height", "width", "frames", "max_sequence_length") if getattr(self, n) is not None]
        if given:
            raise TargetArgumentError(
                f"{{}} applies to diffusers pipelines; {literal(target.name)} is a Target: set its latent_shape and "
                "example_inputs in model.py instead", Arg(given[0], getattr(self, given[0])))
        changes: dict[str, Any] = {}
        prompts = self.prompt_list()
        if prompts is not None:
            if target.prompt_encoder is None:
                raise TargetArgumentError(
                    f"{{}}: {literal(target.name)} has no prompt_encoder, so prompts cannot condition it; add "
                    "Target(prompt_encoder=fn) in model.py or drop the prompts",
                    Arg("prompts_file", self.prompts_file) if self.prompts_file is not None else Arg("prompts"))
            changes.update(prompts=prompts, conditions=None)  # the prompts replace a conditions fn
        if self.negative_prompt is not None:
            changes["negative_prompt"] = self.negative_prompt
        if self.guidance_scale is not None:
            changes["guidance_scale"] = self.guidance_scale
        if not changes:
            return target
        return dataclasses.replace(target, extras={**target.extras, "target_options": self}, **changes)


def configure_target(target: Target | str | Path, options: TargetOptions | None = None) -> Target:
    """``target`` (a Target or a model.py path) with ``options`` applied, warning when a pipeline's resolution was defaulted.

    The warning is a ``ResolutionWarning`` (``resolution_warning`` has its text); the CLI prints it with flag names.
    """
    if isinstance(target, Target):
        target = options.apply(target) if options is not None else target
    else:
        target = load_target(target, options)
    message = resolution_warning(target)
    if message:
        warnings.warn(ResolutionWarning(message, target), stacklevel=3)
    return target


def target_summary(target: Target, flags: bool = False) -> dict[str, Any]:
    """What a target samples: resolution (and video tokens), latent shape, teacher guidance, prompt set (JSON-ready)."""
    return {
        "name": target.name,
        "pipeline": target.extras.get("pipeline"),
        "latent_shape": list(target.latent_shape) if target.latent_shape is not None else None,
        "resolution": target.resolution.to_dict() if target.resolution is not None else None,
        "resolution_warning": resolution_warning(target, flags),
        "guidance_scale": target.teacher_guidance_scale,
        "negative_prompt": target.negative_prompt,
        "prompts": target.prompt_info(),
    }


def target_from_pipeline(
    pipe: Any, name: str = "pipeline", *, prompts: Sequence[str] | None = None, negative_prompt: str | None = None,
    guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
    frames: int | None = None, prompt_options: dict[str, Any] | None = None,
) -> Target:
    """A Target from a diffusers text-to-video pipeline: its transformer, scheduler, prompts and guidance.

    Prompts (default: the shipped prompt set) are encoded by the pipeline's own
    ``encode_prompt``; the CFG scale defaults to the pipeline's default (Wan 5, CogVideoX 6,
    LTX 3, HunyuanVideo's ``true_cfg_scale`` 1) and the negative prompt to "". The
    transformer's inputs are captured at ``height x width x frames`` (each defaulting to
    the pipeline's; ``resolution_warning`` says so) from a call that stops before the
    first transformer forward, so no resolution is ever too big to set up.
    ``prompt_options``: pipeline arguments that shape the encoding (``max_sequence_length``,
    HunyuanVideo's ``prompt_template``).
    """
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise TargetError(f"{type(pipe).__name__} has no .transformer module; return a lincompress.Target from build()")
    adapter = adapter_for(pipe, prompt_options)
    default = adapter.default_resolution()
    given = {"height": height, "width": width, "frames": frames}
    defaulted = tuple(k for k, v in given.items() if v is None)
    size = {k: (v if v is not None else default[i]) for i, (k, v) in enumerate(given.items())}
    Resolution(**size)  # validates the given values
    call = {"num_inference_steps": 1, "output_type": "latent"}
    for key, arg in (("height", "height"), ("width", "width"), ("frames", "num_frames")):
        if call_accepts(pipe, arg):
            call[arg] = size[key]
        elif key not in defaulted:
            raise TargetError(f"{type(pipe).__name__}.__call__ takes no {arg!r}, so {key} cannot be set")

    known = adapter.family != "generic"
    encoder = _PipelineEncoder(adapter) if known else None
    if not known and (prompts is not None or negative_prompt is not None or guidance_scale not in (None, 1.0)):
        adapter.encode([])  # raises: which families are supported, what to do instead
    holder: dict[str, Target] = {}
    source = PromptConditions(list(prompts) if prompts is not None else default_prompts(), encoder) if known else None
    if known:
        call.update(adapter.embeds_call_kwargs(source.example(1)))
        call.update(adapter.call_options())
        if call_accepts(pipe, adapter.cfg_param):
            call[adapter.cfg_param] = 1.0  # capture the conditional branch alone (batch 1)
    else:
        call["prompt"] = "a video"
    captured = capture_transformer_inputs(pipe, call)
    latent_key = "hidden_states"
    latent = captured.get(latent_key)
    if not isinstance(latent, torch.Tensor):
        raise TargetError(f"{type(pipe).__name__}'s transformer got no tensor {latent_key!r}; return a Target instead")
    batch0 = latent.shape[0]
    skip = {latent_key, "timestep", *(adapter.condition_keys if known else ())}
    static = {k: v for k, v in captured.items() if k not in skip}
    timestep = captured.get("timestep")

    def expand(value: Any, batch: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch0:
            return value[:1].expand(batch, *value.shape[1:]).clone()
        return value

    def example_inputs(batch_size: int) -> dict[str, Any]:
        kwargs = {k: expand(v, batch_size) for k, v in static.items()}
        kwargs[latent_key] = expand(latent, batch_size)
        if timestep is not None:
            kwargs["timestep"] = expand(timestep, batch_size)
        if known:
            kwargs.update(holder["target"].conditions.example(batch_size))
        return {**kwargs, "return_dict": False}

    latent_shape = tuple(int(s) for s in latent.shape[1:])
    resolution = Resolution(**size, tokens=adapter.video_tokens(latent_shape), defaulted=defaulted)
    target = Target(
        model=transformer, example_inputs=example_inputs, scheduler=getattr(pipe, "scheduler", None),
        latent_shape=latent_shape, latent_key=latent_key, name=name, resolution=resolution,
        prompts=source.prompts if known else None, conditions=source, prompt_encoder=encoder,
        negative_prompt=(negative_prompt if negative_prompt is not None else adapter.default_negative_prompt())
        if known else None,
        guidance_scale=(guidance_scale if guidance_scale is not None else adapter.default_guidance_scale())
        if known else None,
        extras={"pipeline": type(pipe).__name__, "pipeline_family": adapter.family,
                "prompt_options": dict(prompt_options or {})},
    )
    holder["target"] = target
    return target


class _PipelineEncoder:
    """``encoder(prompts)`` through the pipeline's ``encode_prompt``, with an identity for the embedding cache."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = self.adapter.identity()
        return self._identity

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.adapter.encode(list(prompts))


def load_target(path: str | Path, options: TargetOptions | None = None) -> Target:
    """Import ``model.py`` and call its ``build()``; every failure is a one-line TargetError.

    ``options`` (prompts, guidance, resolution) configure a pipeline that build() returns,
    or are applied to a copy of the Target it returns; options that change the target are
    kept in ``target.extras["target_options"]`` (what an artifact records to rebuild it).
    """
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
        target = options.apply(built) if options is not None else built
    elif hasattr(built, "transformer") and hasattr(built, "scheduler"):
        target = target_from_pipeline(built, name=_default_name(path), **(options.pipeline_kwargs() if options else {}))
        if options is not None and options.given():
            target.extras["target_options"] = options  # what an artifact records to rebuild this target
    else:
        raise TargetError(
            f"{path}: build() returned {type(built).__name__}; return lincompress.Target(model=..., example_inputs=...) "
            "or a diffusers pipeline"
        )
    if target.name == "model" or not target.name:
        target.name = _default_name(path)
    target.extras.setdefault("source", str(path.resolve()))
    return target


def _default_name(path: Path) -> str:
    """A model's name from where its model.py lives: ``examples/tiny_wan/model.py`` -> ``tiny_wan``.

    Resolved first, so a bare ``model.py`` is named after the current directory, never "".
    """
    resolved = path.resolve()
    return resolved.parent.name or resolved.stem or "model"
