"""Which sites become linear: the target count and the heuristic baselines.

K = round(target_linear * L) over the L candidate sites. Heuristics (first-K, last-K,
evenly spaced) exist as baselines for the learned selective transfer and as the
speed-only selection; "greedy" (by per-layer error) lives with recovery since it
needs the model.
"""

from __future__ import annotations

from lincompress.discovery import SiteInfo
from lincompress.errors import LinCompressError

HEURISTICS: tuple[str, ...] = ("first", "last", "uniform")


def check_target(target_linear: float) -> float:
    if not 0.0 <= float(target_linear) <= 1.0:
        raise LinCompressError(
            f"--target-linear {target_linear} is out of range; give the fraction of attention layers to make linear, in [0, 1]"
        )
    return float(target_linear)


def num_linear(target_linear: float, num_sites: int) -> int:
    return int(round(check_target(target_linear) * num_sites))


def heuristic_selection(candidates: list[SiteInfo], target_linear: float, strategy: str) -> list[str]:
    """Names of the K sites a heuristic picks, in model order."""
    k = num_linear(target_linear, len(candidates))
    names = [s.name for s in candidates]
    if strategy == "first":
        chosen = names[:k]
    elif strategy == "last":
        chosen = names[len(names) - k:] if k else []
    elif strategy == "uniform":
        # k evenly spaced picks (centred in their bins) over L sites
        chosen = [names[int((i + 0.5) * len(names) / k)] for i in range(k)] if k else []
    else:
        raise LinCompressError(f"unknown selection {strategy!r}; choose one of {HEURISTICS}")
    return chosen
