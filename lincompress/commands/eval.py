"""``lincompress eval model.py --artifact DIR``: the compressed model's fidelity to the original.

MODEL_PY is rebuilt as the artifact was made (its recorded prompts, guidance scale and
resolution; the target flags ``--height --guidance-scale ...`` override them), and the
compressed model samples the way it was trained (``--student-guidance`` overrides it).
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from lincompress.commands._target import pop_target_options, target_options
from lincompress.guidance import STUDENT_GUIDANCE


@click.command("eval")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--artifact", "artifact", type=click.Path(file_okay=False), required=True, help="Artifact directory from `optimize`.")
@click.option("--samples", type=int, default=4, show_default=True, help="Number of samples (same noise and conditions for both models).")
@click.option("--steps", type=int, default=10, show_default=True,
              help="The teacher's Euler flow-matching steps (a distilled artifact samples with its own few-step sampler).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Where to write eval.json/eval.md/pictures (default: the artifact).")
@click.option("--no-pictures", is_flag=True, help="Skip the comparison grid PNG and GIF.")
@click.option("--student-guidance", type=click.Choice(STUDENT_GUIDANCE), default=None,
              help="Sample the compressed model with CFG (cfg) or one forward per step (distilled) [default: the "
                   "artifact's].")
@target_options()
def command(model_py: str, artifact: str, samples: int, steps: int, seed: int, batch_size: int, device: str | None,
            out_dir: str | None, no_pictures: bool, student_guidance: str | None, **options) -> None:
    """Sample MODEL_PY's original and the ARTIFACT's compressed model from the same noise and compare them."""
    import torch

    from lincompress.evaluation import evaluate
    from lincompress.evaluation.runner import check_eval_out, guidance_line
    from lincompress.guidance import guidance_of
    from lincompress.target import load_target
    from lincompress.target_record import recorded_options

    console = Console()
    flags = pop_target_options(options)
    check_eval_out(artifact, out_dir)  # before the model is built
    target = load_target(model_py, recorded_options(artifact, **flags))
    guidance = guidance_of(artifact).updated(scale=flags.get("guidance_scale"), student=student_guidance)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with console.status(f"sampling {samples} x {steps} steps with teacher and compressed model on {device}"):
        results = evaluate(target, artifact, samples=samples, steps=steps, seed=seed, batch_size=batch_size,
                           device=device, out_dir=out_dir, pictures=not no_pictures, guidance=guidance)
    fid = results["fidelity"]
    student = results["settings"]["student_sampler"]
    sampler = f"{student['steps']}-step recorded sampler" if student["recorded"] else f"{steps} steps"
    table = Table(title=f"{results['model']}: {results['num_linear']}/{results['num_candidates']} sites linear; "
                        f"teacher {steps} steps, compressed {sampler}")
    table.add_column("fidelity to the teacher")
    table.add_column("value", justify="right")
    table.add_row("PSNR (dB)", f"{fid['psnr_db']:.2f}")
    table.add_row("SSIM", "-" if fid["ssim"] is None else f"{fid['ssim']:.4f}")
    table.add_row("velocity rel. MSE (mean over t)", f"{fid['velocity_rel_mse']:.4g}")
    table.add_row("velocity cosine (mean over t)", f"{fid['velocity_cosine']:.4f}")
    console.print(table)
    console.print(guidance_line(results["settings"]["guidance"]))
    if "world" in results:
        w = results["world"]
        wt = Table(title=f"world metrics ({w['name']})")
        for col in ("metric", "teacher", "compressed"):
            wt.add_column(col, justify="left" if col == "metric" else "right")
        for key, value in w["teacher"].items():
            wt.add_row(key, f"{value:.4g}", f"{w['compressed'][key]:.4g}")
        console.print(wt)
    out = out_dir or artifact
    console.print(f"wrote {', '.join(results['files'].values())} to {out}")
