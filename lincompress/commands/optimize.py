"""``lincompress optimize model.py --target-linear 0.7 --out DIR``.

find -> hybridize -> select (learned selective transfer, or a heuristic) + recover ->
fix -> save, then the report. With ``--steps 0`` nothing is trained and a heuristic
selection (``--select``, default uniform) is used. Training state lives in
``DIR/.lincompress-work`` (teacher cache, checkpoints, metrics), so ``--resume``
continues an interrupted run with the same command line.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from lincompress.artifacts import MANIFEST
from lincompress.errors import LinCompressError
from lincompress.feature_maps import FEATURE_MAPS
from lincompress.pipeline import Pipeline
from lincompress.recovery.objectives import OBJECTIVES
from lincompress.recovery.sampling import check_flow_scheduler
from lincompress.recovery.trainer import TRAINABLE
from lincompress.selection import HEURISTICS, check_target
from lincompress.target import load_target

WORK_DIR = ".lincompress-work"
SELECTIONS = ("learned", *HEURISTICS, "greedy")


@click.command("optimize")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--target-linear", type=float, default=0.7, show_default=True, help="Fraction of self/joint attention sites to make linear.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Artifact directory to write.")
@click.option("--select", "selection", type=click.Choice(SELECTIONS), default=None,
              help="How to choose the linear sites: learned (selective transfer; default when --steps > 0) or a heuristic "
                   "(default uniform with --steps 0).")
@click.option("--steps", type=click.IntRange(min=0), default=2000, show_default=True, help="Recovery training steps (0: none).")
@click.option("--objective", type=click.Choice(tuple(OBJECTIVES)), default="adm", show_default=True, help="Recovery objective.")
@click.option("--adm-grad-steps", type=click.IntRange(min=1), default=None,
              help="ADM: student sampler steps that carry gradient [default: all]; 1 saves activation memory at video scale.")
@click.option("--samples", type=click.IntRange(min=0), default=8, show_default=True, help="Teacher trajectories to generate and cache.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", type=float, default=1e-5, show_default=True, help="Learning rate of the base model's parameters.")
@click.option("--lr-feature-maps", type=float, default=1e-3, show_default=True)
@click.option("--lr-score", type=float, default=None, help="Learning rate of the selection scores [default: 10/steps].")
@click.option("--train", "train", type=click.Choice(TRAINABLE), default="all", show_default=True, help="Which parameters train.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in backward (less memory).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--teacher-steps", type=click.IntRange(min=1), default=8, show_default=True, help="Teacher sampler steps per trajectory.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when available].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint.")
@click.option("--feature-map", type=click.Choice(FEATURE_MAPS), default="hedgehog", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(model_py: str, target_linear: float, out_dir: str, selection: str | None, steps: int, objective: str,
            adm_grad_steps: int | None, samples: int, batch_size: int, lr: float, lr_feature_maps: float, lr_score: float | None, train: str,
            grad_accum: int, gradient_checkpointing: bool, checkpoint_every: int, teacher_steps: int,
            device: str | None, seed: int, resume: bool, feature_map: str, overwrite: bool, quiet: bool) -> None:
    """Compress MODEL_PY: make a fraction of its attention linear, recover quality, save the fixed model."""
    from lincompress import passes

    check_target(target_linear)
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not (overwrite or resume):  # refuse before training, not after
        raise LinCompressError(f"{out} already holds an artifact; pass --overwrite or choose another --out")
    selection = selection or ("learned" if steps > 0 else "uniform")
    if selection == "learned" and steps == 0:
        raise LinCompressError("--select learned trains the selection; give --steps > 0 or pick a heuristic --select")
    console = Console(stderr=True)
    target = load_target(model_py)
    if steps > 0:
        check_flow_scheduler(target.scheduler)
    if selection == "learned":
        select = [passes.SelectiveTransfer(target_linear=target_linear)]
    elif selection == "greedy":
        select = [passes.GreedySelect(target_linear=target_linear, device=device)]
    else:
        select = [passes.HeuristicSelect(target_linear=target_linear, strategy=selection)]
    recover = []
    if steps > 0:
        recover = [passes.Recover(
            objective, steps, work_dir=out / WORK_DIR, resume=resume, progress=not quiet, samples=samples,
            batch_size=batch_size, lr=lr, lr_feature_maps=lr_feature_maps, lr_score=lr_score, train=train,
            grad_accum=grad_accum, gradient_checkpointing=gradient_checkpointing, checkpoint_every=checkpoint_every,
            teacher_steps=teacher_steps, device=device, seed=seed,
            objective_options={"grad_steps": adm_grad_steps} if objective == "adm" and adm_grad_steps else None,
        )]
    pipeline = Pipeline([
        passes.FindAttention(), passes.Hybridize(feature_map=feature_map), *select, *recover, passes.Fix(),
        passes.Save(out, overwrite=overwrite or resume), passes.Report(out),
    ])
    state = pipeline.run(target)
    console.print(f"[bold]{len(state.selection)}[/] of {len(state.candidates)} candidate sites are linear "
                  f"({selection}): " + ", ".join(state.selection))
    rec = state.metrics.get("recovery")
    if rec:
        before, after = rec.get("velocity_error_without_recovery"), rec.get("velocity_error_after")
        if before is not None and after is not None:
            console.print(f"velocity error to the original: {before:.4g} without recovery -> {after:.4g} after "
                          f"{rec['steps']} {rec['objective']} steps ({rec['seconds']} s)")
    console.print(f"artifact written to {state.outputs['artifact']}"
                  + (f"; report: {state.outputs['report']}" if "report" in state.outputs else ""))
