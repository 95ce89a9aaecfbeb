"""Tiny random-weight diffusers transformers (and a hand-written DiT) for the conformance suite.

Each entry builds a model small enough to trace and run on CPU in about a second and
says which attention sites the suite expects: ``{owner_path_suffix: kind}`` counts per kind.
Sequence lengths are chosen distinct (video tokens != text tokens != head_dim) so that
classification cannot pass by coincidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lincompress import Target

TEXT_LEN = 7


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], Target]
    expected: dict[str, int]  # kind -> number of sites


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _target(model: nn.Module, fn: Callable[[int], dict[str, Any]], name: str) -> Target:
    torch.manual_seed(0)
    return Target(model=model.eval(), example_inputs=fn, name=name)


def wan() -> Target:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32,
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 4, 2, 6, 6), "timestep": torch.full((b,), 500.0),
        "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1), "return_dict": False,
    }, "wan")


def cogvideox() -> Target:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    m = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN,
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 2, 4, 8, 8), "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1), "return_dict": False,
    }, "cogvideox")


def hunyuan_video() -> Target:
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    m = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 4, 1, 4, 4), "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
        "encoder_attention_mask": torch.ones(b, TEXT_LEN, dtype=torch.long),
        "pooled_projections": _randn(b, 8, seed=2), "guidance": torch.full((b,), 3500.0), "return_dict": False,
    }, "hunyuan_video")


def ltx_video() -> Target:
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    m = LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=2, caption_channels=16,
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 2 * 4 * 4, 4), "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_attention_mask": torch.ones(b, TEXT_LEN, dtype=torch.long),
        "num_frames": 2, "height": 4, "width": 4, "return_dict": False,
    }, "ltx_video")


def mochi() -> Target:
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(0)
    m = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=4, out_channels=4, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16,
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 4, 2, 8, 8), "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "encoder_attention_mask": torch.ones(b, TEXT_LEN, dtype=torch.bool), "return_dict": False,
    }, "mochi")


def sd3() -> Target:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    m = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=8, out_channels=4,
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 4, 8, 8), "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
        "pooled_projections": _randn(b, 8, seed=2), "timestep": torch.full((b,), 500, dtype=torch.long),
        "return_dict": False,
    }, "sd3")


def flux() -> Target:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    m = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(4, 4, 8),
    )
    n = 20
    return _target(m, lambda b: {
        "hidden_states": _randn(b, n, 4), "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
        "pooled_projections": _randn(b, 8, seed=2), "timestep": torch.full((b,), 0.5),
        "img_ids": torch.randn(n, 3, generator=_gen(3)), "txt_ids": torch.zeros(TEXT_LEN, 3), "return_dict": False,
    }, "flux")


def pixart() -> Target:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    m = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=16,
        in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 4, 8, 8), "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
        "timestep": torch.full((b,), 500, dtype=torch.long),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}, "return_dict": False,
    }, "pixart")


def sana() -> Target:
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    m = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=8, patch_size=2,
    )
    return _target(m, lambda b: {
        "hidden_states": _randn(b, 4, 8, 8), "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
        "timestep": torch.full((b,), 500, dtype=torch.long), "return_dict": False,
    }, "sana")


class _HandAttention(nn.Module):
    """Self- or cross-attention written with matmul + softmax, as research code often is."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.head_dim**-0.5
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v)
        return self.out(out.transpose(1, 2).reshape(b, n, -1))


class _HandBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _HandAttention(dim, heads)
        self.cross = _HandAttention(dim, heads, context_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ada = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(temb).unsqueeze(1).chunk(2, dim=-1)
        x = x + self.attn(self.norm1(x) * (1 + scale) + shift)
        x = x + self.cross(self.norm2(x), context)
        return x + self.mlp(self.norm3(x))


class HandWrittenDiT(nn.Module):
    """A plain DiT (patchify, adaLN blocks, matmul+softmax attention) with no diffusers code."""

    def __init__(self, channels: int = 4, dim: int = 32, heads: int = 4, depth: int = 3, context_dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, kernel_size=2, stride=2)
        self.time = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(_HandBlock(dim, heads, context_dim) for _ in range(depth))
        self.head = nn.Linear(dim, channels * 4)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        b, c, h, w = hidden_states.shape
        x = self.patch(hidden_states).flatten(2).transpose(1, 2)
        temb = self.time(timestep.view(-1, 1).to(x.dtype) / 1000.0)
        for block in self.blocks:
            x = block(x, encoder_hidden_states, temb)
        x = self.head(x).view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h, w)


def handwritten() -> Target:
    torch.manual_seed(0)
    return _target(HandWrittenDiT(), lambda b: {
        "hidden_states": _randn(b, 4, 10, 10), "timestep": torch.full((b,), 500.0),
        "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
    }, "handwritten")


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("wan", wan, {"self": 2, "cross": 2}),
        ZooEntry("cogvideox", cogvideox, {"joint": 2}),
        ZooEntry("hunyuan_video", hunyuan_video, {"joint": 2, "self": 1}),
        ZooEntry("ltx_video", ltx_video, {"self": 2, "cross": 2}),
        ZooEntry("mochi", mochi, {"joint": 2, "cross": 1}),
        ZooEntry("sd3", sd3, {"joint": 2}),
        ZooEntry("flux", flux, {"joint": 2}),
        ZooEntry("pixart", pixart, {"self": 2, "cross": 2}),
        ZooEntry("sana", sana, {"cross": 2}),
        ZooEntry("handwritten", handwritten, {"self": 3, "cross": 3}),
    ]
}
