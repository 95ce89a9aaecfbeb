"""SelectiveTransfer (learned selection, trained inside Recover) and GreedySelect (per-layer-error baseline).

SelectiveTransfer only configures: it records the selection regulariser's settings in
``state.settings["selective_transfer"]``; the following ``passes.Recover`` builds the
regulariser, trains the scores jointly with the objective and sets ``state.selection``
to exactly K sites. That keeps one training loop, and a pipeline reads like the method:
``SelectiveTransfer(0.7) -> Recover("adm") -> Fix()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lincompress.attention import iter_sites
from lincompress.errors import LinCompressError
from lincompress.pipeline import State
from lincompress.recovery.sampling import ConditionSource, ModelCaller, latent_shape
from lincompress.recovery.selective import SelectiveConfig, greedy_selection
from lincompress.recovery.trainer import resolve_device
from lincompress.selection import check_target, num_linear


@dataclass
class SelectiveTransfer:
    """Learn which ``round(target_linear * L)`` sites become linear during the following Recover pass."""

    target_linear: float = 0.7
    constraint_weight: float = 10.0
    binarize_weight: float = 0.5
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.3
    freeze_threshold: float = 0.02
    harden_at: float = 0.8
    name: str = "selective-transfer"

    def __post_init__(self) -> None:
        check_target(self.target_linear)
        self.config()  # validate now, not after a long run

    def config(self) -> SelectiveConfig:
        return SelectiveConfig(
            self.target_linear, self.constraint_weight, self.binarize_weight, self.beta_start, self.beta_end,
            self.warmup, self.freeze_threshold, self.harden_at,
        )

    def run(self, state: State) -> State:
        state.require_sites(self.name)
        if not iter_sites(state.model):
            raise LinCompressError("SelectiveTransfer needs a hybridized model; run passes.Hybridize() before it")
        state.selection = None
        state.settings.update(
            target_linear=self.target_linear, selection_method="selective_transfer",
            selective_transfer=self.config().to_dict(),
        )
        return state


@dataclass
class GreedySelect:
    """Baseline: add sites one at a time, each time the one whose linearisation raises the velocity error least.

    The error is measured against the original model on ``points`` fixed probe inputs
    (noise latents at spread-out timesteps, sampled conditions); untrained feature maps.
    """

    target_linear: float = 0.7
    points: int = 4
    seed: int = 0
    device: str | None = None
    name: str = "greedy-select"

    def __post_init__(self) -> None:
        check_target(self.target_linear)

    def run(self, state: State) -> State:
        state.require_sites(self.name)
        sites = iter_sites(state.model)
        if not sites:
            raise LinCompressError("GreedySelect needs a hybridized model; run passes.Hybridize() before it")
        target, device = state.target, resolve_device(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        cond = {k: v.to(device) for k, v in ConditionSource(target)(self.points, gen).items()}
        x = torch.randn(self.points, *latent_shape(target), generator=gen).to(device)
        sigma = torch.linspace(0.95, 0.2, self.points)
        caller = ModelCaller(target, target.scheduler)
        state.model.to(device)
        target.model.to(device)
        with torch.no_grad():
            reference = caller(target.model, x, sigma, cond).float()

            def error() -> float:
                return float(F.mse_loss(caller(state.model, x, sigma, cond).float(), reference))

            selection, rounds = greedy_selection(sites, num_linear(self.target_linear, len(sites)), error)
        state.selection = selection
        state.settings.update(target_linear=self.target_linear, selection_method="greedy")
        state.metrics["greedy_rounds"] = rounds
        return state
