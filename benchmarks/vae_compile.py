"""A compiled Wan VAE decode that reaches steady state: one graph, no recompiles, no silent eager fallback.

diffusers' ``AutoencoderKLWan._decode`` runs the decoder once per latent frame in a Python loop; every causal
conv keeps the tail of the previous frame in a shared list (``feat_cache``, indexed by ``feat_idx``). Compiling
the decoder as a whole (``vae.decoder.compile()``) makes dynamo guard on that list, whose contents differ frame by
frame: ``None`` and ``"Rep"`` placeholders at frame 0, one-frame tails at frame 1, two-frame tails from frame 2 on.
That is one graph per structure, the frame-2 graph turned dynamic in the tails' time dimension by automatic
dynamic shapes, and with inductor one more graph per stride pattern: inductor elides the tail's ``clone()`` and
returns a view into the longer activation (strides of a 4-frame tensor), where eager wrote a contiguous copy, and
dynamo guards on strides.

``compile_vae_decode`` compiles the decoder's forward with ``dynamic=False`` and routes only the steady-state
frames (2 onwards: 19 of Wan's 21 latent frames, 76 of its 81 video frames) through it; frames 0 and 1 run eager.
Before each compiled call the cache tails are made contiguous (the copy eager's ``clone()`` makes anyway), so
eager- and inductor-written tails look alike to the guards. Correctness never depends on the routing: dynamo's
guards still check every input, so a structure not foreseen here costs a recompile, which ``DynamoCounts``
reports, never a wrong result.

With torch 2.11 on CUDA one graph break remains, in diffusers itself: ``WanResample.forward`` compares a cached
tensor with the placeholder string (``feat_cache[idx] == "Rep"``), whose ``NotImplemented`` that dynamo cannot
trace; inside the decoder's loop over up-blocks this makes dynamo run ``decoder.forward`` eager around compiled
sub-graphs (14 at Wan's config; ``DynamoCounts.eager_fallbacks`` 1). torch 2.13 compiles it as one graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

STEADY_FROM_FRAME = 2  # the first latent frame whose feature cache holds full two-frame tails everywhere
METHOD = (f"torch.compile(vae.decoder.forward, dynamic=False) for latent frames >= {STEADY_FROM_FRAME} "
          "(earlier frames eager), cache tails made contiguous")


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _canonical(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of a fresh contiguous tensor, as eager's ``clone()`` of the tail leaves it.

    Inductor elides that clone and hands back a view into the longer activation: copy it (what eager does
    anyway). A contiguous tail whose size-1 dimension has another stride gets a zero-copy restride instead.
    """
    strides = _contiguous_strides(t.shape)
    if t.stride() == strides:
        return t
    if t.is_contiguous():
        return t.as_strided(t.shape, strides)
    return t.contiguous()


def compile_vae_decode(vae: torch.nn.Module, backend: str = "inductor") -> Callable[[], None]:
    """Route ``vae.decode``'s steady-state decoder calls through one compiled graph; returns the undo callable.

    The compiled forward is an instance attribute of ``vae.decoder`` (diffusers calls ``self.decoder(...)``, which
    dispatches to it); undo removes it, leaving the module exactly as it was (eager).
    """
    decoder = vae.decoder
    if "forward" in vars(decoder):
        raise RuntimeError("vae.decoder.forward is already overridden (compiled twice?); undo the first compile")
    eager = decoder.forward
    compiled = torch.compile(eager, backend=backend, dynamic=False)
    frame = 0

    def forward(x, feat_cache=None, feat_idx=None, first_chunk=False):
        nonlocal frame
        frame = 0 if first_chunk else frame + 1
        if feat_cache is None:
            return eager(x)
        feat_idx = [0] if feat_idx is None else feat_idx
        if frame < STEADY_FROM_FRAME:
            return eager(x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=first_chunk)
        for i, tail in enumerate(feat_cache):  # the VAE's own scratch list, refilled by every decode
            if isinstance(tail, torch.Tensor):
                feat_cache[i] = _canonical(tail)
        return compiled(x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=first_chunk)

    decoder.forward = forward

    def undo() -> None:
        if vars(decoder).get("forward") is forward:
            del decoder.forward

    return undo


_LIMIT_MESSAGES = ("recompile limit", "recompile_limit", "cache size limit", "cache_size_limit")  # across versions


@dataclass(frozen=True)
class DynamoCounts:
    """A snapshot of dynamo's global counters: subtract two to see what happened in between."""

    compiles: int  # frames dynamo was asked to convert (first compiles and recompiles)
    compiled_ok: int
    graphs: int
    graph_breaks: int
    recompile_limit_hits: int

    @classmethod
    def now(cls) -> DynamoCounts:
        from torch._dynamo.utils import counters

        return cls(compiles=counters["frames"]["total"], compiled_ok=counters["frames"]["ok"],
                   graphs=counters["stats"]["unique_graphs"], graph_breaks=sum(counters["graph_break"].values()),
                   recompile_limit_hits=sum(n for msg, n in counters["unimplemented"].items()
                                            if any(k in msg.lower() for k in _LIMIT_MESSAGES)))

    def __sub__(self, other: DynamoCounts) -> DynamoCounts:
        return DynamoCounts(*(a - b for a, b in zip(vars(self).values(), vars(other).values())))

    @property
    def eager_fallbacks(self) -> int:
        """Compiles that failed or hit a recompile limit: their frames run eager from then on, silently."""
        return self.compiles - self.compiled_ok

    def to_dict(self) -> dict[str, int]:
        return {**vars(self), "eager_fallbacks": self.eager_fallbacks}


def steady_state_warnings(phases: dict[str, DynamoCounts]) -> list[str]:
    """Why timings taken in these phases (the first one the warm-up) are not of the compiled steady state, if so."""
    warnings = []
    for i, (phase, c) in enumerate(phases.items()):
        if i and c.compiles:
            warnings.append(f"{phase}: dynamo compiled {c.compiles} more frame(s) after the warm-up")
        if c.eager_fallbacks or c.recompile_limit_hits:
            warnings.append(f"{phase}: {c.eager_fallbacks} compile(s) fell back to eager "
                            f"({c.recompile_limit_hits} at the recompile limit)")
    return warnings
