"""``lincompress optimize model.py --target-linear 0.7 --out DIR``: ``lincompress.compress`` as a command.

find -> hybridize -> select (learned selective transfer, or a heuristic) + recover ->
fix -> save, then the report; ``--student-steps N`` adds the few-step distillation stage
(``passes.Distill``) between recover and fix. With ``--steps 0`` nothing is trained and a heuristic
selection (``--select``, default uniform) is used. Training state lives in
``DIR/.lincompress-work`` (teacher cache, checkpoints, metrics), so ``--resume``
continues an interrupted run with the same command line (``--resume-or-start``: continue
if there is a checkpoint, else start); it is removed after success unless ``--keep-work``.
Resuming a run that finished (its work directory removed) says so in one line and exits 0 when
``--out`` holds the artifact of the same command, and is refused naming ``--overwrite`` when it
holds another run's (``lincompress.finished_run``).

Every field of the passes' configs is a flag here (``commands/_options.py``), and every
objective field is ``--<objective>-<field>`` (e.g. ``--adm-grad-steps``); so is every
``TargetOptions`` field (``--prompts FILE --guidance-scale --height --width --frames``...).

``--nproc N`` trains on N processes (GPUs): the command starts them itself
(``lincompress.distributed.launch``) and each runs this command again; so does
``torchrun --nproc-per-node N -m lincompress optimize ...`` (without ``--nproc``, which torchrun's
own parser would take for ``--nproc-per-node``). Each worker creates the process group from
torchrun's environment; rank 0 prints and writes the artifact.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape

from lincompress.api import SELECTIONS, compress
from lincompress.commands._options import ARGV, config_options, given, objective_options, pop_objective_options
from lincompress.config import Arg, ArgumentError
from lincompress.distill_config import DistillConfig, check_processes
from lincompress.distributed import is_main
from lincompress.distributed.launch import launch, process_group_from_env, should_launch
from lincompress.guidance import GuidanceConfig, student_guidance_of
from lincompress.passes.find_attention import FindAttentionConfig
from lincompress.passes.hybridize import HybridizeConfig
from lincompress.passes.select import SelectConfig
from lincompress.passes.selective_transfer import GreedySelectConfig
from lincompress.recovery_config import RecoveryConfig, SelectiveConfig
from lincompress.target import TargetOptions


def _objective_options(options: dict, objective_flags: dict) -> None:
    """Fold ``--<objective>-<field>`` flags into ``objective_options`` for the chosen objective."""
    if not objective_flags:
        return
    objective = options.get("objective", RecoveryConfig().objective)
    chosen = {}
    for option_name, (obj_name, field_name, value) in objective_flags.items():
        if obj_name != objective:
            raise ArgumentError("{} applies to {} only", Arg(option_name, value), Arg("objective", obj_name))
        chosen[field_name] = value
    options["objective_options"] = chosen


@click.command("optimize")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Artifact directory to write.")
@click.option("--select", "select", type=click.Choice(SELECTIONS), default=None,
              help="How to choose the linear sites: learned (selective transfer; default when --steps > 0) or a "
                   "heuristic (default uniform with --steps 0).")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out from its last checkpoint (an error if there is none; "
                   "nothing to do if --out holds this command's finished artifact).")
@click.option("--resume-or-start", is_flag=True,
              help="Continue the run in --out if it has a checkpoint, else start one (for job scripts that requeue; "
                   "nothing to do if --out holds this command's finished artifact).")
@click.option("--overwrite", is_flag=True, help="Start over: replace what an earlier run wrote in --out.")
@click.option("--keep-work", is_flag=True,
              help="Keep --out/.lincompress-work (checkpoints, teacher cache) after success.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_options(TargetOptions, FindAttentionConfig, HybridizeConfig, SelectConfig, SelectiveConfig, GreedySelectConfig,
                RecoveryConfig, DistillConfig, exclude=("strategy", "sites"))
@objective_options()
def command(model_py: str, out_dir: str, select: str | None, resume: bool, resume_or_start: bool, overwrite: bool,
            keep_work: bool, quiet: bool, **options) -> None:
    """Compress MODEL_PY: make a fraction of its attention linear, recover quality, save the fixed model."""
    if sum((resume, resume_or_start, overwrite)) > 1:
        raise click.UsageError("--resume, --resume-or-start and --overwrite exclude each other; give one")
    objective_flags = pop_objective_options(options)
    chosen = given(options)
    _objective_options(chosen, objective_flags)
    if should_launch(chosen.get("nproc")):  # N processes, each running this command line
        if "student_steps" in chosen:  # refused before any worker starts
            check_processes(chosen["nproc"], chosen.get("distill_steps", chosen.get("steps")))
        launch(click.get_current_context().meta[ARGV], chosen["nproc"], chosen.get("device"))
        return
    with process_group_from_env(chosen.get("device")):
        _optimize(model_py, out_dir, select, "auto" if resume_or_start else resume, overwrite, keep_work, quiet, chosen)


def _optimize(model_py: str, out_dir: str, select: str | None, resume: bool | str, overwrite: bool, keep_work: bool,
              quiet: bool, chosen: dict) -> None:
    console = Console(stderr=True, quiet=not is_main())  # one voice: rank 0's
    state = compress(model_py, out_dir=out_dir, select=select, resume=resume,
                     overwrite=overwrite, keep_work=keep_work, progress=not quiet, **chosen)
    if not state.history:  # no pass ran: --out holds the finished artifact of this very command
        console.print(f"nothing to resume: {escape(out_dir)} already holds the finished artifact of this command "
                      "(--overwrite trains it again)", soft_wrap=True)
        return
    console.print(f"[bold]{len(state.selection)}[/] of {len(state.candidates)} candidate sites are linear "
                  f"({state.selection_method})" + (": " + ", ".join(state.selection) if state.selection else ""))
    rec = state.metrics.get("recovery")
    if rec:
        before, after = rec.get("velocity_error_without_recovery"), rec.get("velocity_error_after")
        if before is not None and after is not None:
            console.print(f"velocity error to the original: {before:.4g} without recovery -> {after:.4g} after "
                          f"{rec['steps']} {rec['objective']} steps ({rec['seconds']} s)")
    dist = state.metrics.get("distillation")
    if dist:
        trained = f"after {dist['steps']} {dist['objective']} steps" if dist["steps"] else "(not trained)"
        sampler = dist["sampler"]
        console.print(f"few-step student {trained}: samples in {sampler['steps']} steps, sigmas "
                      + ", ".join(f"{s:.3g}" for s in sampler["sigmas"]))
    guidance = GuidanceConfig.from_target(state.target, student_guidance_of(state.recipe))
    if guidance.guided:
        how = "one forward per step: sample at guidance scale 1" if guidance.student == "distilled" else \
            f"two forwards per step: sample at guidance scale {guidance.scale:g}"
        console.print(f"teacher guidance scale {guidance.scale:g}; student {guidance.student} ({how}, "
                      "as lincompress.run_pipeline does)")
    console.print(f"artifact written to {state.outputs['artifact']}"
                  + (f"; report: {state.outputs['report']}" if "report" in state.outputs else ""))
