"""Hybrid softmax|linear attention sites and the router that puts them into a model.

Rewriting happens at the granularity of the *owning module* of each attention call
(a diffusers ``Attention``, or a hand-written attention block): that module gets a
child ``lincompress_sites`` (one ``HybridAttention`` per candidate call, keyed by the
call's index inside the module's forward) and its class is swapped for a thin
subclass whose ``forward`` runs the original forward under ``SiteRouter``, a
``TorchFunctionMode`` that sends the attention calls to the sites. The model stays
a normal ``nn.Module``: same hierarchy, same parameter names (plus the site
parameters), ``isinstance`` checks still pass, and ``torch.compile`` / ``torch.export``
trace straight through the mode (so a fixed linear site is one
``lincompress.linear_attention`` node).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lincompress.feature_maps import FeatureMap, make_feature_map
from lincompress.ops import linear_attention
from lincompress.ops.spec import feature_map_spec
from lincompress.scores import logit_for_score, rectified_sigmoid

MODES: tuple[str, ...] = ("hybrid", "softmax", "linear")
SITES_ATTR = "lincompress_sites"

_SDPA_FUNCS = {F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention}
_MATMUL_FUNCS = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm}
_SCALE_FUNCS = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, torch.div, Tensor.div, Tensor.__truediv__}
_SOFTMAX_FUNCS = {torch.softmax, Tensor.softmax, F.softmax, torch._C._nn.softmax if hasattr(torch._C._nn, "softmax") else F.softmax}
_PASS_FUNCS = {Tensor.to, Tensor.type_as, Tensor.float, Tensor.half, Tensor.bfloat16, F.dropout, Tensor.contiguous}


class HybridAttention(nn.Module):
    """``r * softmax_attention + (1 - r) * linear_attention(phi(q), phi(k), v)`` for one site.

    ``mode`` picks what runs: ``hybrid`` (both, blended by the learnable score r),
    ``softmax`` (original only) or ``linear`` (linear only; the softmax branch is
    never computed). Inputs are SDPA-shaped: ``[B, H, N, D]`` (or ``[B*H, N, D]``).
    """

    def __init__(
        self, num_heads: int, head_dim: int, feature_map: str = "hedgehog", eps: float = 1e-6, init_score: float = 0.9
    ) -> None:
        super().__init__()
        self.feature_map_name = feature_map
        self.eps = eps
        self.feature_map_q: FeatureMap = make_feature_map(feature_map, num_heads, head_dim)
        self.feature_map_k: FeatureMap = make_feature_map(feature_map, num_heads, head_dim)
        self.score_logit = nn.Parameter(torch.tensor(logit_for_score(init_score)))
        self.mode = "hybrid"

    def extra_repr(self) -> str:
        return f"feature_map={self.feature_map_name}, mode={self.mode}"

    @property
    def score(self) -> Tensor:
        """r in [0, 1]: the weight of the softmax branch."""
        return rectified_sigmoid(self.score_logit)

    def set_score(self, value: float) -> None:
        with torch.no_grad():
            self.score_logit.fill_(logit_for_score(value))

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown site mode {mode!r}; choose one of {MODES}")
        self.mode = mode

    def linear_branch(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Linear attention over the learned feature maps; ``key_mask`` ([B, 1|H, 1, Nk] bool) drops keys.

        The op gets the projected q/k and the map's name, so the kernels apply the map
        (Hedgehog too). Masked keys are set to the map's ``masked_key_fill`` (features
        exactly zero) inside the same fused call; a map without one (Hedgehog: a softmax
        is never zero) is applied here instead, its masked key features zeroed, and the
        op gets ``identity``; likewise when the map is not ``fused``.
        """
        squeeze = q.dim() == 3
        if squeeze:
            q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: repeat k/v heads
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        fq, fk = self.feature_map_q(q), self.feature_map_k(k)
        name = self.feature_map_q.name
        fill = feature_map_spec(name).masked_key_fill
        if not self.feature_map_q.fused or (key_mask is not None and fill is None):
            fq, fk = self.feature_map_q.features(fq), self.feature_map_k.features(fk)
            name, fill = "identity", 0.0
        if key_mask is not None:
            fk = fk.masked_fill(key_mask.transpose(-1, -2).logical_not(), fill)
        out = linear_attention(fq, fk, v, feature_map=name, eps=self.eps, layout="bhnd")
        return out.squeeze(1) if squeeze else out

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, softmax_fn: Callable[[], Tensor], key_mask: Tensor | None = None
    ) -> Tensor:
        """``softmax_fn`` computes the original attention; it is only called when needed."""
        if self.mode == "softmax":
            return softmax_fn()
        linear = self.linear_branch(q, k, v, key_mask)
        if self.mode == "linear":
            return linear
        r = self.score.to(linear.dtype)
        return r * softmax_fn() + (1.0 - r) * linear


def key_padding_mask(attn_mask: Tensor | None) -> Tensor | None:
    """Reduce an SDPA mask to a per-key keep-mask ``[B, 1|H, 1, Nk]``, the only mask linear attention can honour.

    DiTs mask padded text tokens; their per-query masks are outer products of padding
    masks, so "key j is kept if any query may attend it" is exact for every valid query.
    (Causal / windowed masks are not padding masks; discovery never makes those sites candidates.)
    """
    if attn_mask is None:
        return None
    mask = attn_mask
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return keep.any(dim=-2, keepdim=True)


class SiteRouter(TorchFunctionMode):
    """Send the attention calls made inside one owning module's forward to its hybrid sites.

    Calls are counted in execution order (SDPA calls and completed
    ``matmul -> [scale] -> softmax -> matmul`` patterns share one counter), which is the
    order FindAttention records them in, modulo the number of calls one forward made
    at batch size 1: processors that loop over the batch (Mochi) repeat the same sites.
    """

    def __init__(self, sites: nn.ModuleDict, track_patterns: bool, num_calls: int) -> None:
        super().__init__()
        self.sites = sites
        self.track_patterns = track_patterns
        self.num_calls = max(1, num_calls)
        self.index = 0
        self.scores: list[tuple[Tensor, Tensor, Tensor]] = []  # (scores, q, kT)
        self.probs: list[tuple[Tensor, Tensor, Tensor]] = []  # (probs, q, kT)

    def _next_site(self) -> HybridAttention | None:
        key = str(self.index % self.num_calls)
        self.index += 1
        return self.sites[key] if key in self.sites else None

    @staticmethod
    def _find(table: list[tuple[Tensor, Tensor, Tensor]], t: Any) -> tuple[Tensor, Tensor] | None:
        for ref, q, kt in table:
            if ref is t:
                return q, kt
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SDPA_FUNCS:
            return self._route_sdpa(func, args, kwargs)
        if not self.track_patterns:
            return _call(func, args, kwargs)
        return self._track(func, args, kwargs)

    def _route_sdpa(self, func, args, kwargs):
        site = self._next_site()
        if site is None:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        bound = dict(zip(names, args)) | kwargs
        q, k, v = bound["query"], bound["key"], bound["value"]
        mask = key_padding_mask(bound.get("attn_mask")) if site.mode != "softmax" else None
        return site(q, k, v, softmax_fn=lambda: func(*args, **kwargs), key_mask=mask)

    def _track(self, func, args, kwargs):
        if func in _MATMUL_FUNCS and len(args) >= 2:
            a, b = args[0], args[1]
            hit = self._find(self.probs, a)
            if hit is not None:
                site = self._next_site()
                if site is None:
                    return _call(func, args, kwargs)
                q, kt = hit
                return site(q, kt.transpose(-2, -1), b, softmax_fn=lambda: _call(func, args, kwargs))
            out = _call(func, args, kwargs)
            if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dim() >= 2 and b.dim() >= 2:
                self.scores.append((out, a, b))
            return out
        out = _call(func, args, kwargs)
        if func in _SCALE_FUNCS or func in _PASS_FUNCS:
            hit = self._find(self.scores, args[0]) if args else None
            if hit is not None and (func in _PASS_FUNCS or not isinstance(args[1], Tensor) or args[1].dim() == 0):
                self.scores.append((out, *hit))
            hit = self._find(self.probs, args[0]) if args else None
            if hit is not None and func in _PASS_FUNCS:
                self.probs.append((out, *hit))
        elif func in _SOFTMAX_FUNCS:
            hit = self._find(self.scores, args[0])
            if hit is not None:
                self.probs.append((out, *hit))
        return out


def _call(func, args, kwargs):
    """Run an intercepted function unchanged.

    Tensor methods are re-dispatched as method calls: some (``Tensor.unflatten``) are
    Python wrappers around ``super()`` that torch.compile cannot inline as plain functions.
    """
    name = getattr(func, "__name__", None)
    if args and isinstance(args[0], Tensor) and name and getattr(Tensor, name, None) is func:
        return getattr(args[0], name)(*args[1:], **kwargs)
    return func(*args, **kwargs)


_ROUTED_CLASSES: dict[type, type] = {}


def _routed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A cached subclass of ``cls`` whose forward runs under the module's ``SiteRouter``."""
    if cls in _ROUTED_CLASSES:
        return _ROUTED_CLASSES[cls]

    def forward(self, *args, **kwargs):
        sites = getattr(self, SITES_ATTR)
        with SiteRouter(sites, self._lincompress_track_patterns, self._lincompress_num_calls):
            return cls.forward(self, *args, **kwargs)

    routed = type(cls.__name__, (cls,), {"forward": forward, "_lincompress_original_class": cls})
    routed.__qualname__ = cls.__qualname__
    routed.__module__ = cls.__module__
    _ROUTED_CLASSES[cls] = routed
    return routed


def attach_sites(owner: nn.Module, sites: dict[int, HybridAttention], track_patterns: bool, num_calls: int) -> None:
    """Give ``owner`` its hybrid sites (keyed by call index) and route its attention calls to them.

    ``num_calls``: attention calls one forward of ``owner`` makes at batch size 1 (sites or not).
    """
    if hasattr(owner, SITES_ATTR):
        raise ValueError(f"{type(owner).__name__} already has lincompress sites; hybridize a fresh model")
    owner.add_module(SITES_ATTR, nn.ModuleDict({str(i): s for i, s in sorted(sites.items())}))
    owner._lincompress_track_patterns = track_patterns
    owner._lincompress_num_calls = num_calls
    owner.__class__ = _routed_class(type(owner))


def detach_sites(owner: nn.Module) -> None:
    """Undo ``attach_sites``: original class, no site parameters."""
    original = getattr(type(owner), "_lincompress_original_class", None)
    if original is None:
        return
    delattr(owner, SITES_ATTR)
    del owner._lincompress_track_patterns, owner._lincompress_num_calls
    owner.__class__ = original


def iter_sites(model: nn.Module) -> list[tuple[str, HybridAttention]]:
    """``(site_name, site)`` for every hybrid site, site_name = ``"<owner path>#<call index>"``."""
    found = []
    for path, module in model.named_modules():
        sites = getattr(module, SITES_ATTR, None)
        if isinstance(sites, nn.ModuleDict) and getattr(type(module), "_lincompress_original_class", None):
            for index, site in sites.items():
                found.append((f"{path}#{index}", site))
    return found
