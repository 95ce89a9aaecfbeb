"""Hybridize: every self/joint site becomes r * softmax + (1 - r) * linear."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from lincompress.config import PassConfig, feature_map_option, option
from lincompress.pipeline import RecordedPass, State


@dataclass
class HybridizeConfig(PassConfig):
    feature_map: str = feature_map_option()
    eps: float = option(1e-6, low=0.0, low_open=True, help="Added to the linear attention's normaliser.")
    init_score: float = option(0.9, low=0.0, high=1.0, help="Initial softmax weight r of every hybrid site.")
    copy: bool = option(True, cli=False, record=False,
                        help="Hybridize a copy and keep the original model (recovery's teacher) untouched.")


class Hybridize(RecordedPass):
    """``copy=True`` (default) never mutates the user's model: ``state.target.model`` stays the original.

    One forward on ``target.inputs(1)`` checks at once that the model's attention calls are the
    ones discovery recorded (``CallOrderError`` otherwise), rather than steps later in training.
    """

    name = "hybridize"
    config_class = HybridizeConfig
    requires = ("sites",)
    produces = ("hybrid",)

    def convert(self, model: nn.Module, config: HybridizeConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        from lincompress.rewrite import hybridize_model

        if config.copy and model is state.target.model:
            model = copy.deepcopy(model)
        # one forward checks the recorded call order now, not steps later in training or in the saved artifact
        hybridize_model(model, state.sites, config.feature_map, config.eps, config.init_score,
                        check_inputs=state.target.inputs(1))
        state.feature_map = config.feature_map
        return model, {"sites": [s.to_dict() for s in state.sites]}

    @staticmethod
    def restore(model: nn.Module, config: HybridizeConfig, metadata: dict[str, Any]) -> nn.Module:
        from lincompress.discovery import SiteInfo
        from lincompress.rewrite import hybridize_model

        sites = [SiteInfo.from_dict(s) for s in metadata["sites"]]
        hybridize_model(model, sites, config.feature_map, config.eps, config.init_score)
        return model
