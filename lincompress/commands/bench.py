"""``lincompress bench model.py [--artifact DIR]``: ``lincompress.bench`` as a command.

In one run, with one set of settings, it measures the original model and a fixed
hybrid per target (or the artifact's fixed model): the median latency (with min-max and
quartiles; a warning when they spread wide) of one denoiser forward, of a full N-step
flow-matching sampling loop, and the peak device memory of a forward. A guided teacher
runs 2 denoiser forwards per sampler step and a guidance-distilled artifact 1, so rows
also show forwards and milliseconds per step. It prints a table and writes everything
(device, versions, settings, rows) as JSON. Every ``BenchConfig`` and ``TargetOptions``
field is a flag (an artifact's model.py is rebuilt at its recorded resolution and prompts
unless ``--height``... say otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from lincompress import atomic
from lincompress import benchmarking as bm
from lincompress.commands._options import config_options, given
from lincompress.config import Arg, literal
from lincompress.outputs import OutputError, check_location
from lincompress.target import TargetOptions

DEFAULT_JSON = "lincompress-bench.json"


def report_table(report: dict[str, Any]) -> Table:
    s = report["settings"]
    title = (f"{report['model']} on {report['environment']['device']}: {s['dtype']}, batch {s['batch_size']}, "
             f"{'compiled' if s['compile'] else 'eager'}, feature map {s['feature_map']}")
    table = Table(title=title, caption="ms: median ± half the interquartile range of the timed calls (min, max, "
                                       "quartiles in the JSON); ! marks a spread too wide to trust")
    for col in ("model", "linear sites", "forward ms", "fwd/step", "step ms", "speed-up", f"{s['steps']}-step ms",
                "speed-up", "peak memory"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in report["rows"]:
        table.add_row(
            r["variant"], f"{r['num_linear']}/{r['num_candidates']}", bm.format_timing(r["forward"]),
            str(r["forwards_per_step"]), bm.format_ms(r["step_ms"]), bm.format_speedup(r["speedup_step"]),
            bm.format_timing(r["sampling"]),
            bm.format_speedup(r["speedup_sampling"]), bm.format_memory(r["peak_memory_bytes"]),
        )
    return table


def _check_json(path: Path) -> None:
    """The report may replace an earlier report of ours, never another file."""
    check_location(path, "json_path", kind="file")
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    ours = isinstance(data, dict) and (data.get("format") == bm.REPORT_FORMAT
                                       or {"environment", "settings", "rows"} <= set(data))  # or an older report
    if not ours:
        raise OutputError(f"{literal(path)} exists and is not a lincompress bench report; choose another {{}}",
                          Arg("json_path"))


@click.command("bench")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--artifact", type=click.Path(file_okay=False), default=None,
              help="Benchmark this artifact's fixed model (its layers) instead of uniform selections.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=DEFAULT_JSON, show_default=True,
              help="Where to write the JSON report.")
@config_options(bm.BenchConfig, TargetOptions)
def command(model_py: str, artifact: str | None, json_path: str, **options: Any) -> None:
    """Latency, speed-up and peak memory of MODEL_PY and its fixed linear-attention hybrids."""
    console = Console()
    _check_json(Path(json_path))  # before any work
    report = bm.bench(model_py, artifact=artifact, log=console.log, **given(options))
    console.print(report_table(report))
    path = atomic.write_json(Path(json_path), report)
    console.print(f"results written to {path}")
