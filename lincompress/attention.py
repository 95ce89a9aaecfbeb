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
``lincompress.linear_attention`` node). What counts as an attention call is defined
once, in ``lincompress.attention_ops``, which discovery reads too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lincompress.attention_ops import AttentionCall, AttentionInterceptor, heads_tokens_dim, run_unchanged
from lincompress.errors import LinCompressError
from lincompress.feature_maps import FeatureMap, make_feature_map
from lincompress.ops import linear_attention
from lincompress.ops.spec import feature_map_spec
from lincompress.scores import logit_for_score, rectified_sigmoid

MODES: tuple[str, ...] = ("hybrid", "softmax", "linear")
SITES_ATTR = "lincompress_sites"
NESTED_RUNNING = "_lincompress_running"  # forward depth of a module whose attention calls an outer owner must skip


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



@dataclass(frozen=True)
class CallSignature:
    """What discovery recorded about one attention call of an owner; checked on every routed forward."""

    pattern: str  # "sdpa" | "matmul_softmax" | "mha"
    num_heads: int
    head_dim: int

    def describe(self) -> str:
        return f"{self.pattern} with {self.num_heads} heads of {self.head_dim}"


class CallOrderError(LinCompressError):
    """An owner's attention calls at run time are not the ones discovery recorded."""


_CALL_ORDER_FIX = ("its attention call order depends on the input (Python control flow); run discovery on inputs "
                   "shaped like the ones you run, or leave this module's sites out")


class SiteRouter(AttentionInterceptor):
    """Send the attention calls made inside one owning module's forward to its hybrid sites.

    Calls are counted in execution order (SDPA calls and completed
    ``matmul -> [scale] -> softmax -> matmul`` patterns share one counter, exactly as
    discovery counts them: both are ``AttentionInterceptor``s), modulo the number of
    calls one forward made at batch size 1: processors that loop over the batch (Mochi)
    repeat the same sites. With ``expected`` (one ``CallSignature`` per recorded call)
    every call is checked against what discovery recorded at its index and ``finish``
    checks the count, so a model whose call order changes between forwards fails with
    one line naming the owner instead of sending calls to the wrong sites.
    """

    def __init__(
        self, sites: nn.ModuleDict, track_patterns: bool, num_calls: int, *,
        expected: tuple[CallSignature, ...] = (), owner: nn.Module | None = None, nested: tuple[nn.Module, ...] = (),
    ) -> None:
        super().__init__(track_patterns)
        self.sites = sites
        self.num_calls = max(1, num_calls)
        self.expected = expected
        self._owner = owner  # named only in errors: reading its name here would make torch.compile guard on
        # it and compile every block separately
        self.nested = nested  # submodules that make attention calls of their own (they are not ours)
        self.index = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.nested and any(getattr(m, NESTED_RUNNING, 0) for m in self.nested):
            return run_unchanged(func, args, kwargs or {})  # a call of a nested owner: discovery counts it there
        return super().__torch_function__(func, types, args, kwargs)

    @property
    def owner(self) -> str:
        return getattr(self._owner, "_lincompress_owner", None) or "a hybridized module"

    def _next_site(self, call: AttentionCall) -> HybridAttention | None:
        position = self.index % self.num_calls
        if self.expected:
            self._check(position, call)
        self.index += 1
        key = str(position)
        return self.sites[key] if key in self.sites else None

    def _check(self, position: int, call: AttentionCall) -> None:
        want = self.expected[position] if position < len(self.expected) else None
        q_shape = call.sdpa_shapes()[0]
        heads, _, head_dim = heads_tokens_dim(q_shape)
        if want is not None and want.pattern == call.pattern and want.head_dim in (head_dim, -1) and (
                len(q_shape) != 4 or want.num_heads in (heads, -1)):
            return
        got = CallSignature(call.pattern, int(heads), int(head_dim)).describe()
        recorded = want.describe() if want is not None else "no call"
        raise CallOrderError(f"attention call {self.index} of {self.owner} is {got}, but discovery recorded "
                             f"{recorded} there: {_CALL_ORDER_FIX}")

    def finish(self) -> None:
        """After the owner's forward: it made a whole number of the recorded call sequences."""
        if self.expected and (self.index == 0 or self.index % self.num_calls):
            raise CallOrderError(f"{self.owner} made {self.index} attention calls in one forward, but discovery "
                                 f"recorded {self.num_calls}: {_CALL_ORDER_FIX}")

    def attention(self, call: AttentionCall) -> Tensor:
        site = self._next_site(call)
        if site is None:
            return call.run_original()
        mask = key_padding_mask(call.attn_mask) if site.mode != "softmax" else None
        return site(call.q, call.k, call.v, softmax_fn=call.run_original, key_mask=mask)


_ROUTED_CLASSES: dict[type, type] = {}


def _routed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A cached subclass of ``cls`` whose forward runs under the module's ``SiteRouter``."""
    if cls in _ROUTED_CLASSES:
        return _ROUTED_CLASSES[cls]

    def forward(self, *args, **kwargs):
        nested = tuple(self.get_submodule(path) for path in self._lincompress_nested)
        router = SiteRouter(getattr(self, SITES_ATTR), self._lincompress_track_patterns, self._lincompress_num_calls,
                            expected=self._lincompress_expected, owner=self, nested=nested)
        with router:
            out = cls.forward(self, *args, **kwargs)
        router.finish()
        return out

    routed = type(cls.__name__, (cls,), {"forward": forward, "_lincompress_original_class": cls})
    routed.__qualname__ = cls.__qualname__
    routed.__module__ = cls.__module__
    _ROUTED_CLASSES[cls] = routed
    return routed


_OWNER_ATTRS = ("_lincompress_track_patterns", "_lincompress_num_calls", "_lincompress_expected", "_lincompress_owner",
                "_lincompress_nested")


def _enter_nested(module: nn.Module, args: Any) -> None:
    setattr(module, NESTED_RUNNING, getattr(module, NESTED_RUNNING, 0) + 1)


def _leave_nested(module: nn.Module, args: Any, output: Any) -> None:
    setattr(module, NESTED_RUNNING, getattr(module, NESTED_RUNNING, 1) - 1)


def mark_nested(module: nn.Module) -> None:
    """Make ``module``'s forward visible to outer routers (once): its attention calls are its own."""
    if getattr(module, "_lincompress_marked", False):
        return
    module.register_forward_pre_hook(_enter_nested)
    module.register_forward_hook(_leave_nested, always_call=True)
    module._lincompress_marked = True


def attach_sites(
    owner: nn.Module, sites: dict[int, HybridAttention], track_patterns: bool, num_calls: int, *,
    expected: tuple[CallSignature, ...] = (), name: str = "", nested: tuple[str, ...] = (),
) -> None:
    """Give ``owner`` its hybrid sites (keyed by call index) and route its attention calls to them.

    ``num_calls``: attention calls one forward of ``owner`` makes at batch size 1 (sites or not);
    ``expected``: their signatures, checked on every forward (empty: no check); ``name``: the
    owner's path, for error messages; ``nested``: paths (relative to ``owner``) of submodules
    that make attention calls of their own, which this owner's router must not count.
    """
    if hasattr(owner, SITES_ATTR):
        raise ValueError(f"{type(owner).__name__} already has lincompress sites; hybridize a fresh model")
    if expected and len(expected) != num_calls:
        raise ValueError(f"expected has {len(expected)} call signatures for num_calls={num_calls}")
    owner.add_module(SITES_ATTR, nn.ModuleDict({str(i): s for i, s in sorted(sites.items())}))
    owner._lincompress_track_patterns = track_patterns
    owner._lincompress_num_calls = num_calls
    owner._lincompress_expected = tuple(expected)
    owner._lincompress_owner = name or type(owner).__name__
    owner._lincompress_nested = tuple(nested)
    for path in nested:
        mark_nested(owner.get_submodule(path))
    owner.__class__ = _routed_class(type(owner))


def detach_sites(owner: nn.Module) -> None:
    """Undo ``attach_sites``: original class, no site parameters."""
    original = getattr(type(owner), "_lincompress_original_class", None)
    if original is None:
        return
    delattr(owner, SITES_ATTR)
    for attr in _OWNER_ATTRS:
        if attr in owner.__dict__:
            delattr(owner, attr)
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
