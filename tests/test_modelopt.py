"""The ModelOpt mode ``linear_attention``: apply_mode, modelopt_state round trips, save/restore, HF checkpoints,
composition with FP8 quantization, and the select=None -> lincompress.recover -> fix flow."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

mto = pytest.importorskip("modelopt.torch.opt")
mtq = pytest.importorskip("modelopt.torch.quantization")

import lincompress  # noqa: E402
import lincompress.modelopt as lm  # noqa: E402
from lincompress.attention import iter_sites  # noqa: E402
from lincompress.errors import LinCompressError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "recovery"))
from tiny_targets import recovery_target  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- a DiT no other test knows


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.modulation = nn.Linear(dim, 4 * dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(dim)
        self.self_attn = _SelfAttention(dim, heads)
        self.cross_attn = _CrossAttention(dim, context_dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift, scale, gate_a, gate_m = self.modulation(t)[:, None].chunk(4, dim=-1)
        x = x + gate_a * self.self_attn(self.norm1(x) * (1 + scale) + shift)
        x = x + self.cross_attn(self.norm2(x), context)
        return x + gate_m * self.mlp(self.norm2(x))


class TinyLatteDiT(nn.Module):
    """Patchify -> sinusoidal time embedding -> adaLN blocks (SDPA self + cross attention) -> unpatchify."""

    def __init__(self, channels: int = 4, dim: int = 32, heads: int = 2, depth: int = 4, context_dim: int = 12,
                 patch: int = 2) -> None:
        super().__init__()
        self.patch, self.dim = patch, dim
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.layers = nn.ModuleList(_Block(dim, context_dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, channels * patch * patch)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        p = self.patch
        x = latents.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        temb = self.time(torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1))
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x, temb, context)
        x = self.head(x).reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h, w)


def _dit() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = TinyLatteDiT().eval()
    g = torch.Generator().manual_seed(1)
    inputs = {"latents": torch.randn(2, 4, 8, 8, generator=g), "t": torch.tensor([300.0, 700.0]),
              "context": torch.randn(2, 5, 12, generator=g)}
    return model, inputs


def _forward(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------- the done-when


def test_unknown_dit_apply_mode_state_round_trip_then_fp8_keeps_the_linear_sites():
    original, inputs = _dit()
    cfg = {"target_linear": 0.5, "select": "uniform", "feature_map": "elu1", "example_inputs": inputs}
    model = mto.apply_mode(copy.deepcopy(original), [("linear_attention", cfg)])
    assert lm.linear_sites(model) == ["layers.1.self_attn#0", "layers.3.self_attn#0"]  # 2 of 4, spread; cross stays
    converted = _forward(model, inputs)
    assert not torch.allclose(converted, _forward(original, inputs))

    state = mto.modelopt_state(model)
    (name, mode_state), = state["modelopt_state_dict"]
    assert name == "linear_attention" and "example_inputs" not in mode_state["config"]
    assert [s["pass"] for s in mode_state["metadata"]["recipe"]] == ["hybridize", "select", "fix"]
    fresh = mto.restore_from_modelopt_state(copy.deepcopy(original), state)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(_forward(fresh, inputs), converted)

    quantized = mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop=lambda m: m(**inputs))
    assert lm.linear_sites(quantized) == ["layers.1.self_attn#0", "layers.3.self_attn#0"]
    assert type(quantized.layers[1].self_attn.qkv).__name__ == "QuantLinear"
    out = _forward(quantized, inputs)
    assert torch.isfinite(out).all() and not torch.equal(out, converted)  # FP8 fake quant changed the numbers
    assert (out - converted).abs().max() < 0.2 * converted.abs().max()  # ... but only by quantization error
    modes = [m for m, _ in mto.modelopt_state(quantized)["modelopt_state_dict"]]
    assert modes[:2] == ["linear_attention", "quantize"]
    again = mto.restore_from_modelopt_state(copy.deepcopy(original), mto.modelopt_state(quantized))
    again.load_state_dict(quantized.state_dict())
    assert lm.linear_sites(again) == lm.linear_sites(quantized)
    assert torch.equal(_forward(again, inputs), out)


def test_mto_save_and_restore(tmp_path):
    original, inputs = _dit()
    model = mto.apply_mode(copy.deepcopy(original), [("linear_attention", {"select": ["layers.0.self_attn#0"],
                                                                            "example_inputs": lambda b: inputs})])
    assert lm.linear_sites(model) == ["layers.0.self_attn#0"]
    mto.save(model, tmp_path / "model.pt")
    restored = mto.restore(copy.deepcopy(original), tmp_path / "model.pt")
    assert torch.equal(_forward(restored, inputs), _forward(model, inputs))


def test_diffusers_save_pretrained_from_pretrained_returns_the_linearised_model(tmp_path):
    from diffusers import WanTransformer3DModel
    from zoo import ZOO

    mto.enable_huggingface_checkpointing()
    target = ZOO["wan"].build()
    inputs = target.inputs(1)
    model = mto.apply_mode(copy.deepcopy(target.model),
                           [("linear_attention", {"select": "first", "target_linear": 0.5, "example_inputs": inputs})])
    for _, site in iter_sites(model):  # trained-looking feature maps must come back from the checkpoint
        with torch.no_grad():
            site.feature_map_q.weight.add_(0.05)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modelopt_state.pth").is_file()
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)
    assert lm.linear_sites(loaded) == ["blocks.0.attn1#0"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert loaded.state_dict().keys() == model.state_dict().keys()
    # diffusers' own save/load round trip of Wan is exact only to ~1e-7 (the plain model too), hence allclose
    torch.testing.assert_close(_forward(loaded, inputs), _forward(model, inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_forward(loaded, inputs), _forward(target.model, inputs), atol=1e-3)


def test_select_none_hybrid_is_trained_by_recover_then_fixed_by_a_second_apply_mode(tmp_path):
    target = recovery_target(depth=4)
    hybrid = mto.apply_mode(copy.deepcopy(target.model),
                            [("linear_attention", {"select": None, "example_inputs": target.inputs(1)})])
    assert [s.mode for _, s in iter_sites(hybrid)] == ["hybrid"] * 4 and not lm.linear_sites(hybrid)
    before = copy.deepcopy(hybrid.state_dict())
    state = lincompress.recover(hybrid, target, target_linear=0.5, steps=4, samples=1, teacher_steps=2, batch_size=2,
                                work_dir=tmp_path, progress=False)
    assert state.model is hybrid and len(state.selection) == 2 and state.modified_parameters
    assert any(not torch.equal(before[k], v) for k, v in hybrid.state_dict().items())  # it trained
    fixed = mto.apply_mode(hybrid, [("linear_attention", {"select": state.selection})])
    assert lm.linear_sites(fixed) == state.selection and len(iter_sites(fixed)) == 2  # softmax sites removed
    modes = mto.modelopt_state(fixed)["modelopt_state_dict"]
    assert [m for m, _ in modes] == ["linear_attention", "linear_attention"]
    fresh = mto.restore_from_modelopt_state(copy.deepcopy(target.model), mto.modelopt_state(fixed))
    fresh.load_state_dict(fixed.state_dict())
    inputs = target.inputs(2)
    assert torch.equal(_forward(fresh, inputs), _forward(fixed, inputs))


def test_config_errors_are_one_line():
    original, inputs = _dit()
    with pytest.raises(LinCompressError, match="feature_map='cosine' is unknown"):
        mto.apply_mode(copy.deepcopy(original), [("linear_attention", {"feature_map": "cosine",
                                                                        "example_inputs": inputs})])
    with pytest.raises(LinCompressError, match="select='learned' needs training"):
        lm.LinearAttentionConfig(select="learned")
    with pytest.raises(LinCompressError, match="target_linear=1.5 is out of range"):
        lm.LinearAttentionConfig(target_linear=1.5)
    with pytest.raises(LinCompressError, match="put example_inputs"):
        mto.apply_mode(copy.deepcopy(original), [("linear_attention", {})])
    with pytest.raises(LinCompressError, match="not a candidate site"):
        mto.apply_mode(copy.deepcopy(original), [("linear_attention", {"select": ["layers.0.cross_attn#0"],
                                                                        "example_inputs": inputs})])

