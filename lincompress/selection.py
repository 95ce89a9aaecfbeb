"""Which sites become linear: the target count, the heuristic baselines, and marking a choice on a model.

K = round(target_linear * L) over the L candidate sites. Heuristics (first-K, last-K,
evenly spaced) exist as baselines for the learned selective transfer and as the
speed-only selection; "greedy" (by per-layer error) lives with recovery since it
needs the model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lincompress.config import Arg, ArgumentError, ArgumentWarning, option
from lincompress.errors import LinCompressError

if TYPE_CHECKING:
    from torch import nn

    from lincompress.discovery import SiteInfo

HEURISTICS: tuple[str, ...] = ("first", "last", "uniform")


def target_linear_option() -> Any:
    """The ``target_linear`` field every selection config shares (one default, one range)."""
    return option(0.7, low=0.0, high=1.0, help="Fraction of the self/joint attention sites to make linear.")


def check_target(target_linear: float) -> float:
    if not 0.0 <= float(target_linear) <= 1.0:
        raise ArgumentError("{} is out of range; give the fraction of attention layers to make linear, in [0, 1]",
                            Arg("target_linear", target_linear))
    return float(target_linear)


def num_linear(target_linear: float, num_sites: int) -> int:
    """K = round(target_linear * num_sites); warns when rounding makes a nonzero target 0 sites or a partial one all."""
    k = int(round(check_target(target_linear) * num_sites))
    if num_sites and 0 < target_linear and k == 0:
        warnings.warn(ArgumentWarning(
            f"{{}} makes 0 of {num_sites} candidate attention sites linear (it rounds down): nothing changes; "
            f"{{}} or more makes 1 linear", Arg("target_linear", target_linear), Arg("target_linear", _up(1 / num_sites))),
            stacklevel=2)
    elif num_sites > 1 and target_linear < 1 and k == num_sites:
        warnings.warn(ArgumentWarning(
            f"{{}} makes all {num_sites} candidate attention sites linear (it rounds up), the first and last layers "
            f"too; {{}} or less keeps one softmax", Arg("target_linear", target_linear),
            Arg("target_linear", _down((num_sites - 1) / num_sites))), stacklevel=2)
    return k


def _up(x: float) -> float:
    """``x`` rounded up to 3 decimals (a target at least as large: a suggestion that really gives the count)."""
    return math.ceil(x * 1000) / 1000


def _down(x: float) -> float:
    return math.floor(x * 1000) / 1000


def heuristic_selection(candidates: Sequence[SiteInfo | str], target_linear: float, strategy: str) -> list[str]:
    """Names of the K sites a heuristic picks, in model order (``candidates``: SiteInfos or site names)."""
    names = [c if isinstance(c, str) else c.name for c in candidates]
    k = num_linear(target_linear, len(names))
    if strategy == "first":
        chosen = names[:k]
    elif strategy == "last":
        chosen = names[len(names) - k:] if k else []
    elif strategy == "uniform":
        # k evenly spaced picks (centred in their bins) over L sites
        chosen = [names[int((i + 0.5) * len(names) / k)] for i in range(k)] if k else []
    else:
        raise ArgumentError(f"{{}} is unknown; choose one of {', '.join(HEURISTICS)}", Arg("strategy", strategy))
    return chosen


def mark_selection(model: nn.Module, selection: Sequence[str]) -> list[str]:
    """Selected hybrid sites run linear only, the others softmax only; scores stop training.

    The model stays a hybrid (``fix_model`` then removes the softmax sites); returns the
    selection in model order.
    """
    from lincompress.attention import iter_sites

    sites = iter_sites(model)
    names = [n for n, _ in sites]
    unknown = sorted(set(selection) - set(names))
    if unknown:
        raise LinCompressError(
            f"the selection names sites the model does not have: {', '.join(unknown[:3])}; its sites are "
            f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
        )
    chosen = set(selection)
    for name, site in sites:
        site.set_mode("linear" if name in chosen else "softmax")
        site.score_logit.requires_grad_(False)
    return [n for n in names if n in chosen]
