"""The conformance zoo: every diffusers transformer class, tiny, and a hand-written DiT.

``ZOO[name]`` is a ``ZooEntry`` for a diffusers class name (configs and inputs in
``zoo_diffusers.TINY``), a short alias the other tests use (``"wan"``, ``"flux"``, ...)
or ``"handwritten"``. Each entry builds a model small enough to trace and run on CPU
in about a second and says which attention sites the suite expects (counts per kind),
or why it cannot be built tiny. Sequence lengths are chosen distinct (video tokens !=
text tokens != head_dim) so that classification cannot pass by coincidence.
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
    build: Callable[[], Target] | None  # None: cannot be built tiny (``reason``)
    expected: dict[str, int]  # kind -> number of sites ({}: no attention discovery can read)
    alt_inputs: Callable[[int], dict[str, Any]] | None = None  # another resolution
    note: str = ""
    reason: str = ""
    cls: str | None = None  # the diffusers class
    missing: bool = False  # a diffusers class the table does not know yet
    atol: float = 1e-4
    no_export: str = ""


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _target(model: nn.Module, fn: Callable[[int], dict[str, Any]], name: str) -> Target:
    torch.manual_seed(0)
    return Target(model=model.eval(), example_inputs=fn, name=name)


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


def diffusers_transformer_classes() -> list[str]:
    """Every transformer class diffusers exports: ``ModelMixin`` subclasses in ``diffusers.models`` defined
    under ``diffusers.models.transformers`` (UNets, VAEs and ControlNets are not DiTs and are out of scope)."""
    import diffusers.models as dm
    from diffusers.models.modeling_utils import ModelMixin

    found = []
    for name in dir(dm):
        obj = getattr(dm, name, None)
        if isinstance(obj, type) and issubclass(obj, ModelMixin) and obj.__module__.startswith(
                "diffusers.models.transformers."):
            found.append(name)
    return sorted(found)


def _diffusers_entry(cls_name: str, alias: str | None = None) -> ZooEntry:
    from zoo_diffusers import TINY, CannotBuild

    spec = TINY.get(cls_name)
    if spec is None:
        return ZooEntry(alias or cls_name, None, {}, reason=(
            f"new diffusers transformer class {cls_name} has no entry in tests/zoo_diffusers.py TINY: "
            "add a tiny config, or a CannotBuild with the reason"), missing=True)
    if isinstance(spec, CannotBuild):
        return ZooEntry(alias or cls_name, None, {}, reason=spec.reason)

    def build() -> Target:
        import diffusers

        torch.manual_seed(0)
        model = getattr(diffusers, cls_name)(**spec.config)
        _wake_zero_parameters(model)
        return _target(model, spec.inputs, alias or cls_name)

    return ZooEntry(alias or cls_name, build, dict(spec.expected), alt_inputs=spec.alt_inputs, note=spec.note,
                    cls=cls_name, atol=spec.atol, no_export=spec.no_export)


def _wake_zero_parameters(model: nn.Module) -> None:
    """Give all-zero parameters small random values.

    DiTs zero-initialise their adaLN gates and output projections, so a freshly built
    model's output does not depend on its attention at all and the suite's r=0 and
    gradient checks would be vacuous; trained checkpoints have no all-zero tensors.
    """
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and not param.any():
                param.copy_(0.02 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def handwritten() -> Target:
    torch.manual_seed(0)
    return _target(HandWrittenDiT(), lambda b: {
        "hidden_states": _randn(b, 4, 10, 10), "timestep": torch.full((b,), 500.0),
        "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1),
    }, "handwritten")


def _handwritten_alt(b: int) -> dict[str, Any]:
    return {"hidden_states": _randn(b, 4, 6, 8), "timestep": torch.full((b,), 500.0),
            "encoder_hidden_states": _randn(b, TEXT_LEN, 16, seed=1)}


# Short names the other tests use, for the families they exercise.
ALIASES: dict[str, str] = {
    "wan": "WanTransformer3DModel", "cogvideox": "CogVideoXTransformer3DModel",
    "hunyuan_video": "HunyuanVideoTransformer3DModel", "ltx_video": "LTXVideoTransformer3DModel",
    "mochi": "MochiTransformer3DModel", "sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel",
    "pixart": "PixArtTransformer2DModel", "sana": "SanaTransformer2DModel",
}

HANDWRITTEN = ZooEntry("handwritten", handwritten, {"self": 3, "cross": 3}, alt_inputs=_handwritten_alt)


class _Zoo(dict):
    """Entries by short alias or diffusers class name, built on first use (diffusers imports are not free)."""

    def __missing__(self, key: str) -> ZooEntry:
        if key == "handwritten":
            entry = HANDWRITTEN
        elif key in ALIASES:
            entry = _diffusers_entry(ALIASES[key], alias=key)
        else:
            entry = _diffusers_entry(key)
        self[key] = entry
        return entry


ZOO: dict[str, ZooEntry] = _Zoo()


def conformance_names() -> list[str]:
    """What the conformance suite runs: every diffusers transformer class, and the hand-written DiT."""
    return [*diffusers_transformer_classes(), "handwritten"]
