"""``lincompress inspect model.py``: the attention sites found, as a table or JSON.

Says how the model was read (torch.fx, torch.export, or one eager forward when no graph
could be built, and why), which sites are candidates and why the others are not, the
token counts attention runs over, and each site's share of the forward's FLOPs.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from lincompress.commands._target import pop_target_options, target_lines, target_options, warn_resolution
from lincompress.discovery import SiteInfo, find_attention_sites, token_summary
from lincompress.graph import TracedGraph, trace_model
from lincompress.target import Target, TargetOptions, load_target, target_summary

_METHOD_TEXT = {"fx": "torch.fx", "export": "torch.export", "eager": "one eager forward (no graph could be built)"}


def why_not_candidate(site: SiteInfo) -> str:
    """Why a site stays softmax, in a few words ("" for candidates)."""
    if site.candidate:
        return "included" if site.included and (site.kind == "cross" or not site.sure) else ""
    if site.causal:
        return "causal"
    if site.pattern == "mha":
        return "nn.MultiheadAttention"
    if site.mask not in ("", "padding"):
        return f"{site.mask} mask"
    if not site.sure:
        return "unsure"
    return "cross-attention"


def report(target: Target, traced: TracedGraph, sites: list[SiteInfo]) -> dict[str, Any]:
    """What ``inspect`` prints, as data (``--json`` prints exactly this)."""
    latent = target.inputs(1).get(target.latent_key)
    candidates = [s for s in sites if s.candidate]
    return {
        "model": target.name,
        "trace_method": traced.method,
        "fallback_reasons": dict(traced.fallback_reasons),
        "tokens": {"latent_key": target.latent_key,
                   "latent_shape": list(latent.shape) if hasattr(latent, "shape") else None,
                   "query_tokens": token_summary(sites)},
        "candidate_flops_share": sum(s.flops_share for s in candidates),
        "sites": [s.to_dict() | {"candidate": s.candidate, "why_not": why_not_candidate(s)} for s in sites],
        "target": target_summary(target, flags=True),
    }


def render(data: dict[str, Any], console: Console) -> None:
    sites = data["sites"]
    table = Table(title=f"{data['model']}: {len(sites)} attention sites (read with {data['trace_method']})")
    for col in ("site", "module", "kind", "candidate", "heads", "head_dim", "q_len", "kv_len", "FLOPs share"):
        table.add_column(col, justify="right" if col in ("heads", "head_dim", "q_len", "kv_len", "FLOPs share") else "left")
    for s in sites:
        candidate = "yes" if s["candidate"] else "no"
        if s["why_not"]:
            candidate += f" ({s['why_not']})"
        table.add_row(s["name"], s["owner_class"], s["kind"], candidate, str(s["num_heads"]), str(s["head_dim"]),
                      str(s["q_len"]), str(s["kv_len"]), f"{100 * s['flops_share']:.1f}%")
    console.print(table)
    console.print(f"Read with {_METHOD_TEXT[data['trace_method']]}.")
    for method, reason in data["fallback_reasons"].items():
        console.print(f"  {method} could not: {reason}", markup=False)
    tokens = data["tokens"]
    if tokens["latent_shape"] is not None:
        runs = ", ".join(f"{n} ({kind})" for kind, n in tokens["query_tokens"].items())
        console.print(f"Latent {tokens['latent_key']} {'x'.join(map(str, tokens['latent_shape']))}; attention runs "
                      f"over {runs} query tokens.", markup=False)
    for s in sites:
        if s["note"]:
            console.print(f"  {s['name']}: {s['note']}", markup=False)
    unsure = [s["name"] for s in sites if not s["sure"] and not s["candidate"]]
    if unsure:
        console.print(f"Unsure of {', '.join(unsure)}: left softmax; name them with --include to linearise them.",
                      markup=False)
    n = sum(1 for s in sites if s["candidate"])
    console.print(f"{n} candidate sites (self/joint) hold {100 * data['candidate_flops_share']:.1f}% of the forward FLOPs.")


@click.command("inspect")
@click.argument("model_py", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--include", "include", multiple=True, metavar="SITE",
              help="Make SITE a candidate whatever discovery decided (e.g. an unsure site); repeatable.")
@target_options()
def command(model_py: str, as_json: bool, include: tuple[str, ...], **options) -> None:
    """Trace MODEL_PY and list its attention sites (self/cross/joint, shapes, tokens, FLOPs share)."""
    target = load_target(model_py, TargetOptions(**pop_target_options(options)))
    warn_resolution(target)  # before tracing, which takes a while at a pipeline's default size
    traced = trace_model(target.model, target.inputs(1))
    data = report(target, traced, find_attention_sites(target, traced, include=include))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    render(data, console)
    for line in target_lines(target):
        console.print(line, markup=False)
