"""What lincompress needs to know about a diffusers text-to-video pipeline, per family.

A pipeline target needs, for a given resolution and without running the pipeline's
denoising loop: the transformer's keyword arguments (latent shape, rotary embeddings,
LTX's ``num_frames/height/width/rope_interpolation_scale``, Hunyuan's embedded
``guidance``...), the prompt embeddings exactly as the pipeline hands them to the
transformer, the pipeline's defaults (resolution, CFG scale, text length) and the name
of its CFG argument. The transformer kwargs are *captured*: the pipeline is called at the
requested resolution with precomputed prompt embeddings and CFG off, and a pre-forward
hook on the transformer records its kwargs and aborts the call before the first
forward -- so no text encoder and no transformer runs, at any resolution.

Families: Wan (``WanPipeline``), CogVideoX (``CogVideoXPipeline``), HunyuanVideo
(``HunyuanVideoPipeline``) and LTX-Video (``LTXPipeline``), and their subclasses.
Adding one is one small class registered in ``ADAPTERS``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lincompress.errors import TargetError
from lincompress.fingerprint import model_fingerprint


@dataclass(frozen=True)
class Resolution:
    """The pixel size a pipeline target samples at; ``tokens`` = video tokens per sample after patching.

    ``defaulted`` names the fields taken from the pipeline's defaults rather than given.
    """

    height: int
    width: int
    frames: int
    tokens: int | None = None
    defaulted: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("height", "width", "frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TargetError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "frames": self.frames, "tokens": self.tokens,
                "defaulted": list(self.defaulted)}


def call_default(pipe: Any, name: str, fallback: Any = None) -> Any:
    """The default of ``pipe.__call__``'s argument ``name`` (what the pipeline does when it is not given)."""
    try:
        param = inspect.signature(type(pipe).__call__).parameters.get(name)
    except (TypeError, ValueError):
        return fallback
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        return fallback
    return param.default


def call_accepts(pipe: Any, name: str) -> bool:
    try:
        return name in inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return False


def _tokenizer_identity(tokenizer: Any) -> str:
    if tokenizer is None:
        return "none"
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for token, index in sorted(vocab.items(), key=lambda kv: kv[1]):
        digest.update(f"{index}:{token}\n".encode())
    return digest.hexdigest()[:16]


def _patch(config: Any, key: str, default: int = 1) -> int:
    value = getattr(config, key, None)
    if isinstance(value, (tuple, list)):
        return int(value[-1])
    return default if value is None else int(value)


class PipelineAdapter:
    """Generic knowledge; subclasses set the family's names and how it encodes prompts."""

    family: ClassVar[str] = "generic"
    classes: ClassVar[tuple[str, ...]] = ()
    cfg_param: ClassVar[str] = "guidance_scale"  # the __call__ argument that is the CFG scale
    condition_keys: ClassVar[tuple[str, ...]] = ("encoder_hidden_states",)
    latent_layout: ClassVar[str] = "cfhw"  # per-sample latent: cfhw | fchw | packed (tokens, channels)

    def __init__(self, pipe: Any, prompt_options: dict[str, Any] | None = None) -> None:
        self.pipe = pipe
        self.prompt_options = dict(prompt_options or {})

    # -- defaults -------------------------------------------------------------------
    def default_resolution(self) -> tuple[int, int, int]:
        return (int(call_default(self.pipe, "height", 480)), int(call_default(self.pipe, "width", 832)),
                int(call_default(self.pipe, "num_frames", 81)))

    def default_guidance_scale(self) -> float:
        return float(call_default(self.pipe, self.cfg_param, 1.0))

    def default_negative_prompt(self) -> str:
        return ""  # what Wan, CogVideoX and LTX use when none is given

    @property
    def max_sequence_length(self) -> int:
        value = self.prompt_options.get("max_sequence_length") or call_default(self.pipe, "max_sequence_length", 226)
        return int(value)

    @property
    def device(self) -> torch.device:
        device = getattr(self.pipe, "_execution_device", None)
        return device if isinstance(device, torch.device) else torch.device("cpu")

    @property
    def transformer_dtype(self) -> torch.dtype:
        return next(self.pipe.transformer.parameters()).dtype

    # -- prompts ----------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        """Prompt embeddings as the pipeline passes them to the transformer, one row per prompt."""
        raise TargetError(
            f"{type(self.pipe).__name__} is not a pipeline family lincompress can encode prompts for "
            "(Wan, CogVideoX, HunyuanVideo, LTX-Video); return a Target with conditions=fn and negative_conditions=fn"
        )

    def embeds_call_kwargs(self, cond: dict[str, Tensor]) -> dict[str, Any]:
        """Pipeline ``__call__`` kwargs that hand it precomputed embeddings (skipping its text encoder)."""
        return {"prompt_embeds": cond["encoder_hidden_states"]}

    def call_options(self) -> dict[str, Any]:
        """The prompt options the pipeline's ``__call__`` accepts (for runs that should encode like the cache)."""
        return {k: v for k, v in self.prompt_options.items() if call_accepts(self.pipe, k)}

    def identity(self) -> str:
        """What determines the embeddings: family, text encoder weights, tokenizer vocabulary, options, dtype."""
        parts = [self.family, type(self.pipe).__name__, str(self.transformer_dtype), f"len={self.max_sequence_length}",
                 json.dumps({k: v for k, v in self.prompt_options.items() if k != "max_sequence_length"},
                            sort_keys=True, default=str)]
        for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            module = getattr(self.pipe, name, None)
            if isinstance(module, nn.Module):
                parts.append(f"{name}={type(module).__name__}:{model_fingerprint(module)[:16]}")
            elif module is not None:
                parts.append(f"{name}={_tokenizer_identity(module)}")
        return "|".join(parts)

    # -- shapes ----------------------------------------------------------------------------
    def video_tokens(self, latent_shape: tuple[int, ...]) -> int:
        config = self.pipe.transformer.config
        if self.latent_layout == "packed":
            return int(latent_shape[0])
        if self.latent_layout == "fchw":
            f, _, h, w = latent_shape[-4:]
        else:
            _, f, h, w = latent_shape[-4:] if len(latent_shape) >= 4 else (0, 1, *latent_shape[-2:])
        patch = getattr(config, "patch_size", 1)
        if isinstance(patch, (tuple, list)) and len(patch) == 3:
            pt, ph, pw = (int(p) for p in patch)
        else:
            ph = pw = _patch(config, "patch_size")
            pt = _patch(config, "patch_size_t")
        return int(-(-f // pt) * (h // ph) * (w // pw))


class WanAdapter(PipelineAdapter):
    family = "wan"
    classes = ("WanPipeline",)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": embeds.to(self.transformer_dtype)}


class CogVideoXAdapter(PipelineAdapter):
    family = "cogvideox"
    classes = ("CogVideoXPipeline",)
    latent_layout = "fchw"

    def default_resolution(self) -> tuple[int, int, int]:
        config, scale = self.pipe.transformer.config, int(getattr(self.pipe, "vae_scale_factor_spatial", 8))
        return int(config.sample_height) * scale, int(config.sample_width) * scale, int(config.sample_frames)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": embeds}


class LTXAdapter(PipelineAdapter):
    family = "ltx"
    classes = ("LTXPipeline",)
    condition_keys = ("encoder_hidden_states", "encoder_attention_mask")
    latent_layout = "packed"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, mask, _, _ = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                                     max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def embeds_call_kwargs(self, cond: dict[str, Tensor]) -> dict[str, Any]:
        return {"prompt_embeds": cond["encoder_hidden_states"], "prompt_attention_mask": cond["encoder_attention_mask"]}


class HunyuanVideoAdapter(PipelineAdapter):
    """HunyuanVideo is guidance-*embedded*: ``guidance_scale`` feeds the transformer; real CFG is ``true_cfg_scale``."""

    family = "hunyuan_video"
    classes = ("HunyuanVideoPipeline",)
    cfg_param = "true_cfg_scale"
    condition_keys = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, Tensor]:
        options = {}
        if "prompt_template" in self.prompt_options:
            options["prompt_template"] = self.prompt_options["prompt_template"]
        embeds, pooled, mask = self.pipe.encode_prompt(prompt=prompts, max_sequence_length=self.max_sequence_length,
                                                       device=self.device, **options)
        dtype = self.transformer_dtype
        return {"encoder_hidden_states": embeds.to(dtype), "encoder_attention_mask": mask.to(dtype),
                "pooled_projections": pooled.to(dtype)}

    def embeds_call_kwargs(self, cond: dict[str, Tensor]) -> dict[str, Any]:
        return {"prompt_embeds": cond["encoder_hidden_states"], "prompt_attention_mask": cond["encoder_attention_mask"],
                "pooled_prompt_embeds": cond["pooled_projections"]}


ADAPTERS: tuple[type[PipelineAdapter], ...] = (WanAdapter, CogVideoXAdapter, LTXAdapter, HunyuanVideoAdapter)


def adapter_for(pipe: Any, prompt_options: dict[str, Any] | None = None) -> PipelineAdapter:
    """The family adapter for ``pipe`` (by class name along its MRO), else the generic one."""
    names = {cls.__name__ for cls in type(pipe).__mro__}
    for adapter in ADAPTERS:
        if names & set(adapter.classes):
            return adapter(pipe, prompt_options)
    return PipelineAdapter(pipe, prompt_options)


class _Captured(Exception):
    pass


_UNSET = object()


def capture_transformer_inputs(pipe: Any, call_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call ``pipe(**call_kwargs)`` until its transformer's first forward and return that forward's kwargs.

    The forward never runs (a pre-hook aborts it). The pipeline's scheduler is swapped
    for a copy during the call, so the user's scheduler keeps its state, and its progress
    bar is off (the call is not a generation), its own setting put back afterwards.
    """
    captured: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.update(kwargs)
        if args:
            captured["__args__"] = args
        raise _Captured

    scheduler = getattr(pipe, "scheduler", None)
    bar = getattr(pipe, "_progress_bar_config", _UNSET)  # diffusers' DiffusionPipeline.set_progress_bar_config
    quiet = hasattr(pipe, "progress_bar") and (bar is _UNSET or isinstance(bar, dict))
    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        if scheduler is not None:
            pipe.scheduler = copy.deepcopy(scheduler)
        if quiet:
            pipe._progress_bar_config = {**(bar if isinstance(bar, dict) else {}), "disable": True}
        pipe(**call_kwargs)
    except _Captured:
        pass
    except Exception as exc:  # the pipeline's own validation (resolution multiples, ...): one line
        raise TargetError(f"calling {type(pipe).__name__} to capture its transformer's inputs failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        handle.remove()
        if scheduler is not None:
            pipe.scheduler = scheduler
        if quiet and bar is _UNSET:
            del pipe._progress_bar_config
        elif quiet:
            pipe._progress_bar_config = bar
    if not captured or "__args__" in captured:
        raise TargetError("could not capture the transformer's keyword inputs from the pipeline; return a Target instead")
    return {k: v for k, v in captured.items() if k != "return_dict"}
