"""``lincompress bench model.py [--artifact DIR]``: latency, speed-up and memory of the fixed models.

In one run, with one set of settings, it measures the original model and a fixed
hybrid per target (or the artifact's fixed model): the median latency of one denoiser
forward, of a full N-step flow-matching sampling loop, and the peak device memory of
a forward. It prints a table and writes everything (device, versions, settings, rows)
as JSON.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.table import Table

from lincompress import atomic
from lincompress import benchmarking as bm
from lincompress.errors import LinCompressError
from lincompress.feature_maps import FEATURE_MAPS
from lincompress.selection import HEURISTICS, heuristic_selection

DEFAULT_TARGETS = "0.5,0.7,1.0"
DEFAULT_JSON = "lincompress-bench.json"


def _measure(
    row: bm.Row, model: torch.nn.Module, kwargs: dict[str, Any], target: Any, device: torch.device, settings: dict[str, Any]
) -> None:
    """Fill ``row`` with forward/sampling timings and peak memory of ``model`` (compiled if asked)."""
    runner = model
    if settings["compile"]:
        torch._dynamo.reset()
        runner = torch.compile(model)
    with torch.no_grad():
        forward = bm.time_call(lambda: runner(**kwargs), device, settings["warmup"], settings["reps"])
        row.forward = forward
        if settings["compile"]:
            row.compile_s = round(forward.first_call_s, 3)  # the first warm-up call compiled the model
        row.peak_memory_bytes = forward.peak_memory_bytes
        row.extra["output_finite"] = bool(torch.isfinite(bm.model_output(runner(**kwargs))).all())
        if settings["steps"] > 0:
            sample, _ = bm.make_sampler(runner, kwargs, target.latent_key, target.timestep_key, target.scheduler,
                                        settings["steps"])
            row.sampling = bm.time_call(sample, device, warmup=1, reps=settings["sampling_reps"])


def run_bench(
    model_py: str,
    artifact: str | None = None,
    targets: str | None = None,
    use_compile: bool = False,
    steps: int = 8,
    batch_size: int = 1,
    dtype: str = "auto",
    device: str = "auto",
    feature_map: str = "hedgehog",
    select: str = "uniform",
    warmup: int = 2,
    reps: int = 10,
    sampling_reps: int = 3,
    progress: Console | None = None,
) -> dict[str, Any]:
    """Benchmark MODEL_PY; returns the JSON-ready report (see ``command``)."""
    from lincompress.artifacts import apply, read_artifact
    from lincompress.passes import FindAttention
    from lincompress.pipeline import State
    from lincompress.target import load_target

    if artifact is not None and targets is not None:
        raise LinCompressError(
            "--artifact and --targets are exclusive: the artifact fixes which layers are linear; drop one of them"
        )
    if select not in HEURISTICS:
        raise LinCompressError(f"--select {select!r} is unknown; choose one of {', '.join(HEURISTICS)}")
    if feature_map not in FEATURE_MAPS:
        raise LinCompressError(f"--feature-map {feature_map!r} is unknown; choose one of {', '.join(FEATURE_MAPS)}")
    for name, value, low in (("--steps", steps, 0), ("--batch-size", batch_size, 1), ("--warmup", warmup, 0),
                             ("--reps", reps, 1), ("--sampling-reps", sampling_reps, 1)):
        if value < low:
            raise LinCompressError(f"{name} {value} must be >= {low}")
    if use_compile and warmup < 1:
        raise LinCompressError("--compile needs --warmup >= 1: the first call compiles and must not be timed")
    target_values = bm.parse_targets(targets if targets is not None else DEFAULT_TARGETS) if artifact is None else []
    dev = bm.resolve_device(device)
    dt = bm.resolve_dtype(dtype, dev)
    say = progress.log if progress is not None else (lambda *a, **k: None)

    target = load_target(model_py)
    original = target.model.eval()
    rows: list[bm.Row] = []
    variants: list[tuple[bm.Row, Any]] = []  # (row, how to build its model)

    if artifact is not None:
        art = read_artifact(artifact)
        fixed = apply(copy.deepcopy(original), artifact).eval()  # validates base identity before any timing
        fm = art.manifest["feature_map"]
        candidates = list(art.manifest.get("candidates") or [s.name for s in art.sites if s.candidate])
        selection = art.selection
        frac = len(selection) / len(candidates) if candidates else 0.0
        variants.append((bm.Row(f"artifact ({len(selection)}/{len(candidates)} linear)", frac, len(selection),
                                len(candidates), selection), ("artifact", fixed)))
        selection_source = f"artifact {artifact}"
    else:
        say("finding attention sites")
        state = FindAttention().run(State(target=target, model=original))
        candidates_info = state.candidates
        if not candidates_info:
            raise LinCompressError("the model has no self- or joint-attention site to make linear; nothing to benchmark")
        fm = feature_map
        for t in target_values:
            if t == 0.0:
                continue  # the original row is the 0 % model
            chosen = heuristic_selection(candidates_info, t, select)
            variants.append((bm.Row(f"linear {t:g}", t, len(chosen), len(candidates_info), chosen),
                             ("uniform", (state.sites, chosen))))
        candidates = [s.name for s in candidates_info]
        selection_source = f"heuristic ({select})"

    settings = {
        "steps": steps, "batch_size": batch_size, "dtype": str(dt).replace("torch.", ""), "device": str(dev),
        "compile": use_compile, "warmup": warmup, "reps": reps, "sampling_reps": sampling_reps,
        "targets": target_values, "feature_map": fm, "selection": selection_source,
    }
    kwargs = bm.move_inputs(target.inputs(batch_size), dev, dt, keep_dtype=(target.timestep_key,))
    bm.cast_model(original, dev, dt)

    base = bm.Row("original", 0.0, 0, len(candidates), [])
    say(f"measuring the original on {bm.device_name(dev)}")
    _measure(base, original, kwargs, target, dev, settings)
    rows.append(base)
    for row, (kind, payload) in variants:
        say(f"measuring {row.variant}")
        if kind == "artifact":
            original.to("cpu")
            bm.release_memory(dev)
            bm.cast_model(payload, dev, dt)
            _measure(row, payload, kwargs, target, dev, settings)
        else:
            sites, chosen = payload
            with bm.fixed_in_place(original, sites, chosen, fm):
                _measure(row, original, kwargs, target, dev, settings)
        rows.append(row)
        bm.release_memory(dev)
    bm.fill_speedups(rows)
    if steps > 0:
        _, settings["sampler"] = bm.make_sampler(original, kwargs, target.latent_key, target.timestep_key,
                                                 target.scheduler, steps)
    return {
        "model": target.name,
        "model_py": str(Path(model_py).resolve()),
        "environment": bm.environment(dev),
        "settings": settings,
        "rows": [r.to_dict() for r in rows],
    }


def report_table(report: dict[str, Any]) -> Table:
    s = report["settings"]
    title = (f"{report['model']} on {report['environment']['device']}: {s['dtype']}, batch {s['batch_size']}, "
             f"{'compiled' if s['compile'] else 'eager'}, feature map {s['feature_map']}")
    table = Table(title=title)
    for col in ("model", "linear sites", "forward ms", "speed-up", f"{s['steps']}-step ms", "speed-up", "peak memory"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in report["rows"]:
        table.add_row(
            r["variant"], f"{r['num_linear']}/{r['num_candidates']}", bm.format_ms(r["forward_ms"]),
            bm.format_speedup(r["speedup_forward"]), bm.format_ms(r["sampling_ms"]),
            bm.format_speedup(r["speedup_sampling"]), bm.format_memory(r["peak_memory_bytes"]),
        )
    return table


@click.command("bench")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--artifact", type=click.Path(file_okay=False), default=None,
              help="Benchmark this artifact's fixed model (its layers) instead of uniform selections.")
@click.option("--targets", default=None,
              help=f"Comma-separated fractions of attention layers made linear (uniformly spread) [default: {DEFAULT_TARGETS}].")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile every model (compile time is reported, not timed).")
@click.option("--steps", type=int, default=8, show_default=True, help="Steps of the sampling loop (0: forward only).")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", *bm.DTYPES]), default="auto", show_default=True,
              help="auto: bf16 on CUDA, fp32 on CPU.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N (auto: cuda when available).")
@click.option("--feature-map", type=click.Choice(FEATURE_MAPS), default="hedgehog", show_default=True,
              help="Feature map of the linear sites (ignored with --artifact, which records its own).")
@click.option("--select", type=click.Choice(HEURISTICS), default="uniform", show_default=True,
              help="Which layers become linear for --targets.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed calls before timing.")
@click.option("--reps", type=int, default=10, show_default=True, help="Timed forwards (the median is reported).")
@click.option("--sampling-reps", type=int, default=3, show_default=True, help="Timed sampling loops.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=DEFAULT_JSON, show_default=True,
              help="Where to write the JSON report.")
def command(model_py: str, artifact: str | None, targets: str | None, use_compile: bool, steps: int, batch_size: int,
            dtype: str, device: str, feature_map: str, select: str, warmup: int, reps: int, sampling_reps: int,
            json_path: str) -> None:
    """Latency, speed-up and peak memory of MODEL_PY and its fixed linear-attention hybrids."""
    console = Console()
    report = run_bench(model_py, artifact, targets, use_compile, steps, batch_size, dtype, device, feature_map, select,
                       warmup, reps, sampling_reps, progress=console)
    console.print(report_table(report))
    path = atomic.write_json(Path(json_path), report)
    console.print(f"results written to {path}")
