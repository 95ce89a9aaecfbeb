"""The shapes teacher: a small diffusers ``WanTransformer3DModel`` in pixel space (8 layers, 8.0 M parameters).

Latent = the clip itself, ``(3, 8, 32, 32)``; patches of ``(1, 4, 4)`` give 8 x 8 x 8 =
512 video tokens, so self-attention has real work to do; the 4-token condition
sequence enters through cross-attention. Flow matching: ``x_t = (1 - t) x0 + t eps``,
the model predicts ``v = eps - x0`` at ``timestep = 1000 t``.

``ShapesDenoiser`` concatenates three fixed coordinate channels (frame index, x, y as
ramps in [-1, 1]) to the noisy clip before the transformer, the way Wan's
image-to-video model concatenates its conditioning channels. Wan's RoPE is relative
only, so without them a token cannot tell the first frame from the last at high
noise, and the teacher learnt the axis of motion but not its sign (stage 1 of
``train_log_stage1.jsonl``: 34 % of directions right); stage 2 starts from those weights
with the extra input channels zero-initialised.

Depends on torch, diffusers and safetensors only (the training script imports it on a
machine where lincompress is not installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from safetensors.torch import load_file

CONFIG = {
    "patch_size": (1, 4, 4),
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "in_channels": 6,  # 3 clip channels + 3 coordinate channels
    "out_channels": 3,
    "text_dim": 64,
    "freq_dim": 128,
    "ffn_dim": 768,
    "num_layers": 8,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}
SHIFT = 2.0  # timestep shift, used both for training's timestep sampling and the sampler
WEIGHTS = Path(__file__).with_name("teacher.safetensors")


COORD_CHANNELS = 3


def coordinate_channels(frames: int, height: int, width: int) -> torch.Tensor:
    """(1, 3, F, H, W): frame index, x and y, each a ramp over [-1, 1]."""
    t = torch.linspace(-1, 1, frames).view(frames, 1, 1).expand(frames, height, width)
    y = torch.linspace(-1, 1, height).view(1, height, 1).expand(frames, height, width)
    x = torch.linspace(-1, 1, width).view(1, 1, width).expand(frames, height, width)
    return torch.stack([t, x, y])[None].contiguous()


class ShapesDenoiser(torch.nn.Module):
    """``WanTransformer3DModel`` with fixed coordinate channels concatenated to its input.

    Called like the transformer (``hidden_states`` is the 3-channel noisy clip); returns
    what the transformer returns (the 3-channel velocity).
    """

    def __init__(self, transformer: WanTransformer3DModel, frames: int = 8, height: int = 32, width: int = 32) -> None:
        super().__init__()
        self.transformer = transformer
        self.register_buffer("coords", coordinate_channels(frames, height, width), persistent=False)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = True, attention_kwargs: dict | None = None):
        coords = self.coords.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1, -1, -1)
        return self.transformer(hidden_states=torch.cat([hidden_states, coords], 1), timestep=timestep,
                                encoder_hidden_states=encoder_hidden_states, return_dict=return_dict,
                                attention_kwargs=attention_kwargs)


def make_transformer(in_channels: int = CONFIG["in_channels"]) -> WanTransformer3DModel:
    return WanTransformer3DModel(**{**CONFIG, "in_channels": in_channels})


def make_model() -> ShapesDenoiser:
    return ShapesDenoiser(make_transformer())


def init_from_plain(model: ShapesDenoiser, plain_state: dict[str, torch.Tensor]) -> None:
    """Load a plain 3-channel transformer's weights (stage 1); the coordinate channels' input weights start at 0."""
    state = {}
    for key, value in plain_state.items():
        if key == "patch_embedding.weight" and value.shape[1] == CONFIG["in_channels"] - COORD_CHANNELS:
            value = torch.cat([value, value.new_zeros(value.shape[0], COORD_CHANNELS, *value.shape[2:])], 1)
        state[f"transformer.{key}"] = value.float()
    model.load_state_dict(state)


def make_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=SHIFT)


def shift_t(u: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """The scheduler's time shift applied to uniform draws: more weight on noisy t."""
    return shift * u / (1 + (shift - 1) * u)


def load_teacher(path: str | Path = WEIGHTS, dtype: torch.dtype = torch.float32) -> ShapesDenoiser:
    """The shipped teacher (weights stored in fp16), in ``dtype``, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train it with examples/shapes/train_teacher.py")
    state = load_file(str(path))
    model = make_model()
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the teacher architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(dtype).eval()


def teacher_metadata(path: str | Path = WEIGHTS) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    out = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def guidance_scale(path: str | Path = WEIGHTS) -> float:
    """The CFG scale the teacher was tuned for (``train_teacher.py``'s sweep); 1 if it has no unconditional mode."""
    meta = teacher_metadata(path) if Path(path).is_file() else {}
    if not meta.get("cond_dropout"):
        return 1.0
    return float(meta.get("guidance_scale", 1.0))


@torch.no_grad()
def euler_sample(model: torch.nn.Module, noise: torch.Tensor, embeddings: torch.Tensor, steps: int,
                 shift: float = SHIFT, guidance_scale: float = 1.0, null_embeddings: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Plain Euler flow-matching sampler over the diffusers scheduler's sigmas (t = 1 -> 0).

    With ``guidance_scale`` != 1, classifier-free guidance ``v_u + s (v_c - v_u)`` against
    ``null_embeddings`` (the empty prompt's), both branches in one forward of batch 2B.
    """
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps, device=noise.device)
    sigmas = scheduler.sigmas.to(noise.device, torch.float32)
    x = noise.float()
    dtype = next(model.parameters()).dtype
    guided = guidance_scale != 1.0
    if guided and null_embeddings is None:
        raise ValueError("classifier-free guidance needs null_embeddings (world.encode_null(n))")
    context = torch.cat([embeddings, null_embeddings.to(embeddings.device)]) if guided else embeddings
    for i in range(steps):
        n = x.shape[0] * (2 if guided else 1)
        t = scheduler.timesteps[i].float().expand(n)
        inp = torch.cat([x, x]) if guided else x
        v = model(hidden_states=inp.to(dtype), timestep=t, encoder_hidden_states=context.to(dtype), return_dict=False)[0].float()
        if guided:
            v_c, v_u = v.chunk(2)
            v = v_u + guidance_scale * (v_c - v_u)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x
