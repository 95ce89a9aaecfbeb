"""Selective transfer: learn which K sites become linear, jointly with recovery.

Each candidate site has a score r in [0, 1] (the softmax branch's weight). Training
adds two terms to the recovery loss:

* constraint: ``w_c * (sum_l (1 - r_l) - K)^2`` pulls the total "linearness" to K;
* binarisation (AdaRound): ``w_b * sum_l (1 - |2 r_l - 1|^beta)``, beta decaying from
  high (inactive except near 0.5) to low (pushes every r to 0 or 1) after a warm-up.

Conversion is progressive: after each step, a site whose r fell below the threshold
is frozen linear (``set_mode("linear")``: its softmax branch is no longer computed),
never more than K. At ``harden_at`` the final selection (exactly the K lowest scores)
is fixed, sites are set linear / softmax accordingly and the remaining steps train
the hard hybrid, so the model that Fix produces is the model that was trained.

The greedy per-layer-error heuristic lives here too, since it needs the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lincompress.attention import HybridAttention
from lincompress.errors import LinCompressError
from lincompress.recovery_config import SelectiveConfig
from lincompress.selection import num_linear


class SelectiveRegularizer:
    """The selection terms, progressive freezing and the final exactly-K choice, for one training run."""

    def __init__(self, sites: list[tuple[str, HybridAttention]], config: SelectiveConfig, total_steps: int) -> None:
        if not sites:
            raise LinCompressError("selective transfer needs hybrid sites; run passes.Hybridize() before it")
        self.sites = sites
        self.config = config
        self.total_steps = max(1, total_steps)
        self.k = num_linear(config.target_linear, len(sites))
        self.frozen: dict[str, int] = {}  # site -> step it was frozen at
        self.selection: list[str] | None = None  # set when hardened
        self.harden_step = max(1, int(round(config.harden_at * self.total_steps)))
        self.ema = 0.99
        self._grad_ms, self._grad_count = 0.0, 0

    @property
    def hardened(self) -> bool:
        return self.selection is not None

    def scores(self) -> dict[str, float]:
        return {name: (0.0 if name in self.frozen else float(site.score.detach())) for name, site in self.sites}

    def num_linear_now(self) -> int:
        return len(self.selection) if self.hardened else len(self.frozen)

    def beta(self, step: int) -> float:
        start = self.config.warmup * self.total_steps
        span = max(1.0, self.harden_step - start)
        frac = min(1.0, max(0.0, (step - start) / span))
        return self.config.beta_start + (self.config.beta_end - self.config.beta_start) * frac

    def penalty(self, step: int) -> tuple[Tensor | None, dict[str, float]]:
        """Constraint + binarisation on the live (neither frozen nor hardened) scores."""
        if self.hardened:
            return None, {}
        live = [site.score for name, site in self.sites if name not in self.frozen]
        if not live:
            return None, {}
        r = torch.stack([s.float() for s in live])
        linearness = (1 - r).sum() + len(self.frozen)
        constraint = self.config.constraint_weight * (linearness - self.k) ** 2
        logs = {"constraint": constraint.item(), "linearness": linearness.item()}
        total = constraint
        if step >= self.config.warmup * self.total_steps:
            beta = self.beta(step)
            binar = self.config.binarize_weight * (1 - (2 * r - 1).abs().pow(beta)).sum()
            total = total + binar
            logs.update(binarize=binar.item(), beta=beta)
        return total, logs

    @torch.no_grad()
    def normalize_objective_grads(self) -> None:
        """Divide the objective's gradients on the live scores by their running RMS (over sites and steps).

        Their scale depends on the model and objective (1e-6 ... 1); their *relative*
        sizes are what ranks the sites. Normalising keeps the ranking and makes the
        constraint / binarisation weights unit-free, so one default works everywhere.
        The running (EMA) scale, rather than this step's, keeps a site whose gradient is
        small next to the others' small even after the important sites saturate at r = 1.
        """
        grads = [site.score_logit.grad for name, site in self.sites
                 if name not in self.frozen and site.score_logit.grad is not None]
        if not grads:
            return
        ms = float(torch.stack([g.float().reshape(()) for g in grads]).pow(2).mean())
        if not math.isfinite(ms):
            return  # the trainer's non-finite check reports it
        self._grad_ms = self.ema * self._grad_ms + (1 - self.ema) * ms
        self._grad_count += 1
        scale = math.sqrt(self._grad_ms / (1 - self.ema**self._grad_count))
        if scale > 0:
            for g in grads:
                g.div_(scale)

    def _freeze(self, name: str, site: HybridAttention, step: int, score: bool = True) -> None:
        site.set_mode("linear")
        if score:
            site.set_score(0.0)
        site.score_logit.requires_grad_(False)
        site.score_logit.grad = None
        self.frozen[name] = step

    def after_step(self, step: int) -> list[str]:
        """Freeze sites whose score fell below the threshold (lowest first, at most K in all); harden on schedule."""
        if self.hardened:
            return []
        low = sorted(
            ((float(site.score.detach()), name, site) for name, site in self.sites
             if name not in self.frozen and float(site.score.detach()) < self.config.freeze_threshold),
            key=lambda item: item[0],
        )
        newly = []
        for _, name, site in low[: max(0, self.k - len(self.frozen))]:
            self._freeze(name, site, step)
            newly.append(name)
        if step >= self.harden_step:
            self.harden(step)
        return newly

    def final_selection(self) -> list[str]:
        """Exactly K sites: frozen ones first (score 0), then the lowest live scores; in model order."""
        if self.selection is not None:
            return list(self.selection)
        scores = self.scores()
        order = {name: i for i, (name, _) in enumerate(self.sites)}
        ranked = sorted(scores, key=lambda n: (scores[n], order[n]))
        chosen = set(ranked[: self.k])
        return [name for name, _ in self.sites if name in chosen]

    def harden(self, step: int, selection: list[str] | None = None) -> list[str]:
        """Fix the final selection: chosen sites linear, the others back to softmax, scores no longer train."""
        selection = self.final_selection() if selection is None else list(selection)
        chosen = set(selection)
        for name, site in self.sites:
            site.score_logit.requires_grad_(False)
            site.score_logit.grad = None
            if name in chosen:
                if name not in self.frozen:
                    self.frozen[name] = step
                site.set_mode("linear")
            else:
                site.set_mode("softmax")
        self.selection = selection
        return selection

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": dict(self.frozen), "selection": self.selection, "grad_ms": self._grad_ms,
                "grad_count": self._grad_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-apply frozen / hardened modes (the scores themselves come back with the parameters)."""
        by_name = dict(self.sites)
        self._grad_ms, self._grad_count = float(state.get("grad_ms", 0.0)), int(state.get("grad_count", 0))
        unknown = [n for n in state.get("frozen", {}) if n not in by_name]
        if unknown:
            raise LinCompressError(f"checkpoint names sites this model lacks ({unknown[0]}); resume with the same model and settings")
        for name, step in state.get("frozen", {}).items():  # (a site hardened linear kept its trained score)
            self._freeze(name, by_name[name], int(step), score=False)
        if state.get("selection") is not None:
            self.harden(max(self.frozen.values(), default=0), state["selection"])


def greedy_selection(
    sites: list[tuple[str, HybridAttention]], k: int, error: Callable[[], float]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Greedy by per-layer error: add, one at a time, the site whose linearisation raises ``error()`` least.

    ``error()`` measures the current model against the original (all other sites run
    softmax). Costs about K * L evaluations; returns the selection in model order and
    the per-round record. Site modes are restored afterwards.
    """
    saved = [site.mode for _, site in sites]
    chosen: list[str] = []
    rounds: list[dict[str, Any]] = []
    try:
        for _, site in sites:
            site.set_mode("softmax")
        by_name = dict(sites)
        for _ in range(k):
            trials = {}
            for name, site in sites:
                if name in chosen:
                    continue
                site.set_mode("linear")
                trials[name] = float(error())
                site.set_mode("softmax")
            best = min(trials, key=trials.get)
            chosen.append(best)
            by_name[best].set_mode("linear")
            rounds.append({"site": best, "error": trials[best]})
    finally:
        for (_, site), mode in zip(sites, saved):
            site.set_mode(mode)
    order = [name for name, _ in sites]
    return [n for n in order if n in set(chosen)], rounds
