"""Fix: hybrids -> pure softmax or pure linear, per the selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lincompress.config import PassConfig
from lincompress.pipeline import RecordedPass, State


@dataclass
class FixConfig(PassConfig):
    """Fix has nothing to configure: the selection comes from the pass before it."""


class Fix(RecordedPass):
    name = "fix"
    config_class = FixConfig
    requires = ("selection",)
    produces = ("fixed",)

    def convert(self, model: nn.Module, config: FixConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        from lincompress.rewrite import fix_model

        fix_model(model, state.selection)
        state.fixed = True
        return model, {"selection": list(state.selection)}

    @staticmethod
    def restore(model: nn.Module, config: FixConfig, metadata: dict[str, Any]) -> nn.Module:
        from lincompress.rewrite import fix_model

        fix_model(model, metadata["selection"])
        return model
