"""Tiny configs for every transformer class diffusers exports, and the reasons for the ones that cannot be built tiny.

``TINY[class name]`` is either a ``Tiny`` (config overrides, an ``inputs(batch)``
function, the expected attention sites ``{kind: count}`` read from the model's code,
and optionally inputs at a second resolution for the call-order checks) or a
``CannotBuild`` with the reason, which the conformance suite prints as its skip
reason. Sequence lengths are chosen distinct (image tokens != text tokens != head
dims) so that classification cannot pass by coincidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

TEXT = 7  # text tokens everywhere (distinct from every image-token count below)

Inputs = Callable[[int], dict[str, Any]]


@dataclass(frozen=True)
class Tiny:
    config: dict[str, Any]
    inputs: Inputs
    expected: dict[str, int]
    alt_inputs: Inputs | None = None  # another resolution, for call-order stability
    note: str = ""
    atol: float = 1e-4  # r=0 vs the reference formula (looser where the model runs attention in bf16)
    no_export: str = ""  # why the fixed model cannot be exported, where it cannot


@dataclass(frozen=True)
class CannotBuild:
    reason: str


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def r(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed))


def t_long(b: int, value: int = 500) -> torch.Tensor:
    return torch.full((b,), value, dtype=torch.long)


def t_float(b: int, value: float = 500.0) -> torch.Tensor:
    return torch.full((b,), value)


def text(b: int, dim: int, length: int = TEXT, seed: int = 1) -> torch.Tensor:
    return r(b, length, dim, seed=seed)


def _wan_like(frames: int = 2, size: int = 6, channels: int = 4, text_dim: int = 16) -> Inputs:
    return lambda b: {"hidden_states": r(b, channels, frames, size, size), "timestep": t_float(b),
                      "encoder_hidden_states": text(b, text_dim), "return_dict": False}


_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)


def _flux_like(n: int = 20, channels: int = 4, text_dim: int = 16, pooled: int | None = 8, guidance: bool = False,
               ids: int = 3) -> Inputs:
    def inputs(b: int) -> dict[str, Any]:
        kw = {"hidden_states": r(b, n, channels), "encoder_hidden_states": text(b, text_dim),
              "timestep": t_float(b, 0.5), "img_ids": r(n, ids, seed=3), "txt_ids": torch.zeros(TEXT, ids),
              "return_dict": False}
        if pooled:
            kw["pooled_projections"] = r(b, pooled, seed=2)
        if guidance:
            kw["guidance"] = t_float(b, 3.5)
        return kw
    return inputs


def _ideogram_inputs(b: int, text_tokens: int = 4, side: int = 3) -> dict[str, Any]:
    from diffusers.models.transformers.transformer_ideogram4 import (
        IMAGE_POSITION_OFFSET, LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR,
    )

    image = side * side
    n = text_tokens + image
    hidden = torch.zeros(b, n, 16)
    hidden[:, text_tokens:] = r(b, image, 16)
    enc = torch.zeros(b, n, 24)
    enc[:, :text_tokens] = r(b, text_tokens, 24, seed=1)
    pos = torch.zeros(b, n, 3, dtype=torch.long)
    pos[:, :text_tokens] = torch.arange(text_tokens).view(-1, 1)
    grid = torch.arange(image)
    pos[:, text_tokens:, 0] = IMAGE_POSITION_OFFSET
    pos[:, text_tokens:, 1] = grid // side + IMAGE_POSITION_OFFSET
    pos[:, text_tokens:, 2] = grid % side + IMAGE_POSITION_OFFSET
    indicator = torch.full((b, n), OUTPUT_IMAGE_INDICATOR, dtype=torch.long)
    indicator[:, :text_tokens] = LLM_TOKEN_INDICATOR
    return {"hidden_states": hidden, "encoder_hidden_states": enc, "timestep": torch.full((b,), 0.5),
            "position_ids": pos, "segment_ids": torch.ones(b, n, dtype=torch.long), "indicator": indicator,
            "return_dict": False}


def _krea_inputs(b: int, side: int = 3, text_tokens: int = 4) -> dict[str, Any]:
    image = side * side
    pos = torch.zeros(text_tokens + image, 3)
    pos[text_tokens:, 1] = torch.arange(side).repeat_interleave(side).float()
    pos[text_tokens:, 2] = torch.arange(side).repeat(side).float()
    return {"hidden_states": r(b, image, 16), "encoder_hidden_states": r(b, text_tokens, 3, 16, seed=1),
            "timestep": torch.full((b,), 0.5), "position_ids": pos,
            "encoder_attention_mask": torch.ones(b, text_tokens, dtype=torch.bool), "return_dict": False}


def _qwen21_inputs(b: int, height: int, width: int) -> dict[str, Any]:
    slots = height * width // 4  # one vision slot per 2x2 group of target latents, after the text
    img_mask = torch.zeros(b, TEXT + slots, dtype=torch.bool)
    img_mask[:, TEXT:] = True
    return {"hidden_states": r(b, height * width, 4), "encoder_hidden_states": text(b, 8),
            "encoder_hidden_states_mask": torch.ones(b, TEXT, dtype=torch.long), "timestep": t_float(b, 1.0),
            "img_shapes": [[(1, height, width)]] * b, "img_mask": img_mask, "return_dict": False}


def _hunyuan15_inputs(b: int, frames: int, height: int, width: int) -> dict[str, Any]:
    return {"hidden_states": r(b, 4, frames, height, width), "timestep": t_float(b, 1.0),
            "encoder_hidden_states": text(b, 16), "encoder_hidden_states_2": r(b, 4, 8, seed=2),
            "encoder_attention_mask": torch.ones(b, TEXT), "encoder_attention_mask_2": torch.ones(b, 4),
            "image_embeds": torch.zeros(b, 3, 12), "return_dict": False}


def _hidream_inputs(b: int, height: int, width: int) -> dict[str, Any]:
    return {"hidden_states": r(b, 4, height, width), "encoder_hidden_states_t5": text(b, 8),
            "encoder_hidden_states_llama3": r(2, b, TEXT, 4, seed=2), "pooled_embeds": r(b, 8, seed=3),
            "timesteps": t_long(b), "return_dict": False}


def _lumina2_inputs(b: int, height: int, width: int) -> dict[str, Any]:
    return {"hidden_states": r(b, 4, height, width), "encoder_hidden_states": text(b, 16), "timestep": t_float(b, 0.5),
            "encoder_attention_mask": torch.ones(b, TEXT, dtype=torch.bool), "return_dict": False}


def _omnigen_inputs(b: int, height: int, width: int) -> dict[str, Any]:
    n = TEXT + 1 + height * width // 4
    return {"hidden_states": r(b, 4, height, width), "timestep": torch.full((b,), 0.5),
            "input_ids": torch.randint(0, 10, (b, TEXT), generator=_g(2)), "input_img_latents": [],
            "input_image_sizes": {}, "attention_mask": torch.ones(b, n, n),
            "position_ids": torch.arange(n).repeat(b, 1), "return_dict": False}


def _minimax_h3_inputs(b: int, text_tokens: int = 4, audio: int = 6, video: int = 8) -> dict[str, Any]:
    n = text_tokens + audio + video
    text_idx = torch.arange(text_tokens)
    audio_idx = torch.arange(text_tokens, text_tokens + audio)
    video_idx = torch.arange(text_tokens + audio, n)
    tags = torch.empty(n, dtype=torch.long)
    tags[text_idx], tags[audio_idx], tags[video_idx] = 1, 2, 0
    t_idx = torch.zeros(n, dtype=torch.long)
    t_idx[audio_idx] = 1
    pos = torch.zeros(n, 3)
    pos[:, 0] = torch.arange(n).float()
    pos[video_idx, 1] = (torch.arange(video) % 4).float()
    pos[video_idx, 2] = (torch.arange(video) % 2).float()
    return {"hidden_states": r(b, video, 16), "audio_hidden_states": r(b, audio, 6, seed=1),
            "encoder_hidden_states": r(b, text_tokens, 8, seed=2), "timestep": torch.tensor([0.7, 0.3]),
            "timestep_indices": t_idx, "token_tags": tags, "position_ids": pos, "video_indices": video_idx,
            "audio_indices": audio_idx, "text_indices": text_idx, "return_dict": False}


def _cosmos3_inputs(b: int, side: int = 2) -> dict[str, Any]:
    vision = side * side
    n = 2 + vision
    idx = torch.arange(2, n)
    return {"input_ids": torch.tensor([1, 2]), "text_indexes": torch.tensor([0, 1]),
            "position_ids": torch.zeros(3, n, dtype=torch.long), "und_len": 2, "sequence_length": n,
            "vision_tokens": [r(1, 2, 1, side, side)], "vision_token_shapes": [(1, side, side)],
            "vision_sequence_indexes": idx, "vision_mse_loss_indexes": idx, "vision_timesteps": torch.ones(vision),
            "vision_noisy_frame_indexes": [torch.tensor([0])], "return_dict": False}


def _stable_audio_rope(tokens: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    return get_1d_rotary_pos_embed(dim, tokens, use_real=True, repeat_interleave_real=False)


def _sana_wm_inputs(b: int, frames: int = 4, side: int = 4) -> dict[str, Any]:
    c2w = torch.eye(4).repeat(b, frames, 1, 1)
    c2w[..., 2, 3] = torch.arange(frames, dtype=torch.float32) * 0.1
    intrinsics = torch.tensor([float(side), float(side), side / 2, side / 2]).expand(b, frames, 4)
    return {"hidden_states": r(b, 4, frames, side, side), "timestep": torch.full((b, 1, frames), 500.0),
            "encoder_hidden_states": r(b, 1, TEXT, 8, seed=1),
            "encoder_attention_mask": torch.ones(b, TEXT, dtype=torch.long),
            "camera_conditions": torch.cat([c2w.flatten(start_dim=-2), intrinsics], dim=-1),
            "chunk_plucker": r(b, 8, frames, side, side, seed=2), "return_dict": False}


def _sana_refiner_inputs(b: int, frames: int = 2, side: int = 4) -> dict[str, Any]:
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2AudioVideoRotaryPosEmbed

    rope = SanaWMLTX2AudioVideoRotaryPosEmbed(
        dim=16, patch_size=1, patch_size_t=1, base_num_frames=20, base_height=2048, base_width=2048,
        scale_factors=(8, 32, 32), modality="video", double_precision=False, num_attention_heads=2)
    coords = rope.prepare_video_coords(b, frames, side, side, device=torch.device("cpu"), fps=24.0)
    n = frames * side * side
    return {"hidden_states": r(b, n, 4), "encoder_hidden_states": text(b, 16), "timestep": torch.full((b, n), 500.0),
            "video_rotary_emb": rope(coords, device=torch.device("cpu")), "encoder_attention_mask": torch.ones(b, TEXT),
            "return_dict": False}


def _wan_animate2_inputs(b: int, height: int, width: int) -> dict[str, Any]:
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    grid = (2, height // 2, width // 2)
    return {"hidden_states": [r(16, 2, height, width, seed=i) for i in range(b)], "timestep": torch.full((b,), 1.0),
            "encoder_hidden_states": [r(8, 32, seed=10 + i) for i in range(b)],
            "condition_latents": [r(20, 2, height, width, seed=20 + i) for i in range(b)],
            "encoder_hidden_states_image": r(b, 4, 1280, seed=30), "kv_cache": WanAnimate2KVCache(2),
            "kv_cache_mode": "extract", "seq_len": grid[0] * grid[1] * grid[2],
            "offset_grid_sizes": torch.tensor([grid] * b, dtype=torch.long), "return_dict": False}


TINY: dict[str, Tiny | CannotBuild] = {
    # -- video ------------------------------------------------------------------------------------------
    "WanTransformer3DModel": Tiny(dict(_WAN, cross_attn_norm=True), _wan_like(), {"self": 2, "cross": 2},
                                  alt_inputs=_wan_like(frames=3, size=4)),
    "SkyReelsV2Transformer3DModel": Tiny(dict(_WAN, cross_attn_norm=True), _wan_like(), {"self": 2, "cross": 2}),
    "ChronoEditTransformer3DModel": Tiny(dict(_WAN, cross_attn_norm=True), _wan_like(), {"self": 2, "cross": 2}),
    "WanVACETransformer3DModel": Tiny(
        dict(_WAN, vace_layers=[0], vace_in_channels=8),
        lambda b: _wan_like()(b) | {"control_hidden_states": r(b, 8, 2, 6, 6, seed=4)},
        {"self": 3, "cross": 3}),
    "CogVideoXTransformer3DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
             text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=TEXT),
        lambda b: {"hidden_states": r(b, 2, 4, 8, 8), "timestep": t_long(b), "encoder_hidden_states": text(b, 16),
                   "return_dict": False},
        {"joint": 2}),
    "ConsisIDTransformer3DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
             text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=TEXT, cross_attn_interval=1, is_kps=False,
             is_train_face=True, cross_attn_dim_head=4, cross_attn_num_heads=2, LFE_id_dim=2, LFE_vit_dim=2,
             LFE_depth=1, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=3, LFE_output_dim=10,
             LFE_ff_mult=1, LFE_num_scale=1),
        lambda b: {"hidden_states": r(b, 2, 4, 8, 8), "timestep": t_long(b), "encoder_hidden_states": text(b, 8),
                   "id_vit_hidden": [r(b, 2, 2, seed=5)], "id_cond": r(b, 2, seed=6), "return_dict": False},
        {"joint": 3, "cross": 2}, note="the face extractor's perceiver: latent queries over [image; latents]: joint"),
    "HunyuanVideoTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
             text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)),
        lambda b: {"hidden_states": r(b, 4, 1, 4, 4), "timestep": t_long(b), "encoder_hidden_states": text(b, 16),
                   "encoder_attention_mask": torch.ones(b, TEXT, dtype=torch.long),
                   "pooled_projections": r(b, 8, seed=2), "guidance": t_float(b, 3500.0), "return_dict": False},
        {"joint": 2, "self": 1}),
    "LTXVideoTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
             cross_attention_dim=16, num_layers=2, caption_channels=16),
        lambda b: {"hidden_states": r(b, 2 * 4 * 4, 4), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "encoder_attention_mask": torch.ones(b, TEXT, dtype=torch.long), "num_frames": 2, "height": 4,
                   "width": 4, "return_dict": False},
        {"self": 2, "cross": 2}),
    "MochiTransformer3DModel": Tiny(
        dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
             in_channels=4, out_channels=4, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4,
             activation_fn="swiglu", max_sequence_length=16),
        lambda b: {"hidden_states": r(b, 4, 2, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "encoder_attention_mask": torch.ones(b, TEXT, dtype=torch.bool), "return_dict": False},
        {"joint": 2, "cross": 1}),
    "AllegroTransformer3DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
             cross_attention_dim=16, sample_width=8, sample_height=8, sample_frames=8, caption_channels=8),
        lambda b: {"hidden_states": r(b, 4, 2, 8, 8), "encoder_hidden_states": text(b, 8), "timestep": t_long(b),
                   "return_dict": False},
        {"self": 2, "cross": 2}),
    "LatteTransformer3DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
             sample_size=8, patch_size=2, cross_attention_dim=16, caption_channels=16, video_length=2,
             norm_type="ada_norm_single", num_embeds_ada_norm=1000),
        lambda b: {"hidden_states": r(b, 4, 2, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "enable_temporal_attentions": True, "return_dict": False},
        {"self": 2, "cross": 1}),
    "CosmosTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, mlp_ratio=2,
             text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
             rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type="learnable"),
        lambda b: {"hidden_states": r(b, 4, 1, 8, 8), "timestep": t_long(b), "encoder_hidden_states": text(b, 16),
                   "attention_mask": torch.ones(b, TEXT), "fps": 30, "return_dict": False},
        {"self": 2, "cross": 2}),
    "EasyAnimateTransformer3DModel": Tiny(
        dict(attention_head_dim=16, num_attention_heads=2, in_channels=4, mmdit_layers=2, num_layers=2,
             out_channels=4, patch_size=2, sample_height=60, sample_width=90, text_embed_dim=16, time_embed_dim=8,
             time_position_encoding_type="3d_rope", timestep_activation_fn="silu"),
        lambda b: {"hidden_states": r(b, 4, 2, 8, 8), "timestep": t_long(b), "encoder_hidden_states": text(b, 16),
                   "return_dict": False},
        {"joint": 2}),
    "HeliosTransformer3DModel": Tiny(
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", rope_dim=(4, 4, 4), has_multi_term_memory_patch=True,
             guidance_cross_attn=True, zero_history_timestep=True, is_amplify_history=False),
        lambda b: {"hidden_states": r(b, 4, 2, 8, 8), "timestep": t_long(b), "encoder_hidden_states": text(b, 16),
                   "indices_hidden_states": torch.ones(b, 2), "indices_latents_history_short": torch.ones(b, 1),
                   "indices_latents_history_mid": torch.ones(b, 1), "indices_latents_history_long": torch.ones(b, 4),
                   "latents_history_short": r(b, 4, 1, 8, 8, seed=4), "latents_history_mid": r(b, 4, 1, 8, 8, seed=5),
                   "latents_history_long": r(b, 4, 4, 8, 8, seed=6), "return_dict": False},
        {"joint": 2, "cross": 2}, note="self-attention runs over [history latents; current latents]: joint"),
    "HunyuanVideo15Transformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
             num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
             text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v"),
        partial(_hunyuan15_inputs, frames=1, height=4, width=4), {"joint": 2, "self": 1},
        alt_inputs=partial(_hunyuan15_inputs, frames=2, height=4, width=6)),
    "HunyuanVideoFramepackTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
             text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
             has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True),
        lambda b: {"hidden_states": r(b, 4, 3, 4, 4), "timestep": t_long(b), "encoder_hidden_states": text(b, 16),
                   "pooled_projections": r(b, 8, seed=2), "encoder_attention_mask": torch.ones(b, TEXT),
                   "guidance": t_float(b, 3500.0), "image_embeds": r(b, 5, 16, seed=3),
                   "indices_latents": torch.arange(3), "latents_clean": r(b, 4, 2, 4, 4, seed=4),
                   "indices_latents_clean": torch.arange(2), "latents_history_2x": r(b, 4, 2, 4, 4, seed=5),
                   "indices_latents_history_2x": torch.arange(2), "latents_history_4x": r(b, 4, 8, 4, 4, seed=6),
                   "indices_latents_history_4x": torch.arange(8), "return_dict": False},
        {"joint": 2, "self": 1}),
    "SanaVideoTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
             num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
             sample_size=8, patch_size=(1, 2, 2), rope_max_seq_len=32),
        lambda b: {"hidden_states": r(b, 4, 2, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "return_dict": False},
        {"cross": 2}, note="its self-attention is already linear (ReLU linear attention): only cross-attention is softmax"),
    # -- image ------------------------------------------------------------------------------------------
    "SD3Transformer2DModel": Tiny(
        dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
             caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=8, out_channels=4),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 16),
                   "pooled_projections": r(b, 8, seed=2), "timestep": t_long(b), "return_dict": False},
        {"joint": 2}),
    "FluxTransformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(4, 4, 8)),
        _flux_like(), {"joint": 2}),
    "BriaTransformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
             num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4]),
        _flux_like(pooled=None), {"joint": 2}),
    "ChromaTransformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=[4, 4, 8], approximator_num_channels=8,
             approximator_hidden_dim=16, approximator_layers=1),
        _flux_like(pooled=None), {"joint": 2}),
    "LongCatImageTransformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[4, 4, 8]),
        _flux_like(pooled=None), {"joint": 2}),
    "OvisImageTransformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=[4, 4, 8]),
        _flux_like(pooled=None), {"joint": 2}),
    "Flux2Transformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4)),
        _flux_like(pooled=None, guidance=True, ids=4), {"joint": 2}),
    "AuraFlowTransformer2DModel": Tiny(
        dict(sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
             attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16,
             out_channels=4, pos_embed_max_size=16),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "return_dict": False},
        {"joint": 2}),
    "PixArtTransformer2DModel": Tiny(
        dict(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
             caption_channels=16, in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
             activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
             norm_elementwise_affine=False, norm_eps=1e-6),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}, "return_dict": False},
        {"self": 2, "cross": 2}),
    "SanaTransformer2DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
             num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
             sample_size=8, patch_size=2),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "return_dict": False},
        {"cross": 2}, note="its self-attention is already linear (ReLU linear attention): only cross-attention is softmax"),
    "DiTTransformer2DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
             sample_size=8, patch_size=2, norm_num_groups=2),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "timestep": t_long(b),
                   "class_labels": torch.zeros(b, dtype=torch.long), "return_dict": False},
        {"self": 2}),
    "Transformer2DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=1, norm_num_groups=4,
             cross_attention_dim=16),
        lambda b: {"hidden_states": r(b, 16, 4, 5), "encoder_hidden_states": text(b, 16), "return_dict": False},
        {"self": 1, "cross": 1}),
    "DreamLiteTransformer2DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=1, norm_num_groups=4,
             cross_attention_dim=16),
        lambda b: {"hidden_states": r(b, 16, 4, 5), "encoder_hidden_states": text(b, 16), "return_dict": False},
        {"self": 1, "cross": 1}),
    "TransformerTemporalModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=1, norm_num_groups=4),
        lambda b: {"hidden_states": r(3 * b, 16, 4, 5), "num_frames": 3, "return_dict": False},
        {"self": 2}),
    "HunyuanDiT2DModel": Tiny(
        dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
             cross_attention_dim=8, cross_attention_dim_t5=8, pooled_projection_dim=4, hidden_size=16, text_len=4,
             text_len_t5=4, activation_fn="gelu-approximate"),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": r(b, 4, 8, seed=1),
                   "text_embedding_mask": torch.ones(b, 4), "encoder_hidden_states_t5": r(b, 4, 8, seed=2),
                   "text_embedding_mask_t5": torch.ones(b, 4), "timestep": t_float(b),
                   "image_meta_size": torch.tensor([[1024.0, 1024, 16, 16, 0, 0]] * b),
                   "style": torch.zeros(b, dtype=torch.long),
                   "image_rotary_emb": (torch.ones(16, 8), torch.zeros(16, 8)), "return_dict": False},
        {"self": 2, "cross": 3}),
    "CogView3PlusTransformer2DModel": Tiny(
        dict(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2, out_channels=4,
             text_embed_dim=8, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 8), "timestep": t_long(b),
                   "original_size": torch.tensor([[8.0, 8]] * b), "target_size": torch.tensor([[8.0, 8]] * b),
                   "crop_coords": torch.tensor([[0.0, 0]] * b), "return_dict": False},
        {"joint": 2}),
    "CogView4Transformer2DModel": Tiny(
        dict(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2, out_channels=4,
             text_embed_dim=8, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8,
             rope_axes_dim=(2, 2)),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 8), "timestep": t_long(b),
                   "original_size": torch.tensor([[8.0, 8]] * b), "target_size": torch.tensor([[8.0, 8]] * b),
                   "crop_coords": torch.tensor([[0.0, 0]] * b), "return_dict": False},
        {"joint": 2}),
    "GlmImageTransformer2DModel": Tiny(
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
             text_embed_dim=32, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 32),
                   "prior_token_id": torch.zeros(b, 16, dtype=torch.long),
                   "prior_token_drop": torch.zeros(b, dtype=torch.bool), "timestep": t_long(b),
                   "target_size": torch.tensor([[8.0, 8]] * b), "crop_coords": torch.tensor([[0.0, 0]] * b),
                   "return_dict": False},
        {"joint": 2}),
    "ErnieImageTransformer2DModel": Tiny(
        dict(hidden_size=16, num_attention_heads=2, num_layers=2, ffn_hidden_size=16, in_channels=4, out_channels=4,
             patch_size=1, text_in_dim=16, rope_theta=256, rope_axes_dim=(4, 2, 2), eps=1e-6, qk_layernorm=True),
        lambda b: {"hidden_states": r(b, 4, 4, 5), "timestep": t_float(b, 1.0), "text_bth": text(b, 16),
                   "text_lens": torch.full((b,), TEXT), "return_dict": False},
        {"joint": 2}),
    "HiDreamImageTransformer2DModel": Tiny(
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
             num_attention_heads=2, caption_channels=[8, 4], text_emb_dim=8, num_routed_experts=2,
             num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1),
             force_inference_output=True),
        partial(_hidream_inputs, height=8, width=8), {"joint": 2},
        alt_inputs=partial(_hidream_inputs, height=8, width=12)),
    "HunyuanImageTransformer2DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=16, rope_axes_dim=(4, 4)),
        lambda b: {"hidden_states": r(b, 4, 4, 5), "timestep": t_float(b), "encoder_hidden_states": text(b, 16),
                   "encoder_attention_mask": torch.ones(b, TEXT), "return_dict": False},
        {"joint": 2, "self": 1}),
    "QwenImageTransformer2DModel": Tiny(
        dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=16, axes_dims_rope=(8, 4, 4)),
        lambda b: {"hidden_states": r(b, 20, 16), "encoder_hidden_states": text(b, 16),
                   "encoder_hidden_states_mask": torch.ones(b, TEXT, dtype=torch.long), "timestep": t_float(b, 1.0),
                   "img_shapes": [(1, 4, 5)] * b, "return_dict": False},
        {"joint": 2}),
    "NucleusMoEImageTransformer2DModel": Tiny(
        dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=16, axes_dims_rope=(8, 4, 4), moe_enabled=True, num_experts=2,
             moe_intermediate_dim=8, capacity_factors=[8.0, 8.0], dense_moe_strategy="leave_first_three_and_last_block_dense"),
        lambda b: {"hidden_states": r(b, 20, 16), "encoder_hidden_states": text(b, 16),
                   "encoder_hidden_states_mask": torch.ones(b, TEXT, dtype=torch.long), "timestep": t_float(b, 1.0),
                   "img_shapes": [(1, 4, 5)] * b, "return_dict": False},
        {"joint": 2}),
    "ZImageTransformer2DModel": Tiny(
        dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16, n_layers=2, n_refiner_layers=1,
             n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[2, 2, 4], axes_lens=[64, 32, 32]),
        lambda b: {"x": [r(4, 1, 8, 8, seed=i) for i in range(b)], "t": t_float(b, 0.5),
                   "cap_feats": [text(1, 16, seed=10 + i)[0] for i in range(b)], "return_dict": False},
        {"self": 2, "joint": 2}),
}


TINY.update({
    "AceStepTransformer1DModel": Tiny(
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2, sliding_window=16),
        lambda b: {"hidden_states": r(b, 10, 8), "timestep": t_float(b, 0.5), "timestep_r": t_float(b, 0.5),
                   "encoder_hidden_states": text(b, 32), "context_latents": r(b, 10, 16, seed=2), "return_dict": False},
        {"self": 2, "cross": 2}),
    "AnyFlowTransformer3DModel": Tiny(
        dict(_WAN, cross_attn_norm=True, gate_value=0.25, deltatime_type="r"),
        lambda b: {"hidden_states": r(b, 2, 4, 6, 6), "timestep": torch.full((b, 2), 500.0),
                   "r_timestep": torch.full((b, 2), 250.0),
                   "encoder_hidden_states": text(b, 16), "return_dict": False},
        {"self": 2, "cross": 2}),
    "AnyFlowFARTransformer3DModel": Tiny(
        dict(_WAN, compressed_patch_size=(1, 4, 4), full_chunk_limit=3, cross_attn_norm=True, gate_value=0.25,
             deltatime_type="r"),
        lambda b: {"hidden_states": r(b, 4, 4, 8, 8), "timestep": torch.full((b, 4), 500.0),
                   "r_timestep": torch.full((b, 4), 250.0), "encoder_hidden_states": text(b, 16),
                   "chunk_partition": [2, 2], "return_dict": False},
        {"cross": 2}, note="its block-causal self-attention is flex_attention, which discovery does not read"),
    "LongCatAudioDiTTransformer": Tiny(
        dict(dit_dim=32, dit_depth=2, dit_heads=2, dit_text_dim=16, latent_dim=8, text_conv=False),
        lambda b: {"hidden_states": r(b, 12, 8), "encoder_hidden_states": text(b, 16),
                   "encoder_attention_mask": torch.ones(b, TEXT, dtype=torch.bool),
                   "attention_mask": torch.ones(b, 12, dtype=torch.bool), "timestep": t_float(b, 1.0),
                   "return_dict": False},
        {"self": 2, "cross": 2}),
    "Lumina2Transformer2DModel": Tiny(
        dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_refiner_layers=1,
             num_attention_heads=3, num_kv_heads=1, multiple_of=2, axes_dim_rope=(4, 2, 2), axes_lens=(64, 64, 64),
             cap_feat_dim=16),
        partial(_lumina2_inputs, height=8, width=10), {"self": 2, "joint": 2},
        alt_inputs=partial(_lumina2_inputs, height=6, width=8)),
    "LuminaNextDiT2DModel": Tiny(
        dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_attention_heads=3,
             num_kv_heads=1, multiple_of=16, learn_sigma=False, qk_norm=True, cross_attention_dim=16),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_float(b, 0.5),
                   "encoder_mask": torch.ones(b, TEXT), "image_rotary_emb": r(16, 16, 4, seed=3),
                   "cross_attention_kwargs": {}, "return_dict": False},
        {"self": 2, "cross": 2}),
    "MotifVideoTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
             num_single_layers=1, num_decoder_layers=0, patch_size=1, patch_size_t=1, text_embed_dim=16,
             rope_axes_dim=(4, 4, 4)),
        lambda b: {"hidden_states": r(b, 4, 2, 4, 4), "encoder_hidden_states": text(b, 16), "timestep": t_long(b),
                   "return_dict": False},
        {"joint": 2}),
    "PRXTransformer2DModel": Tiny(
        dict(in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=2,
             axes_dim=[8, 8]),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "encoder_hidden_states": text(b, 16), "timestep": t_float(b, 1.0),
                   "return_dict": False},
        {"joint": 2}, note="image queries over [text; image] keys: joint"),
    "OmniGenTransformer2DModel": Tiny(
        dict(hidden_size=16, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=2,
             pad_token_id=0, vocab_size=100, in_channels=4, time_step_dim=4,
             rope_scaling={"long_factor": [1, 2], "short_factor": [1, 2]}),
        partial(_omnigen_inputs, height=8, width=8), {"joint": 2},
        alt_inputs=partial(_omnigen_inputs, height=8, width=12)),
})


TINY.update({
    "BriaFiboTransformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
             num_attention_heads=2, joint_attention_dim=16, text_encoder_dim=8, pooled_projection_dim=None,
             axes_dims_rope=[0, 4, 4]),
        lambda b: _flux_like(pooled=None)(b) | {"text_encoder_layers": [r(b, TEXT, 8, seed=4), r(b, TEXT, 8, seed=5)]},
        {"joint": 2}),
    "BriaFibo2Transformer2DModel": Tiny(
        dict(in_channels=4, patch_size=2, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=24,
             injection_layer_ids=(1,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8,
             gist_step=4, gist_min_text_len=4, gist_max_text_len=16, axes_dims=(4, 6, 6), axes_lens=(16, 16, 16)),
        lambda b: {"hidden_states": r(b, 4, 8, 8), "timestep": t_float(b, 0.5),
                   "encoder_hidden_states": r(b, 2, TEXT, 24, seed=1), "return_dict": False},
        {"self": 2, "cross": 2, "joint": 2}, note="a perceiver's gist tokens: self among them, cross to the text"),
    "Ideogram4Transformer2DModel": Tiny(
        dict(in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, intermediate_size=32,
             adaln_dim=16, llm_features_dim=24, rope_theta=10_000, mrope_section=(2, 1, 1)),
        lambda b: _ideogram_inputs(b), {"self": 2}),
    "Krea2Transformer2DModel": Tiny(
        dict(in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=16, num_text_layers=3,
             text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=16,
             num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 2, 2), rope_theta=1000.0),
        lambda b: _krea_inputs(b), {"self": 2, "joint": 2}, note="the layerwise text blocks attend across layers"),
    "JoyImageEditPlusTransformer3DModel": Tiny(
        dict(patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=2,
             rope_dim_list=[4, 6, 6], theta=256),
        lambda b: {"hidden_states": r(b, 2, 16, 1, 2, 2), "encoder_hidden_states": text(b, 16),
                   "timestep": t_float(b, 1.0), "shape_list": [[(1, 1, 1), (1, 1, 1)]] * b, "return_dict": False},
        {"joint": 2}),
    "JoyImageEditTransformer3DModel": Tiny(
        dict(patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=2,
             rope_dim_list=[4, 6, 6], theta=256),
        lambda b: {"hidden_states": r(b, 16, 1, 4, 4), "encoder_hidden_states": text(b, 16),
                   "timestep": t_float(b, 1.0), "return_dict": False},
        {"joint": 2}),
    "Kandinsky6SRTransformer3DModel": Tiny(
        dict(in_visual_dim=4, out_visual_dim=8, time_dim=16, patch_size=(1, 2, 2), model_dim=24, ff_dim=32,
             num_visual_blocks=2, axes_dims=(4, 4, 4)),
        lambda b: {"hidden_states": r(b, 2, 16, 16, 9), "timestep": t_float(b), "return_dict": False},
        {}, note="all its attention is flex_attention (NABLA block-sparse), which discovery does not read"),
    "Kandinsky6Transformer3DModel": Tiny(
        dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=8, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
             model_dim=48, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 4, 4), visual_cond=True,
             in_audio_dim=4, out_audio_dim=4),
        lambda b: {"hidden_states": r(b, 2, 4, 4, 9), "encoder_hidden_states": text(b, 8),
                   "pooled_projections": r(b, 8, seed=2), "timestep": t_float(b),
                   "audio_hidden_states": r(b, 6, 4, seed=3), "return_dict": False},
        {"self": 6, "cross": 8}, note="video and audio streams: self-attention each, cross to text and to each other"),
    "Kandinsky5Transformer3DModel": Tiny(
        dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=8, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
             model_dim=48, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 4, 4)),
        lambda b: {"hidden_states": r(b, 2, 4, 4, 4), "encoder_hidden_states": text(b, 8),
                   "pooled_projections": r(b, 8, seed=2), "timestep": t_float(b), "visual_rope_pos": (torch.arange(2), torch.arange(2), torch.arange(2)),
                   "text_rope_pos": torch.arange(TEXT), "return_dict": False},
        {"self": 3, "cross": 2}),
    "QwenImage21Transformer2DModel": Tiny(
        dict(patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
             context_in_dim=8, mlp_ratio=2, axes_dims_rope=(4, 6, 6)),
        partial(_qwen21_inputs, height=4, width=4), {"self": 2, "joint": 2},
        alt_inputs=partial(_qwen21_inputs, height=4, width=6),
        note="the prefix's block-causal self-attention is masked: never a candidate"),
    "MiniMaxH3Transformer3DModel": Tiny(
        dict(num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=2, num_refiner_layers=2,
             ffn_dim=32, in_channels=4, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8, freq_dim=8,
             time_embed_hidden_dim=24, time_embed_dim=16, rope_freq_dim=2),
        lambda b: _minimax_h3_inputs(b), {"self": 2, "joint": 2},
        note="text, audio and video rows packed into one sequence with index_copy: joint"),
    "Cosmos3OmniTransformer": Tiny(
        dict(head_dim=6, hidden_act="relu2", hidden_size=12, intermediate_size=24, latent_channel=2,
             latent_patch_size=1, num_attention_heads=2, num_hidden_layers=2, num_key_value_heads=1,
             patch_latent_dim=2, qk_norm_for_text=False, rope_axes_dim=[1, 1, 1], rope_theta=1e8, vocab_size=32),
        lambda b: _cosmos3_inputs(b), {"self": 2, "joint": 2}),
})


TINY.update({
    "Flux3Transformer2DModel": Tiny(
        dict(in_channels=4, cond_in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, timestep_channels=16, axes_dims_rope=(4, 4, 4, 4)),
        lambda b: {"hidden_states": r(b, 20, 4), "encoder_hidden_states": text(b, 16), "timestep": t_float(b, 0.5),
                   "img_ids": r(20, 4, seed=3), "txt_ids": torch.zeros(TEXT, 4), "return_dict": False},
        {"self": 2, "joint": 1}, note="per-modality mode blocks, then joint single-stream blocks"),
    "LTX2VideoTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
             cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
             audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
             caption_channels=16, rope_double_precision=False),
        lambda b: {"hidden_states": r(b, 2 * 4 * 5, 4), "audio_hidden_states": r(b, 9, 4, seed=1),
                   "encoder_hidden_states": text(b, 16), "audio_encoder_hidden_states": text(b, 16, seed=2),
                   "timestep": t_float(b), "encoder_attention_mask": torch.ones(b, TEXT, dtype=torch.bool),
                   "num_frames": 2, "height": 4, "width": 5, "audio_num_frames": 9, "fps": 25.0,
                   "return_dict": False},
        {"self": 4, "cross": 8}, note="video and audio self-attention; text, audio-to-video and video-to-audio cross-attention"),
    "WanAnimateTransformer3DModel": Tiny(
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=12, latent_channels=4,
             out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", image_dim=16, rope_max_seq_len=32,
             motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
             motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
             inject_face_latents_blocks=2),
        lambda b: {"hidden_states": r(b, 12, 5, 4, 4), "timestep": t_long(b), "encoder_hidden_states": text(b, 16),
                   "encoder_hidden_states_image": r(b, 5, 16, seed=2), "pose_hidden_states": r(b, 4, 4, 4, 4, seed=3),
                   "face_pixel_values": r(b, 3, 13, 16, 16, seed=4), "return_dict": False},
        {"self": 2, "cross": 3}),
    "PriorTransformer": Tiny(
        dict(num_attention_heads=2, attention_head_dim=4, num_layers=2, embedding_dim=8, num_embeddings=TEXT,
             additional_embeddings=4),
        lambda b: {"hidden_states": r(b, 8), "timestep": 500, "proj_embedding": r(b, 8, seed=1),
                   "encoder_hidden_states": text(b, 8), "attention_mask": torch.ones(b, TEXT, dtype=torch.bool),
                   "return_dict": False},
        {"joint": 2}, note="an additive causal mask: never a candidate"),
    "StableAudio3DiTModel": Tiny(
        dict(io_channels=4, patch_size=1, embed_dim=32, depth=2, num_heads=2, cond_token_dim=16, global_cond_dim=8,
             local_add_cond_dim=4, timestep_features_dim=16, ff_mult=2.0, num_memory_tokens=3,
             use_differential_attention=False),
        lambda b: {"hidden_states": r(b, 4, 10), "timestep": t_float(b, 0.5), "encoder_hidden_states": text(b, 16),
                   "global_hidden_states": r(b, 8, seed=2), "return_dict": False},
        {"self": 2, "cross": 2}, note="learned memory tokens are not a second stream"),
    "StableAudioDiTModel": Tiny(
        dict(sample_size=10, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
             num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16, time_proj_dim=16,
             global_states_input_dim=8, cross_attention_input_dim=16),
        lambda b: {"hidden_states": r(b, 4, 10), "timestep": t_float(b), "encoder_hidden_states": text(b, 16),
                   "global_hidden_states": r(b, 1, 8, seed=2), "rotary_embedding": _stable_audio_rope(11, 4),
                   "return_dict": False},
        {"joint": 2, "cross": 2}, note="a global-condition token is prepended to the audio tokens: joint"),
    "MiniMaxMusic3Transformer1DModel": Tiny(
        dict(in_channels=4, condition_dim=16, num_layers=2, num_attention_heads=2, attention_head_dim=8,
             ff_inner_dim=32, rotary_dim=4, fourier_embedding_dim=16),
        lambda b: {"hidden_states": r(b, 4, 10), "timestep": t_float(b, 0.5), "encoder_hidden_states": r(b, 10, 16),
                   "return_dict": False},
        {"joint": 2}, note="a condition token is prepended to the audio tokens: joint"),
    "MiniMaxMusic3RVQDepthDecoder": Tiny(
        dict(hidden_size=16, num_layers=2, num_attention_heads=2, intermediate_size=32, audio_vocab_size=16,
             num_codebooks=4, max_position_embeddings=8),
        lambda b: {"inputs_embeds": r(b, 5, 16)},
        {"self": 2}, note="causal: never a candidate"),
    "T5FilmDecoder": Tiny(
        dict(input_dims=4, targets_length=10, d_model=16, num_layers=2, num_heads=2, d_kv=8, d_ff=32,
             dropout_rate=0.0),
        lambda b: {"encodings_and_masks": [(text(b, 16), torch.ones(b, TEXT, dtype=torch.bool))],
                   "decoder_input_tokens": r(b, 10, 4), "decoder_noise_time": torch.full((b,), 0.5)},
        {"self": 2, "cross": 2}),
    "RFD4ProteinaTransformer": Tiny(
        dict(nlayers=2, token_dim=16, nheads=2, dim_cond=8, pair_repr_dim=8, latent_dim=4, token_type_emb_dim=4,
             cath_emb_dim=4, t_emb_dim=8, seq_sep_dim=4, xt_pair_dist_dim=4, tri_mult_c=8,
             feats_seq=("xt_bb_ca", "xt_local_latents", "token_type"),
             feats_cond_seq=("time_emb_bb_ca", "time_emb_local_latents"),
             feats_pair_repr=("xt_bb_ca_pair_dists",)),
        lambda b: {"bb_ca": r(b, 6, 3), "local_latents": r(b, 6, 4, seed=1), "bb_ca_time": t_float(b, 0.5),
                   "local_latents_time": t_float(b, 0.5), "padding_mask": torch.ones(b, 6, dtype=torch.bool),
                   "token_type": torch.zeros(b, 6, dtype=torch.long),
                   "conditioning": {"is_in_context_conditioning": torch.zeros(b, 6, dtype=torch.bool),
                                    "supports_local_latent": torch.ones(b, 6, dtype=torch.bool)},
                   "return_dict": False},
        {"self": 2}, note="pair-biased attention (additive bias from the pair representation): never a candidate"),
})


TINY.update({
    "SanaWMTransformer3DModel": Tiny(
        dict(in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2, patch_size=(1, 1, 1),
             softmax_every_n=2, linear_head_dim=16, t_kernel_size=3, conv_kernel_size=4, caption_channels=8,
             mlp_ratio=2.0, chunk_plucker_channels=8, chunk_plucker_post_attn_blocks=2),
        _sana_wm_inputs, {"self": 2, "cross": 2}, atol=2e-3,
        note="every other block's self-attention is already linear (gated delta net); softmax attention runs in bf16"),
    "SanaWMLTX2RefinerTransformer3DModel": Tiny(
        dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
             cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
             audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
             caption_channels=16, rope_double_precision=False),
        _sana_refiner_inputs, {"self": 2, "cross": 2}),
    "WanAnimate2Transformer3DModel": Tiny(
        dict(patch_size=(1, 2, 2), text_len=16, in_dim=36, dim=32, ffn_dim=64, freq_dim=16, text_dim=32, out_dim=16,
             num_heads=2, num_layers=2, cross_attn_norm=True, use_img_emb=True),
        partial(_wan_animate2_inputs, height=4, width=4), {"self": 2, "cross": 4},
        alt_inputs=partial(_wan_animate2_inputs, height=4, width=8), note="text and CLIP-image cross-attention in one module"),
})
