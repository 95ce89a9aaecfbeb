"""LinVideo's ablations on the shipped shapes teacher (GPU; runs on CPU too, slowly).

For each target fraction of linear attention (default 0.5, 0.75, 1.0) and each variant

    a  no recovery            uniform heuristic selection, untrained feature maps
    b  heuristic + ADM        uniform heuristic selection, Recover("adm")
    c  selective + MSE        SelectiveTransfer, Recover("mse")
    d  selective + FM         SelectiveTransfer, Recover("fm")
    e  selective + ADM        SelectiveTransfer, Recover("adm")      (LinVideo)

the script runs the pass pipeline with one step budget and one seed for all variants,
saves the artifact, and evaluates it with ``lincompress.evaluation.evaluate`` (same
noise and conditions for every variant: velocity error, PSNR / SSIM against the
teacher, the world's analytic metrics). It prints a markdown table and writes JSON.

    python benchmarks/ablation.py --steps 300 --out benchmarks/results/ablation.json

``--max-seconds`` stops starting new runs once the budget is spent; runs not made are
listed in the JSON as ``"not_run"``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a bare checkout (the GPU machine) runs without installing
sys.path.insert(0, str(REPO / "benchmarks"))

from shapes_common import cell  # noqa: E402
MODEL = REPO / "examples" / "shapes" / "model.py"

VARIANTS = {
    "a": ("no recovery", "uniform", None),
    "b": ("heuristic + ADM", "uniform", "adm"),
    "c": ("selective + MSE", "selective", "mse"),
    "d": ("selective + FM", "selective", "fm"),
    "e": ("selective + ADM", "selective", "adm"),
}
TABLE_METRICS = (
    ("velocity_rel_mse", "vel. rel-MSE", "fidelity"), ("psnr_db", "PSNR dB", "fidelity"), ("ssim", "SSIM", "fidelity"),
    ("colour_correct", "colour", "world"), ("class_correct", "shape", "world"), ("direction_correct", "direction", "world"),
    ("smoothness_px", "jitter px", "world"), ("temporal_consistency", "consistency", "world"), ("world_score", "world", "world"),
)


def build_pipeline(variant: str, target_linear: float, args: argparse.Namespace, art_dir: Path, work_dir: Path):
    from lincompress import Pipeline, passes

    _, selection, objective = VARIANTS[variant]
    steps = [passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map)]
    if selection == "uniform":
        steps.append(passes.HeuristicSelect(target_linear=target_linear, strategy="uniform"))
    else:
        steps.append(passes.SelectiveTransfer(target_linear=target_linear))
    if objective is not None:
        steps.append(passes.Recover(objective=objective, steps=args.steps, work_dir=work_dir, progress=False,
                                    batch_size=args.batch_size, samples=args.teacher_samples, seed=args.seed,
                                    device=args.device, compare_without_recovery=False,
                                    objective_options=args.adm_options if objective == "adm" else {},
                                    **args.recover_options))
    steps += [passes.Fix(), passes.Save(art_dir, overwrite=True)]
    return Pipeline(steps)


def run_one(variant: str, target_linear: float, args: argparse.Namespace, scratch: Path) -> dict:
    from lincompress.evaluation import evaluate
    from lincompress.target import load_target

    torch.manual_seed(args.seed)
    target = load_target(MODEL)
    tag = f"{variant}-{target_linear:g}"
    art_dir, work_dir = scratch / tag / "artifact", scratch / tag / "work"
    pipeline = build_pipeline(variant, target_linear, args, art_dir, work_dir)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    state = pipeline.run(target)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start
    results = evaluate(load_target(MODEL), art_dir, samples=args.eval_samples, steps=args.eval_steps, seed=args.eval_seed,
                       batch_size=args.eval_batch, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                       out_dir=scratch / tag / "eval", pictures=False)
    recovery = state.metrics.get("recovery", {})
    return {
        "variant": variant, "label": VARIANTS[variant][0], "target_linear": target_linear,
        "selection": state.selection, "num_linear": len(state.selection or []),
        "pipeline_seconds": round(train_seconds, 2),
        "recovery_metrics": {k: v for k, v in recovery.items() if isinstance(v, (int, float, str)) or v is None},
        "fidelity": results["fidelity"], "world": results["world"]["compressed"],
        "teacher_world": results["world"]["teacher"], "per_timestep": results["per_timestep"],
    }



def markdown_table(runs: list[dict], teacher: dict | None) -> str:
    head = ["target", "variant"] + [label for _, label, _ in TABLE_METRICS] + ["linear sites", "time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if teacher:
        lines.append("| - | teacher | 0 | inf | 1 | " + " | ".join(cell(teacher.get(k)) for k, _, src in TABLE_METRICS
                                                            if src == "world") + " | 0 | - |")
    for r in runs:
        if "error" in r or "not_run" in r:
            lines.append(f"| {r['target_linear']:g} | ({r['variant']}) {VARIANTS[r['variant']][0]} | "
                         + " | ".join("-" for _ in TABLE_METRICS) + f" | - | {r.get('error', 'not run')} |")
            continue
        values = [cell(r[src][k]) for k, _, src in TABLE_METRICS]
        sites = ",".join(s.split(".")[-2] if "." in s else s for s in (r["selection"] or []))
        lines.append(f"| {r['target_linear']:g} | ({r['variant']}) {r['label']} | " + " | ".join(values)
                     + f" | {sites} | {r['pipeline_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="0.5,0.75,1.0")
    p.add_argument("--variants", default="abcde")
    p.add_argument("--steps", type=int, default=300, help="recovery steps, the same for every variant")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--teacher-samples", type=int, default=32, help="teacher trajectories cached for recovery")
    p.add_argument("--feature-map", default="hedgehog")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--device", default=None)
    p.add_argument("--adm-options", type=json.loads, default={},
                   help='ADM settings for the ADM variants, as JSON, e.g. \'{"onpolicy": 1.0, "grad_steps": 4}\'')
    p.add_argument("--recover-options", type=json.loads, default={},
                   help="more Recover/RecoveryConfig options for every trained variant, as JSON (e.g. lr_feature_maps)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); for parallel runs")
    p.add_argument("--max-seconds", type=float, default=float("inf"), help="start no new run after this much wall time")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ablation.json")
    args = p.parse_args()

    targets = [float(t) for t in args.targets.split(",")]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs: list[dict] = []
    teacher_world = None
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": settings,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "torch": torch.__version__, "teacher_world": teacher_world, "runs": runs,
            "elapsed_seconds": round(time.perf_counter() - start, 1),
        }
        args.out.write_text(json.dumps(payload, indent=2))

    with tempfile.TemporaryDirectory(prefix="lincompress-ablation-") as tmp:
        for target_linear in targets:
            for variant in args.variants:
                if time.perf_counter() - start > args.max_seconds:
                    runs.append({"variant": variant, "target_linear": target_linear, "not_run": "time budget spent"})
                    continue
                t0 = time.perf_counter()
                try:
                    record = run_one(variant, target_linear, args, Path(tmp))
                except Exception as exc:  # noqa: BLE001 - record the failure and go on with the other variants
                    record = {"variant": variant, "target_linear": target_linear, "error": f"{type(exc).__name__}: {exc}"[:300]}
                runs.append(record)
                teacher_world = teacher_world or record.get("teacher_world")
                print(json.dumps({k: record.get(k) for k in ("variant", "target_linear", "fidelity", "error")}
                                 | {"world_score": record.get("world", {}).get("world_score"),
                                    "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
                write()
    write()
    print(markdown_table(runs, teacher_world))


if __name__ == "__main__":
    sys.exit(main())
