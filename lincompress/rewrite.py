"""Model rewrites shared by the passes and by ``lincompress.apply``: hybridize and fix.

Both work from ``SiteInfo`` records alone (owner path + call index + head shape), so an
artifact can re-create the exact fixed model without tracing again.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from lincompress.attention import HybridAttention, attach_sites, detach_sites, iter_sites
from lincompress.discovery import SiteInfo
from lincompress.errors import LinCompressError, NoAttentionError


def _module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        raise LinCompressError(f"the model has no submodule {path!r}; is this the model the sites were found in?") from None


def _param_like(module: nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)


def hybridize_model(
    model: nn.Module, sites: list[SiteInfo], feature_map: str, eps: float = 1e-6, init_score: float = 0.9
) -> list[str]:
    """Attach a HybridAttention to every candidate site; returns their names."""
    candidates = [s for s in sites if s.candidate]
    if not candidates:
        kinds = sorted({s.kind for s in sites})
        raise NoAttentionError(
            f"no self- or joint-attention site to linearise (found only {', '.join(kinds) or 'none'}); "
            "lincompress replaces softmax self-attention, cross-attention stays softmax"
        )
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
        num_calls = sum(1 for s in sites if s.owner == owner_path)
        attach_sites(owner, made, any(s.pattern == "matmul_softmax" for s in owner_sites), num_calls)
    return [s.name for s in candidates]


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
