"""Recover: data-free post-training of the hybrid against the original model (+ Report, which publishes it).

Reads the selection regulariser's settings left by ``passes.SelectiveTransfer`` (then
it learns the selection and sets ``state.selection``), or trains the fixed heuristic
selection left by ``HeuristicSelect`` / ``GreedySelect``. Trained base parameters are
recorded in ``state.modified_parameters`` so the artifact carries them.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from lincompress import atomic
from lincompress.errors import LinCompressError
from lincompress.pipeline import State
from lincompress.recovery.objectives import make_objective
from lincompress.recovery.report import LOSS_PNG, SCORES_PNG
from lincompress.recovery.selective import SelectiveConfig
from lincompress.recovery.trainer import RecoveryConfig, Trainer

_CONFIG_KEYS = {f.name for f in fields(RecoveryConfig)}


class Recover:
    """``Recover(objective="adm", steps=2000, work_dir=..., resume=False, **options)``.

    ``options`` are ``RecoveryConfig`` fields (batch_size, lr, lr_feature_maps, lr_score,
    train, grad_accum, gradient_checkpointing, samples, device, seed, ...).
    ``work_dir`` holds the teacher cache, checkpoints, metrics.jsonl and the report;
    give one to be able to resume (default: a fresh temporary directory).
    """

    name = "recover"

    def __init__(
        self, objective: str = "adm", steps: int = 2000, *, work_dir: str | Path | None = None, resume: bool = False,
        progress: bool = True, objective_options: dict[str, Any] | None = None, **options: Any,
    ) -> None:
        unknown = sorted(set(options) - _CONFIG_KEYS)
        if unknown:
            raise LinCompressError(f"Recover got unknown option {unknown[0]!r}; known: {', '.join(sorted(_CONFIG_KEYS))}")
        self.config = RecoveryConfig(objective=objective, steps=steps, objective_options=dict(objective_options or {}),
                                     **options)
        make_objective(objective, **self.config.objective_options)  # fail on bad objective settings now
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.resume = resume
        self.progress = progress

    def run(self, state: State) -> State:
        state.require_sites(self.name)
        selective = None
        if state.settings.get("selection_method") == "selective_transfer":
            selective = SelectiveConfig(**state.settings["selective_transfer"])
        if self.config.steps == 0:
            if selective is not None:
                raise LinCompressError("SelectiveTransfer learns the selection during Recover; give steps > 0 "
                                       "(or use a heuristic selection with --select and --steps 0)")
            return state
        work_dir = self.work_dir or Path(tempfile.mkdtemp(prefix="lincompress-recover-"))
        home = next(state.model.parameters()).device
        trainer = Trainer(state.target, state.model, self.config, work_dir, selective=selective,
                          selection=state.selection, progress=self.progress)
        try:
            result = trainer.run(resume=self.resume, name=state.target.name)
        finally:
            state.model.to(home)
            state.target.model.to(home)
            if home.type == "cpu" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        state.selection = result.selection
        state.modified_parameters |= result.modified_parameters
        state.metrics["recovery"] = result.metrics
        state.settings["recovery"] = {k: v for k, v in vars(self.config).items()}
        state.outputs["recovery_dir"] = work_dir
        if result.report is not None:
            state.outputs["report"] = result.report
        return state


class Report:
    """Copy the recovery report (report.md, plots, metrics.jsonl) into the artifact directory, after Save."""

    name = "report"

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None

    def run(self, state: State) -> State:
        source = state.outputs.get("recovery_dir")
        out_dir = self.out_dir or state.outputs.get("artifact")
        if out_dir is None:
            raise LinCompressError("Report needs an output directory; pass Report(out_dir) or run passes.Save first")
        if source is None:
            return state  # nothing was trained: the artifact manifest says it all
        for name in ("report.md", LOSS_PNG, SCORES_PNG, "metrics.jsonl"):
            path = Path(source) / name
            if path.is_file():
                atomic.atomic_write(Path(out_dir) / name, lambda tmp, p=path: shutil.copyfile(p, tmp))
        state.outputs["report"] = Path(out_dir) / "report.md"
        return state
