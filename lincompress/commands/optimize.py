"""``lincompress optimize model.py --target-linear 0.7 --out DIR``: find -> hybridize -> select -> fix -> save."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from lincompress.feature_maps import FEATURE_MAPS
from lincompress.pipeline import Pipeline
from lincompress.selection import HEURISTICS, check_target
from lincompress.target import load_target


@click.command("optimize")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--target-linear", type=float, default=0.7, show_default=True, help="Fraction of self/joint attention sites to make linear.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Artifact directory to write.")
@click.option("--select", "selection", type=click.Choice(HEURISTICS), default="uniform", show_default=True, help="How to choose the linear sites.")
@click.option("--feature-map", type=click.Choice(FEATURE_MAPS), default="hedgehog", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact in --out.")
def command(model_py: str, target_linear: float, out_dir: str, selection: str, feature_map: str, overwrite: bool) -> None:
    """Compress MODEL_PY: make a fraction of its attention linear and save the fixed model."""
    from lincompress import passes

    check_target(target_linear)
    console = Console()
    target = load_target(model_py)
    pipeline = Pipeline([
        passes.FindAttention(),
        passes.Hybridize(feature_map=feature_map),
        passes.HeuristicSelect(target_linear=target_linear, strategy=selection),
        passes.Fix(),
        passes.Save(Path(out_dir), overwrite=overwrite),
    ])
    with console.status("optimizing"):
        state = pipeline.run(target)
    console.print(f"[bold]{len(state.selection)}[/] of {len(state.candidates)} candidate sites are linear: "
                  + ", ".join(state.selection))
    console.print(f"artifact written to {state.outputs['artifact']}")
