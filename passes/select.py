"""HeuristicSelect: pick the K linear sites by position (first / last / uniform)."""

from __future__ import annotations

from dataclasses import dataclass

from lincompress.pipeline import State
from lincompress.selection import check_target, heuristic_selection


@dataclass
class HeuristicSelect:
    target_linear: float = 0.7
    strategy: str = "uniform"
    name: str = "select"

    def __post_init__(self) -> None:
        check_target(self.target_linear)

    def run(self, state: State) -> State:
        state.require_sites(self.name)
        state.selection = heuristic_selection(state.candidates, self.target_linear, self.strategy)
        state.settings.update(target_linear=self.target_linear, selection_method=self.strategy)
        return state
