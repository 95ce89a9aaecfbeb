"""Hybridize: every self/joint site becomes r * softmax + (1 - r) * linear."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from lincompress.feature_maps import FEATURE_MAPS
from lincompress.errors import LinCompressError
from lincompress.pipeline import State
from lincompress.rewrite import hybridize_model


@dataclass
class Hybridize:
    """``copy=True`` keeps the original model untouched (recovery uses it as the teacher)."""

    feature_map: str = "hedgehog"
    eps: float = 1e-6
    init_score: float = 0.9
    copy: bool = True
    name: str = "hybridize"

    def run(self, state: State) -> State:
        state.require_sites(self.name)
        if self.feature_map not in FEATURE_MAPS:
            raise LinCompressError(f"unknown feature map {self.feature_map!r}; choose one of {FEATURE_MAPS}")
        if self.copy and state.model is state.target.model:
            state.model = copy.deepcopy(state.target.model)
        hybridize_model(state.model, state.sites, self.feature_map, self.eps, self.init_score)
        state.settings.update(feature_map=self.feature_map, eps=self.eps)
        return state
