"""Recover: data-free post-training of the hybrid against the original model (+ Report, which publishes it).

Trains the learned selection set up by ``passes.SelectiveTransfer`` (then it sets
``state.selection``), or the fixed selection left by ``HeuristicSelect`` / ``GreedySelect``.
Trained base parameters are recorded in ``state.modified_parameters`` so the artifact
carries them. The training stack is imported when Recover is built or runs, never by
its ``restore`` (which replays the selection it ended with).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress import atomic
from lincompress.config import Arg, ArgumentError, PassConfig, option
from lincompress.errors import LinCompressError
from lincompress.pipeline import BasePass, RecordedPass, State
from lincompress.recovery_config import RecoveryConfig
from lincompress.selection import mark_selection


class Recover(RecordedPass):
    """``Recover(objective="adm", steps=2000, *, work_dir=None, resume=False, overwrite=False, progress=True,
    **RecoveryConfig fields)``.

    ``work_dir`` holds the teacher cache, checkpoints, metrics.jsonl and the report;
    give one to be able to resume (default: a fresh temporary directory, whose checkpoints
    and caches are deleted after success). ``resume``: ``False`` starts (and refuses a
    ``work_dir`` holding an earlier run's checkpoint unless ``overwrite``), ``True``
    continues that checkpoint (an error without one), ``"auto"`` continues one if there is
    one. These say how to run, so the recipe does not record them.

    Under an initialised process group of several processes every rank runs the pass: training is
    data-parallel with FSDP2 (``lincompress.recovery.data_parallel``), the work directory is rank
    0's (shared by all), and every rank ends with the same trained ``model``.
    """

    name = "recover"
    config_class = RecoveryConfig

    def __init__(self, *args: Any, work_dir: str | Path | None = None, resume: bool | str = False,
                 overwrite: bool = False, progress: bool = True,
                 config: RecoveryConfig | None = None, **kwargs: Any) -> None:
        if kwargs.get("objective_options", {}) is None:
            del kwargs["objective_options"]
        super().__init__(*args, config=config, **kwargs)
        from lincompress.recovery.objectives import make_objective
        from lincompress.recovery.trainer import check_resume

        make_objective(self.config.objective, **self.config.objective_options)  # bad objective settings fail now
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.resume = check_resume(resume)
        if self.resume is True and self.work_dir is None:
            raise ArgumentError("{} continues the checkpoint in a {}; give the one the earlier run used",
                                Arg("resume", True), Arg("work_dir"))
        self.overwrite, self.progress = overwrite, progress

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("hybrid", "selection|selective") if self.config.steps > 0 else ("hybrid", "selection")

    @property
    def produces(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("selection",) if self.config.steps > 0 else ()

    def check(self, state: State) -> None:
        if self.config.steps > 0:
            from lincompress.recovery.sampling import check_flow_scheduler

            check_flow_scheduler(state.target.scheduler)

    def run(self, state: State) -> State:
        if self.config.steps == 0:
            if state.selective is not None:
                raise LinCompressError("SelectiveTransfer learns the selection during Recover; give steps > 0 "
                                       "(or use a heuristic selection with steps=0)")
            return state  # nothing to train, nothing to record
        return super().run(state)

    def convert(self, model: nn.Module, config: RecoveryConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        from lincompress.recovery.trainer import Trainer

        from lincompress.distributed.context import DistributedContext, rank, world_size

        group = DistributedContext(rank(), world_size())  # several processes share one work directory
        work_dir = self.work_dir or Path(group.broadcast(tempfile.mkdtemp(prefix="lincompress-recover-")
                                                         if group.is_main else None))
        home = next(model.parameters()).device
        trainer = Trainer(state.target, model, config, work_dir, selective=state.selective,
                          selection=state.selection, progress=self.progress)
        try:
            result = trainer.run(resume=self.resume, name=state.target.name, overwrite=self.overwrite)
            group.barrier()
            if self.work_dir is None and group.is_main:  # a temporary dir nobody can resume from: keep the report
                for bulky in ("checkpoints", "teacher", "prompts"):
                    shutil.rmtree(Path(work_dir) / bulky, ignore_errors=True)
        finally:
            model.to(home)
            state.target.model.to(home)
            if home.type == "cpu" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        state.selection = list(result.selection)
        state.selective = None  # consumed: the selection is learned
        state.modified_parameters |= result.modified_parameters
        state.metrics["recovery"] = result.metrics
        state.outputs["recovery_dir"] = work_dir
        if result.report is not None:
            state.outputs["report"] = result.report
        return model, {"selection": state.selection}

    @staticmethod
    def restore(model: nn.Module, config: RecoveryConfig, metadata: dict[str, Any]) -> nn.Module:
        mark_selection(model, metadata["selection"])
        return model


@dataclass
class ReportConfig(PassConfig):
    out_dir: str | None = option(None, cli=False, help="Where to copy the report [default: the artifact directory].")


class Report(BasePass):
    """Copy the recovery report (report.md, plots, metrics.jsonl) into the artifact directory, after Save."""

    name = "report"
    config_class = ReportConfig
    main_process_only = True  # several processes: rank 0 copies the report

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return () if self.config.out_dir is not None else ("artifact",)

    def run(self, state: State) -> State:
        source = state.outputs.get("recovery_dir")
        out_dir = self.config.out_dir or state.outputs.get("artifact")
        if out_dir is None:
            raise LinCompressError("Report needs an output directory; pass Report(out_dir) or run passes.Save first")
        if source is None:
            return state  # nothing was trained: the artifact manifest says it all
        from lincompress.recovery.report import LOSS_PNG, SCORES_PNG

        for name in ("report.md", LOSS_PNG, SCORES_PNG, "metrics.jsonl"):
            path = Path(source) / name
            if path.is_file():
                atomic.atomic_write(Path(out_dir) / name, lambda tmp, p=path: shutil.copyfile(p, tmp))
        state.outputs["report"] = Path(out_dir) / "report.md"
        return state
