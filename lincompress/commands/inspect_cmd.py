"""``lincompress inspect model.py``: the attention sites found, as a table or JSON."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from lincompress.commands._target import pop_target_options, target_lines, target_options, warn_resolution
from lincompress.pipeline import State
from lincompress.target import TargetOptions, load_target, target_summary


def sites_table(state: State) -> Table:
    table = Table(title=f"{state.target.name}: {len(state.sites)} attention sites (traced with {state.trace_method})")
    for col in ("site", "module", "kind", "candidate", "heads", "head_dim", "q_len", "kv_len", "FLOPs share"):
        table.add_column(col, justify="right" if col in ("heads", "head_dim", "q_len", "kv_len", "FLOPs share") else "left")
    for s in state.sites:
        table.add_row(s.name, s.owner_class, s.kind, "yes" if s.candidate else "no", str(s.num_heads), str(s.head_dim),
                      str(s.q_len), str(s.kv_len), f"{100 * s.flops_share:.1f}%")
    return table


@click.command("inspect")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@target_options()
def command(model_py: str, as_json: bool, **options) -> None:
    """Trace MODEL_PY and list its attention sites (self/cross/joint, shapes, FLOPs share)."""
    from lincompress.passes import FindAttention

    target = load_target(model_py, TargetOptions(**pop_target_options(options)))
    warn_resolution(Console(stderr=True), target)  # before tracing, which takes a while at a pipeline's default size
    state = FindAttention().run(State(target=target, model=target.model))
    if as_json:
        click.echo(json.dumps({"model": target.name, "trace_method": state.trace_method,
                               "sites": [s.to_dict() | {"candidate": s.candidate} for s in state.sites],
                               "target": target_summary(target, flags=True)}, indent=2))
        return
    console = Console()
    console.print(sites_table(state))
    for line in target_lines(target):
        console.print(line, markup=False)
    share = sum(s.flops_share for s in state.candidates)
    console.print(f"{len(state.candidates)} candidate sites (self/joint) hold {100 * share:.1f}% of the forward FLOPs.")
