"""``report.md`` of a recovery run: final selection, loss curves and r trajectories (PNG).

Plots use matplotlib's object API (``matplotlib.figure.Figure``, no pyplot): the user's
backend and pyplot's global figure state are never touched.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lincompress import atomic

REPORT_MD = "report.md"
LOSS_PNG = "recovery_loss.png"
SCORES_PNG = "selection_scores.png"
METRICS_JSONL = "metrics.jsonl"  # the trainer's per-step log
REPORT_FILES = (REPORT_MD, LOSS_PNG, SCORES_PNG, METRICS_JSONL)  # what passes.Report copies into the artifact


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _plots(records: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Write the plots; returns the file names written (none when matplotlib is missing)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    written = []
    steps = [r["step"] for r in records]
    keys = [k for k in ("loss", "objective", "constraint", "binarize", "velocity_gap") if any(k in r for r in records)]
    if steps and keys:
        fig = Figure(figsize=(7, 3.6))
        ax = fig.subplots()
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, lw=1)
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.legend(fontsize=8)
        ax.set_title("recovery losses")
        atomic.write_bytes(out_dir / LOSS_PNG, _png(fig))
        written.append(LOSS_PNG)
    score_records = [r for r in records if "scores" in r]
    if score_records:
        fig = Figure(figsize=(7, 3.6))
        ax = fig.subplots()
        names = list(score_records[0]["scores"])
        for name in names:
            ax.plot([r["step"] for r in score_records], [r["scores"].get(name) for r in score_records], lw=1, label=name)
        if len(names) <= 12:
            ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.set_xlabel("step")
        ax.set_ylabel("r (1 = softmax, 0 = linear)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("selective transfer: per-site scores")
        atomic.write_bytes(out_dir / SCORES_PNG, _png(fig))
        written.append(SCORES_PNG)
    return written


def write_report(out_dir: str | Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """``summary``: sites (names in model order), selection, final_scores, frozen_at, settings, metrics."""
    out_dir = Path(out_dir)
    plots = _plots(records, out_dir)
    selection = set(summary.get("selection") or [])
    scores = summary.get("final_scores") or {}
    frozen = summary.get("frozen_at") or {}
    lines = [f"# lincompress recovery report: {summary.get('name', 'model')}", ""]
    metrics = summary.get("metrics", {})
    lines += [f"- {k}: {v}" for k, v in metrics.items()]
    lines += ["", "## Final selection", "",
              f"{len(selection)} of {len(summary.get('sites', []))} candidate attention sites are linear.", "",
              "| site | final | r | frozen at step |", "|---|---|---|---|"]
    for name in summary.get("sites", []):
        r = scores.get(name)
        lines.append(f"| `{name}` | {'linear' if name in selection else 'softmax'} | "
                     f"{'-' if r is None else f'{r:.3f}'} | {frozen.get(name, '-')} |")
    if LOSS_PNG in plots:
        lines += ["", "## Loss", "", f"![loss curves]({LOSS_PNG})"]
    if SCORES_PNG in plots:
        lines += ["", "## Selection scores", "", f"![r trajectories]({SCORES_PNG})"]
    if not plots:
        lines += ["", "(plots need matplotlib: `pip install lincompress[report]`)"]
    lines += ["", "## Settings", "", "```", *(f"{k}: {v}" for k, v in summary.get("settings", {}).items()), "```", ""]
    return atomic.write_text(out_dir / REPORT_MD, "\n".join(lines))
