"""HeuristicSelect: pick the K linear sites by position (first / last / uniform), or name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lincompress.config import Arg, ArgumentError, PassConfig, literal, option
from lincompress.pipeline import RecordedPass, State
from lincompress.selection import HEURISTICS, heuristic_selection, mark_selection, target_linear_option


@dataclass
class SelectConfig(PassConfig):
    target_linear: float = target_linear_option()
    strategy: str = option("uniform", choices=HEURISTICS, help="Which sites become linear: first, last or uniform.")
    sites: list[str] = option(default_factory=list, metavar="SITE",
                              help="Exactly these sites become linear (replaces strategy and target_linear).")


class HeuristicSelect(RecordedPass):
    """Marks the choice on the hybrid (selected sites linear, the others softmax); Fix then makes it final."""

    name = "select"
    config_class = SelectConfig
    requires = ("hybrid",)
    produces = ("selection",)

    def convert(self, model: nn.Module, config: SelectConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        names = state.candidate_names()
        if config.sites:
            unknown = [s for s in config.sites if s not in names]
            if unknown:
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise ArgumentError(f"{{}} names {literal(repr(unknown[0]))}, which is not a candidate site; "
                                    f"candidates: {literal(shown)}", Arg("sites"))
            chosen, method = [n for n in names if n in set(config.sites)], "sites"
            state.target_linear = len(chosen) / len(names) if names else 0.0
        else:
            chosen, method = heuristic_selection(names, config.target_linear, config.strategy), config.strategy
            state.target_linear = config.target_linear
        state.selection = mark_selection(model, chosen)
        state.selection_method = method
        return model, {"selection": state.selection}

    @staticmethod
    def restore(model: nn.Module, config: SelectConfig, metadata: dict[str, Any]) -> nn.Module:
        mark_selection(model, metadata["selection"])
        return model
