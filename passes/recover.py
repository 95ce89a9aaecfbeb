"""Recover: data-free post-training of the hybrid against the original model (+ Report, which publishes it).

Trains the learned selection set up by ``passes.SelectiveTransfer`` (then it sets
``state.selection``), or the fixed selection left by ``HeuristicSelect`` / ``GreedySelect``.
Trained base parameters are recorded in ``state.modified_parameters`` so the artifact
carries them. The training stack is imported when Recover is built or runs, never by
its ``restore`` (which replays the selection it ended with).
"""

from __future__ import annotations

import shutil
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
    default: a fresh temporary directory (``lincompress.scratch``), removed when the pipeline
    succeeds (``passes.Report(out_dir)`` copies the report out first; run by hand, outside a
    pipeline, when this pass returns) and kept when it fails or
    is interrupted, named in the error with how to continue from it. A ``work_dir`` you name
    is kept. ``resume``: ``False`` starts (and refuses a
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

        make_objective(self.config.objective, **self.config.objective_options)  # bad objective settings fail now
        self.work_dir, self.resume = stage_run_options(work_dir, resume)
        self.overwrite, self.progress = overwrite, progress

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("hybrid", "selection|selective") if self.config.steps > 0 else ("hybrid", "selection")

    @property
    def produces(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("selection",) if self.config.steps > 0 else ()

    def check(self, state: State) -> None:
        if self.config.steps > 0:
            check_training_stage(state, self.work_dir, self.config.cache_dir)

    def run(self, state: State) -> State:
        if self.config.steps == 0:
            if state.selective is not None:
                raise LinCompressError("SelectiveTransfer learns the selection during Recover; give steps > 0 "
                                       "(or use a heuristic selection with steps=0)")
            return state  # nothing to train, nothing to record
        return super().run(state)

    def convert(self, model: nn.Module, config: RecoveryConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        from lincompress.recovery.trainer import Trainer

        from lincompress import scratch
        from lincompress.distributed.context import DistributedContext

        group = DistributedContext.current()  # several processes share one work directory
        work_dir = self.work_dir or scratch.make(state, "lincompress-recover-")  # removed once the pipeline succeeds
        home = next(model.parameters()).device
        trainer = Trainer(state.target, model, config, work_dir, selective=state.selective,
                          selection=state.selection, progress=self.progress)
        if self.work_dir is None:  # an interruption says how to continue from the temporary directory
            trainer.resume_with = scratch.continue_args(work_dir)
        try:
            result = trainer.run(resume=self.resume, name=state.target.name, overwrite=self.overwrite)
            group.barrier()
            state.outputs["cache_dir"] = work_dir  # a later stage (Distill) reuses the teacher trajectories
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
    overwrite: bool = option(False, cli=False, help="Replace a report lincompress wrote there (its files only).")


DISTILL_REPORT_DIR = "distill"  # where the few-step stage's report goes, inside the report directory


class Report(BasePass):
    """Copy the recovery report (report.md, plots, metrics.jsonl) into the artifact directory, after Save.

    The distillation stage's report (``passes.Distill``) goes to its ``distill/`` subdirectory.
    """

    name = "report"
    config_class = ReportConfig
    main_process_only = True  # several processes: rank 0 copies the report

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return () if self.config.out_dir is not None else ("artifact",)

    def check(self, state: State) -> None:
        if self.config.out_dir is not None:
            self._check(self.config.out_dir, self.config.overwrite)
        elif "artifact" in state.outputs:  # the artifact directory (a Save before this one will write it)
            # files lincompress did not write are refused now; reports of ours at run time, as
            # Save(overwrite=True) removes the replaced artifact's reports first
            self._check(state.outputs["artifact"], replace=True)

    def _check(self, out_dir: str | Path, replace: bool) -> None:
        from lincompress.outputs import OutputDir
        from lincompress.recovery.report import REPORT_FILES

        names = (*REPORT_FILES, *(f"{DISTILL_REPORT_DIR}/{name}" for name in REPORT_FILES))
        OutputDir(out_dir).check(names, replace=replace, what="a training report", replace_arg=Arg("overwrite", True))

    def run(self, state: State) -> State:
        from lincompress.outputs import OutputDir
        from lincompress.recovery.report import REPORT_MD

        source, distill = state.outputs.get("recovery_dir"), state.outputs.get("distill_dir")
        out_dir = self.config.out_dir or state.outputs.get("artifact")
        if out_dir is None:
            raise LinCompressError("Report needs an output directory; pass Report(out_dir) or run passes.Save first")
        if source is None and distill is None:
            return state  # nothing was trained: the artifact manifest says it all
        if self.config.out_dir is None:
            self._check(out_dir, self.config.overwrite)
        written = []
        if source is not None:
            written += _copy_report(Path(source), Path(out_dir))
            state.outputs["report"] = Path(out_dir) / REPORT_MD
        if distill is not None:  # the few-step stage's report goes to <out_dir>/distill/
            written += _copy_report(Path(distill), Path(out_dir), DISTILL_REPORT_DIR)
            state.outputs["distill_report"] = Path(out_dir) / DISTILL_REPORT_DIR / REPORT_MD
        OutputDir(out_dir).add(written)
        return state


def _copy_report(source: Path, out_dir: Path, sub: str = "") -> list[str]:
    """Copy the report files ``source`` holds to ``out_dir/sub``; their paths relative to ``out_dir``."""
    from lincompress.recovery.report import REPORT_FILES

    written = []
    for name in REPORT_FILES:
        path = source / name
        if path.is_file():
            rel = f"{sub}/{name}" if sub else name
            atomic.atomic_write(out_dir / rel, lambda tmp, p=path: shutil.copyfile(p, tmp))
            written.append(rel)
    return written


def stage_run_options(work_dir: str | Path | None, resume: bool | str) -> tuple[Path | None, bool | str]:
    """``(work_dir, resume)`` of a training stage (Recover, Distill), checked alike: resuming needs the work dir."""
    from lincompress.recovery.trainer import check_resume

    work = Path(work_dir) if work_dir is not None else None
    resume = check_resume(resume)
    if resume is True and work is None:
        raise ArgumentError("{} continues the checkpoint in a {}; give the one the earlier run used",
                            Arg("resume", True), Arg("work_dir"))
    return work, resume


def check_training_stage(state: State, work_dir: Path | None, cache_dir: str | Path | None) -> None:
    """The preflight of a training stage: a flow-matching scheduler, and work and cache paths that can be directories."""
    from lincompress.outputs import check_location
    from lincompress.recovery.sampling import check_flow_scheduler

    check_flow_scheduler(state.target.scheduler)
    if work_dir is not None:
        check_location(work_dir, "work_dir")
    if cache_dir is not None:
        check_location(cache_dir, "cache_dir")
