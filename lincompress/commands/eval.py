"""``lincompress eval model.py --artifact DIR``: the compressed model's fidelity to the original."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table


@click.command("eval")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--artifact", "artifact", type=click.Path(file_okay=False), required=True, help="Artifact directory from `optimize`.")
@click.option("--samples", type=int, default=4, show_default=True, help="Number of samples (same noise and conditions for both models).")
@click.option("--steps", type=int, default=10, show_default=True, help="Euler flow-matching sampling steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Where to write eval.json/eval.md/pictures (default: the artifact).")
@click.option("--no-pictures", is_flag=True, help="Skip the comparison grid PNG and GIF.")
def command(model_py: str, artifact: str, samples: int, steps: int, seed: int, batch_size: int, device: str | None,
            out_dir: str | None, no_pictures: bool) -> None:
    """Sample MODEL_PY's original and the ARTIFACT's compressed model from the same noise and compare them."""
    import torch

    from lincompress.evaluation import evaluate
    from lincompress.evaluation.runner import check_eval_out
    from lincompress.target import load_target

    console = Console()
    check_eval_out(artifact, out_dir)  # before the model is built
    target = load_target(model_py)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with console.status(f"sampling {samples} x {steps} steps with teacher and compressed model on {device}"):
        results = evaluate(target, artifact, samples=samples, steps=steps, seed=seed, batch_size=batch_size,
                           device=device, out_dir=out_dir, pictures=not no_pictures)
    fid = results["fidelity"]
    table = Table(title=f"{results['model']}: {results['num_linear']}/{results['num_candidates']} sites linear")
    table.add_column("fidelity to the teacher")
    table.add_column("value", justify="right")
    table.add_row("PSNR (dB)", f"{fid['psnr_db']:.2f}")
    table.add_row("SSIM", "-" if fid["ssim"] is None else f"{fid['ssim']:.4f}")
    table.add_row("velocity rel. MSE (mean over t)", f"{fid['velocity_rel_mse']:.4g}")
    table.add_row("velocity cosine (mean over t)", f"{fid['velocity_cosine']:.4f}")
    console.print(table)
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
