"""Fix: hybrids -> pure softmax or pure linear, per the selection."""

from __future__ import annotations

from dataclasses import dataclass

from lincompress.errors import LinCompressError
from lincompress.pipeline import State
from lincompress.rewrite import fix_model


@dataclass
class Fix:
    name: str = "fix"

    def run(self, state: State) -> State:
        if state.selection is None:
            raise LinCompressError("Fix needs a selection; run a selection pass (HeuristicSelect or SelectiveTransfer) first")
        fix_model(state.model, state.selection)
        state.settings["fixed"] = True
        return state
