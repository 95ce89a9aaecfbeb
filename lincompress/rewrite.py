"""Model rewrites shared by the passes and by ``lincompress.apply``: hybridize and fix.

Both work from ``SiteInfo`` records alone (owner path + call index + head shape), so an
artifact can re-create the exact fixed model without tracing again.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from lincompress.attention import (
    SITES_ATTR, CallOrderError, CallSignature, HybridAttention, attach_sites, detach_sites, iter_sites,
)
from lincompress.discovery import CANDIDATE_KINDS, LINEAR_MASKS, SiteInfo
from lincompress.errors import LinCompressError, NoAttentionError


def _module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        raise LinCompressError(f"the model has no submodule {path!r}; is this the model the sites were found in?") from None


def _param_like(module: nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)


def hybridize_model(
    model: nn.Module, sites: list[SiteInfo], feature_map: str, eps: float = 1e-6, init_score: float = 0.9, *,
    check_inputs: dict[str, Any] | None = None,
) -> list[str]:
    """Attach a HybridAttention to every candidate site; returns their names.

    Every routed forward checks its owner's attention calls against the recorded
    sites (pattern, heads, head_dim, count); ``check_inputs`` (model kwargs) runs one
    forward right away, so a model whose call order differs from what discovery
    recorded fails here, in one line naming the owner, rather than later in training.
    """
    candidates = [s for s in sites if s.candidate]
    if not candidates:
        raise NoAttentionError(f"no attention site to linearise: {_why_none(sites)}")
    by_owner: dict[str, list[SiteInfo]] = defaultdict(list)
    for s in candidates:
        by_owner[s.owner].append(s)
    for owner_path, owner_sites in by_owner.items():
        owner = _module(model, owner_path)
        ref = _param_like(owner) if _param_like(owner) is not None else _param_like(model)
        made = {}
        for s in owner_sites:
            site = HybridAttention(s.num_heads, s.head_dim, feature_map, eps, init_score)
            if ref is not None:
                site.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            made[s.call_index] = site
        calls = sorted((s for s in sites if s.owner == owner_path), key=lambda s: s.call_index)
        expected = tuple(CallSignature(s.pattern, s.num_heads, s.head_dim) for s in calls)
        if [s.call_index for s in calls] != list(range(len(calls))):
            expected = ()  # records that do not number the owner's calls 0..n-1: count, but cannot check
        attach_sites(owner, made, any(s.pattern == "matmul_softmax" for s in calls), len(calls),
                     expected=expected, name=owner_path or "<root>", nested=_nested_owners(owner_path, sites))
    if check_inputs is not None:
        check_call_order(model, check_inputs)
    return [s.name for s in candidates]


def _nested_owners(owner_path: str, sites: list[SiteInfo]) -> tuple[str, ...]:
    """Owners of recorded calls inside ``owner_path`` (relative paths): their calls are not the owner's."""
    prefix = f"{owner_path}." if owner_path else ""
    inner = {s.owner[len(prefix):] for s in sites if s.owner != owner_path and s.owner.startswith(prefix)}
    return tuple(sorted(inner))


def _why_none(sites: list[SiteInfo]) -> str:
    kinds = ", ".join(sorted({s.kind for s in sites})) or "none"
    unsure = [s.name for s in sites if not s.sure and s.kind in CANDIDATE_KINDS]
    masked = [s.name for s in sites if s.mask not in LINEAR_MASKS and s.kind in CANDIDATE_KINDS]
    why = f"found only {kinds} attention"
    if unsure:
        why += f"; discovery is unsure of {', '.join(unsure[:3])} (name them in include / --include to linearise them)"
    if masked:
        why += f"; {', '.join(masked[:3])} use masks linear attention cannot honour"
    fused = [s.name for s in sites if s.pattern == "mha" and s.kind in CANDIDATE_KINDS]
    if fused:
        why += (f"; {', '.join(fused[:3])} run inside nn.MultiheadAttention, which cannot be rewritten "
                "(call scaled_dot_product_attention instead)")
    return why + "; lincompress replaces softmax self-attention, cross-attention stays softmax"


def check_call_order(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """One forward (no grad, softmax branches only) that must route every owner's calls as discovery recorded them."""
    owners = [(path, m) for path, m in model.named_modules() if hasattr(m, SITES_ATTR)]
    seen: dict[str, int] = {path: 0 for path, _ in owners}
    handles = [m.register_forward_pre_hook(lambda mod, args, p=path: seen.__setitem__(p, seen[p] + 1))
               for path, m in owners]
    modes = {name: site.mode for name, site in iter_sites(model)}
    set_all_modes(model, "softmax")
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        for h in handles:
            h.remove()
        for name, site in iter_sites(model):
            site.set_mode(modes[name])
    never = [path or "<root>" for path, count in seen.items() if count == 0]
    if never:
        raise CallOrderError(f"discovery recorded attention in {', '.join(never[:3])}, but a forward never ran it; "
                             "re-run discovery on this model and these inputs")


def set_all_modes(model: nn.Module, mode: str) -> None:
    for _, site in iter_sites(model):
        site.set_mode(mode)


def fix_model(model: nn.Module, linear_sites: list[str]) -> None:
    """Freeze the hybrid: selected sites run linear only, the rest return to the original softmax.

    Softmax sites are removed outright (their owners get their original class back when
    no site is left), so the fixed model carries no dead parameters and its graph holds
    the original attention op there.
    """
    present = dict(iter_sites(model))
    unknown = sorted(set(linear_sites) - set(present))
    if unknown:
        raise LinCompressError(f"selection names sites the model does not have: {', '.join(unknown[:5])}")
    chosen = set(linear_sites)
    for name, site in present.items():
        if name in chosen:
            site.set_mode("linear")
            site.score_logit.requires_grad_(False)
            continue
        owner_path, index = name.rsplit("#", 1)
        owner = _module(model, owner_path)
        sites = owner.lincompress_sites
        del sites[index]
        if len(sites) == 0:
            detach_sites(owner)
