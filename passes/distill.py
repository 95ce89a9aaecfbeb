"""Distill: the few-step stage -- the hybrid becomes an N-step student of the original model, data-free.

Runs after ``Recover`` (or a heuristic selection) and before ``Fix``: the student samples
from noise in ``student_steps`` Euler steps on its own sigma grid
(``lincompress.recovery.sampling.few_step_grid``) and is trained so that its output at
every step follows the teacher's distribution (``distill_objective``: ``dmd2`` with a
fake-score network, or ``adm`` with the student as its own score estimate; see
``lincompress.recovery.distill``). After ``SelectiveTransfer`` with no ``Recover`` in
between it learns the selection at the same time (one-stage joint training, the variant
LinVideo reports as collapsing).

The stage records its sampler (steps, sigmas, guidance) in the recipe; ``Save`` puts it in
``lincompress.json`` as ``"sampler"``, and ``lincompress.sampler`` runs a diffusers pipeline
with exactly that sampler. ``distill_steps=0`` records the sampler without training (the
untrained N-step baseline). ``restore`` replays only the selection: the sampler is data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress.distill_config import DistillConfig, check_processes
from lincompress.errors import LinCompressError
from lincompress.guidance import GuidanceConfig
from lincompress.pipeline import RecordedPass, State, declare_fact
from lincompress.selection import mark_selection
from lincompress.passes.recover import check_training_stage, stage_run_options

declare_fact("distilled", "a few-step distilled student", "passes.Distill(student_steps=...)")


class Distill(RecordedPass):
    """``Distill(student_steps=4, distill_objective="dmd2", *, work_dir=None, resume=False, overwrite=False,
    progress=True, **fields)``.

    Fields: ``DistillConfig`` (the stage's own, then RecoveryConfig's training fields).
    ``work_dir`` holds the stage's checkpoints, metrics and report (default: a fresh
    temporary directory, removed when the pipeline succeeds and kept, named, when it fails:
    as for Recover). The teacher
    trajectories and prompt embeddings live in ``cache_dir`` (a shared directory, as for
    Recover) or else in the preceding Recover's work directory, so they are built once.
    ``resume`` and ``overwrite`` are Recover's (``False`` / ``True`` / ``"auto"``). None of
    these is recorded.

    It trains on one process only: under a process group of several (or with ``nproc > 1``)
    its preflight refuses it, since DMD2's fake-score network and optimizer are not data-parallel.
    """

    name = "distill"
    config_class = DistillConfig
    before = ("fixed",)

    def __init__(self, *args: Any, work_dir: str | Path | None = None, resume: bool | str = False,
                 overwrite: bool = False, progress: bool = True, config: DistillConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, config=config, **kwargs)
        self.work_dir, self.resume = stage_run_options(work_dir, resume)
        self.overwrite, self.progress = overwrite, progress

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("hybrid", "selection|selective") if self.config.distill_steps > 0 else ("hybrid", "selection")

    @property
    def produces(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("selection", "distilled")

    def check(self, state: State) -> None:
        from lincompress.distributed.context import world_size

        check_processes(world_size(), self.config.distill_steps, group=True)
        check_training_stage(state, self.work_dir, self.config.cache_dir)

    def convert(self, model: nn.Module, config: DistillConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        from lincompress.recovery.sampling import few_step_grid, num_train_timesteps, timestep_shift
        from lincompress.sampler import SamplerConfig

        scheduler = state.target.scheduler
        sigmas = [round(float(s), 6) for s in few_step_grid(timestep_shift(scheduler), config.student_steps)]
        metrics: dict[str, Any] = {"student_steps": config.student_steps, "objective": config.distill_objective,
                                   "steps": config.distill_steps}
        if config.distill_steps > 0:
            metrics.update(self._train(model, config, state, sigmas))
        elif state.selective is not None:
            raise LinCompressError("Distill learns the selection only while it trains; give distill_steps > 0 "
                                   "(or put passes.Recover before it)")
        sampler = SamplerConfig(config.student_steps, tuple(sigmas),
                                GuidanceConfig.from_target(state.target, config.student_guidance),
                                num_train_timesteps(scheduler))
        metrics["sampler"] = sampler.to_dict()
        state.metrics["distillation"] = metrics
        return model, {"selection": list(state.selection), "sampler": sampler.to_dict()}

    def _train(self, model: nn.Module, config: DistillConfig, state: State, sigmas: list[float]) -> dict[str, Any]:
        from lincompress.recovery.distill import distill_objective
        from lincompress.recovery.trainer import Trainer

        from lincompress import scratch

        work_dir = self.work_dir or scratch.make(state, "lincompress-distill-")  # removed once the pipeline succeeds
        cache_dir = state.outputs.get("cache_dir") or work_dir  # Recover's caches (unless config.cache_dir is set)
        home = next(model.parameters()).device
        trainer = Trainer(state.target, model, config.recovery_config(), work_dir, selective=state.selective,
                          selection=state.selection, objective=distill_objective(config, sigmas),
                          progress=self.progress, cache_dir=cache_dir, stage="distill")
        if self.work_dir is None:  # an interruption says how to continue from the temporary directory
            trainer.resume_with = scratch.continue_args(work_dir)
        try:
            result = trainer.run(resume=self.resume, name=state.target.name, overwrite=self.overwrite)
        finally:
            del trainer  # frees the fake-score network before the model moves back
            model.to(home)
            state.target.model.to(home)
            if home.type == "cpu" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        state.selection = list(result.selection)
        state.selective = None  # consumed: a joint run learned the selection
        state.modified_parameters |= result.modified_parameters
        state.outputs["distill_dir"] = work_dir
        if result.report is not None:
            state.outputs["distill_report"] = result.report
        return result.metrics

    @staticmethod
    def restore(model: nn.Module, config: DistillConfig, metadata: dict[str, Any]) -> nn.Module:
        mark_selection(model, metadata["selection"])
        return model
