"""SelectiveTransfer (learned selection, trained inside Recover) and GreedySelect (per-layer-error baseline).

SelectiveTransfer sets up: it puts every site back in hybrid mode and leaves its
``SelectiveConfig`` in ``state.selective``; the following ``passes.Recover`` builds the
regulariser, trains the scores jointly with the objective and sets ``state.selection``
to exactly K sites. That keeps one training loop, and a pipeline reads like the method:
``SelectiveTransfer(0.7) -> Recover("adm") -> Fix()``.

Both import the training code only when they run: replaying an artifact's recipe goes
through their ``restore``, which only sets site modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lincompress.config import PassConfig, device_option, option, seed_option
from lincompress.pipeline import RecordedPass, State
from lincompress.recovery_config import SelectiveConfig
from lincompress.selection import mark_selection, num_linear, target_linear_option


def _all_hybrid(model: nn.Module) -> None:
    from lincompress.attention import iter_sites

    for _, site in iter_sites(model):
        site.set_mode("hybrid")
        site.score_logit.requires_grad_(True)


class SelectiveTransfer(RecordedPass):
    """Learn which ``round(target_linear * L)`` sites become linear during the following Recover pass."""

    name = "selective-transfer"
    config_class = SelectiveConfig
    requires = ("hybrid",)
    produces = ("selective",)

    def convert(self, model: nn.Module, config: SelectiveConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        _all_hybrid(model)
        state.selection = None
        state.selective = config
        state.target_linear = config.target_linear
        state.selection_method = "selective_transfer"
        return model, {}

    @staticmethod
    def restore(model: nn.Module, config: SelectiveConfig, metadata: dict[str, Any]) -> nn.Module:
        _all_hybrid(model)
        return model


@dataclass
class GreedySelectConfig(PassConfig):
    target_linear: float = target_linear_option()
    points: int = option(4, low=1, cli="--greedy-points", help="Greedy selection: probe inputs the error is measured on.")
    seed: int = seed_option()
    device: str | None = device_option()


class GreedySelect(RecordedPass):
    """Baseline: add sites one at a time, each time the one whose linearisation raises the velocity error least.

    The error is measured against the original model on ``points`` fixed probe inputs
    (noise latents at spread-out timesteps, sampled conditions); untrained feature maps.
    """

    name = "greedy-select"
    config_class = GreedySelectConfig
    requires = ("hybrid",)
    produces = ("selection",)

    def convert(self, model: nn.Module, config: GreedySelectConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        import torch.nn.functional as F

        from lincompress.attention import iter_sites
        from lincompress.devices import resolve_device
        from lincompress.recovery.sampling import ConditionSource, ModelCaller, latent_shape
        from lincompress.recovery.selective import greedy_selection

        sites = iter_sites(model)
        target, device = state.target, resolve_device(config.device)
        gen = torch.Generator().manual_seed(config.seed)
        cond = {k: v.to(device) for k, v in ConditionSource(target)(config.points, gen).items()}
        x = torch.randn(config.points, *latent_shape(target), generator=gen).to(device)
        sigma = torch.linspace(0.95, 0.2, config.points)
        caller = ModelCaller(target, target.scheduler)
        model.to(device)
        target.model.to(device)
        with torch.no_grad():
            reference = caller(target.model, x, sigma, cond).float()

            def error() -> float:
                return float(F.mse_loss(caller(model, x, sigma, cond).float(), reference))

            selection, rounds = greedy_selection(sites, num_linear(config.target_linear, len(sites)), error)
        state.selection = mark_selection(model, selection)
        state.target_linear = config.target_linear
        state.selection_method = "greedy"
        state.metrics["greedy_rounds"] = rounds
        return model, {"selection": state.selection}

    @staticmethod
    def restore(model: nn.Module, config: GreedySelectConfig, metadata: dict[str, Any]) -> nn.Module:
        mark_selection(model, metadata["selection"])
        return model
