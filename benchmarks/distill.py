"""Few-step distillation on the shipped shapes teacher: 4-step students against the teacher at its full step count (GPU).

Rows, per target fraction of linear attention (default 0.5 and 0.75):

    stage1     no distillation: SelectiveTransfer + Recover (ADM, stage 1), sampled at the teacher's steps
    stage1-4   the stage-1 model sampled in 4 steps without distillation training
    adm        stage 1, then Distill(distill_objective="adm") to 4 steps (ours)
    dmd2       stage 1, then Distill(distill_objective="dmd2") to 4 steps (the paper's choice)
    joint      one stage: SelectiveTransfer + Distill(dmd2) for stage-1 + distill steps ("joint collapses"?)

and once, independent of the target:

    teacher4   the original (softmax) teacher sampled in 4 steps, no training

Every row is the library's own pass pipeline (FindAttention, Hybridize, SelectiveTransfer,
Recover, Distill, Fix, Save), evaluated with ``lincompress.evaluation.evaluate`` from the
same noise and conditions: the teacher at ``--eval-steps`` Euler steps against the row's
model with its recorded sampler (4 steps on its own grid for a distilled row): world score
and its parts, PSNR / SSIM of the final samples, velocity error along the teacher's
trajectory. Goal: the 0.5-linear 4-step student at world score >= 0.95.

Rows are independent processes, so they can share one GPU::

    python benchmarks/distill.py --rows stage1 --targets 0.5 --work W --out R/d-stage1-0.5.json   # first: stage 1
    python benchmarks/distill.py --rows adm --targets 0.5 --work W --out R/d-adm-0.5.json &       # then in parallel:
    python benchmarks/distill.py --rows dmd2 --targets 0.5 --work W --out R/d-dmd2-0.5.json &     # they resume the
    python benchmarks/distill.py --rows stage1-4,teacher4 --targets 0.5 --work W --out R/d-4-0.5.json &  # finished stage 1
    wait; python benchmarks/distill.py --merge R/d-*.json --out benchmarks/results/distill.json

With ``--work`` the stage-1 run of a target lives in ``W/stage1-<target>`` and later rows
``--resume`` it (a finished stage is not trained again: ``lincompress``'s own resume);
without it each process trains its own (identical, same seed) stage 1. Each process prints
its rows' expected runtimes first, from one timed forward of the teacher. ``--smoke`` is a
seconds-long CPU check of the whole script (tiny settings; ``--model`` picks another model.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a bare checkout (the GPU machine) runs without installing
sys.path.insert(0, str(REPO / "benchmarks"))

from shapes_common import cell, device_name, synchronize  # noqa: E402
MODEL = REPO / "examples" / "shapes" / "model.py"

ROWS: dict[str, str] = {  # {n}: the student's steps
    "teacher4": "teacher, {n} steps, no training",
    "stage1": "no distillation (stage 1, teacher steps)",
    "stage1-4": "stage 1, {n} steps, no distillation training",
    "adm": "stage 1 + adm distillation",
    "dmd2": "stage 1 + dmd2 distillation",
    "joint": "one stage: selective transfer + dmd2",
}
WORLD_KEYS = ("colour_correct", "class_correct", "direction_correct", "world_score")
COMPARABLE = ("student_steps", "stage1_steps", "batch_size", "teacher_samples", "teacher_steps",
              "feature_map", "seed", "lr", "eval_samples", "eval_steps", "eval_seed", "model")
# settings only a distillation-training row reads: rows without one (teacher4, stage1, stage1-4) merge with any
DISTILL_SETTINGS = ("distill_steps", "distill_lr", "fake_lr", "fake_updates", "regression")
DISTILLING_ROWS = ("adm", "dmd2", "joint")


# --------------------------------------------------------------------------- running a row


def _training(args: argparse.Namespace) -> dict[str, Any]:
    """Training fields shared by both stages (RecoveryConfig's, which DistillConfig shares)."""
    return {"batch_size": args.batch_size, "samples": args.teacher_samples, "teacher_steps": args.teacher_steps,
            "seed": args.seed, "device": args.device, "lr": args.lr, "compare_without_recovery": False}


def _distill(args: argparse.Namespace, objective: str, steps: int, work: Path):
    """The stage; after a forked stage 1 it reuses that stage's teacher cache (``state.outputs["cache_dir"]``)."""
    from lincompress import passes

    return passes.Distill(student_steps=args.student_steps, distill_objective=objective, distill_steps=steps,
                          distill_lr=args.distill_lr, fake_lr=args.fake_lr, fake_updates=args.fake_updates,
                          distill_regression=args.regression, work_dir=work,
                          progress=False, **_training(args))


def _stage1(target_linear: float, args: argparse.Namespace, scratch: Path):
    """FindAttention .. Recover, resumed from ``--work`` when a finished (or partial) stage 1 is there."""
    from lincompress import Pipeline, passes
    from lincompress.target import load_target

    work = (args.work / f"stage1-{target_linear:g}") if args.work else scratch / f"stage1-{target_linear:g}"
    pipeline = Pipeline([
        passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map),
        passes.SelectiveTransfer(target_linear=target_linear),
        passes.Recover(objective="adm", steps=args.stage1_steps, work_dir=work,
                       resume="auto" if args.work is not None else False, progress=False, **_training(args)),
    ])
    return pipeline.run(load_target(args.model)), work


def _fork(state):
    """A copy of a pipeline state whose model can be trained on without touching the original's."""
    forked = copy.copy(state)
    forked.model = copy.deepcopy(state.model)
    forked.recipe, forked.metrics = list(state.recipe), copy.deepcopy(state.metrics)
    forked.modified_parameters, forked.outputs = set(state.modified_parameters), dict(state.outputs)
    forked.history = list(state.history)
    return forked


def run_rows(rows: list[str], target_linear: float | None, args: argparse.Namespace, scratch: Path) -> list[dict]:
    """The rows of one target (``teacher4`` with target None); stage 1 is trained once and shared."""
    from lincompress import Pipeline, passes
    from lincompress.target import load_target

    out = []
    stage1 = None
    for row in rows:
        tag = f"{row}-{target_linear if target_linear is not None else 'any'}"
        art = scratch / tag / "artifact"
        synchronize()
        start = time.perf_counter()
        try:
            if row == "teacher4":
                steps = [passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map),
                         passes.HeuristicSelect(target_linear=0.0), _distill(args, "dmd2", 0, scratch / tag / "work")]
                state = Pipeline([*steps, passes.Fix(), passes.Save(art, overwrite=True)]).run(load_target(args.model))
            elif row == "joint":
                state = Pipeline([
                    passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map),
                    passes.SelectiveTransfer(target_linear=target_linear),
                    _distill(args, "dmd2", args.stage1_steps + args.distill_steps, scratch / tag / "work"),
                    passes.Fix(), passes.Save(art, overwrite=True)]).run(load_target(args.model))
            else:
                if stage1 is None:
                    stage1 = _stage1(target_linear, args, scratch)
                state1, _ = stage1
                state = _fork(state1)
                steps = []
                if row == "stage1-4":
                    steps.append(_distill(args, "dmd2", 0, scratch / tag / "work"))
                elif row in ("adm", "dmd2"):
                    steps.append(_distill(args, row, args.distill_steps, scratch / tag / "work"))
                state = Pipeline([*steps, passes.Fix(), passes.Save(art, overwrite=True)]).run(state)
            synchronize()
            seconds = time.perf_counter() - start
            out.append(evaluate_row(row, target_linear, state, art, seconds, args, scratch / tag / "eval"))
        except Exception as exc:  # noqa: BLE001 - record the failure, run the rest
            out.append({"row": row, "target_linear": target_linear, "error": f"{type(exc).__name__}: {exc}"[:400]})
        r = out[-1]
        print(json.dumps({"row": row, "target_linear": target_linear, "seconds": r.get("pipeline_seconds"),
                          "world_score": (r.get("world") or {}).get("world_score"),
                          "psnr_db": (r.get("fidelity") or {}).get("psnr_db"), "error": r.get("error")}), flush=True)
    return out


def evaluate_row(row: str, target_linear: float | None, state, art: Path, seconds: float, args: argparse.Namespace,
                 eval_dir: Path) -> dict:
    from lincompress.evaluation import evaluate
    from lincompress.target import load_target

    results = evaluate(load_target(args.model), art, samples=args.eval_samples, steps=args.eval_steps,
                       seed=args.eval_seed, batch_size=args.eval_batch, device=device_name(args), out_dir=eval_dir,
                       pictures=False)
    distill = state.metrics.get("distillation") or {}
    scalars = lambda d: {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str)) or v is None}  # noqa: E731
    return {
        "row": row, "label": ROWS[row].format(n=args.student_steps), "target_linear": target_linear, "selection": state.selection,
        "num_linear": len(state.selection or []), "pipeline_seconds": round(seconds, 2),
        "sampler_steps": results["settings"]["student_sampler"]["steps"],
        "sampler_sigmas": results["settings"]["student_sampler"]["sigmas"],
        "fidelity": results["fidelity"], "world": (results.get("world") or {}).get("compressed"),
        "teacher_world": (results.get("world") or {}).get("teacher"),
        "recovery": scalars(state.metrics.get("recovery")), "distillation": scalars(distill),
    }


# --------------------------------------------------------------------------- expected runtimes


def forwards_per_step(row: str, args: argparse.Namespace) -> dict[str, float]:
    """Rough forward-equivalents of one training step (a forward with backward counts 3) of each stage."""
    n = args.student_steps
    stage1 = 2.5 * 3 + 3 + 1 + 3  # ADM: ~2.5 student steps with gradient, on-policy, teacher, regression
    regression = (n - 1) + 3 if (args.regression is None or args.regression > 0) else 0
    dmd2 = args.fake_updates * ((n + 1) / 2 + 3) + (n - 1) / 2 + 3 + 2 + regression
    adm = (n + 1) / 2 + 2 + 1 + 1 + regression
    return {"teacher4": {}, "stage1": {"stage1": stage1}, "stage1-4": {"stage1": stage1},
            "adm": {"stage1": stage1, "distill": adm}, "dmd2": {"stage1": stage1, "distill": dmd2},
            "joint": {"distill": dmd2 * 2}}[row]


def expected_seconds(row: str, args: argparse.Namespace, forward_s: float) -> float:
    """From one timed teacher forward at the training batch: training steps x forward-equivalents, plus eval."""
    costs = forwards_per_step(row, args)
    train = costs.get("stage1", 0.0) * args.stage1_steps
    if row == "joint":
        train = costs["distill"] * (args.stage1_steps + args.distill_steps)
    elif "distill" in costs:
        train += costs["distill"] * args.distill_steps
    if args.work is not None and row != "stage1":
        train -= costs.get("stage1", 0.0) * args.stage1_steps  # resumes the finished stage 1
    batches = math.ceil(args.eval_samples / args.eval_batch)
    evaluation = batches * (2 * args.eval_steps + args.student_steps) * (args.eval_batch / args.batch_size)
    return forward_s * (train + evaluation) + 10.0  # + loading, teacher cache, saving


@torch.no_grad()
def time_forward(args: argparse.Namespace) -> float:
    from lincompress.target import load_target

    target = load_target(args.model)
    device = torch.device(device_name(args))
    model = target.model.to(device).eval()
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in target.inputs(args.batch_size).items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(2):
            model(**kwargs)
        synchronize()
        start = time.perf_counter()
        for _ in range(5):
            model(**kwargs)
        synchronize()
    model.to("cpu")
    return (time.perf_counter() - start) / 5


# --------------------------------------------------------------------------- output



def markdown_table(payload: dict) -> str:
    head = ["target", "row", "steps", "vel. rel-MSE", "PSNR dB", "SSIM", "colour", "shape", "direction", "world", "s"]
    lines = [f"{payload['device']}; teacher at {payload['settings']['eval_steps']} steps; s = training + saving seconds of "
             "the row (a shared stage 1 is counted in the stage1 row only)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = list(ROWS)
    for r in sorted(payload["runs"], key=lambda r: (r["target_linear"] or 0.0, order.index(r["row"]))):
        target = "-" if r["target_linear"] is None else f"{r['target_linear']:g}"
        if "error" in r:
            lines.append(f"| {target} | {r['row']} | " + " | ".join("-" for _ in range(8)) + f" | {r['error'][:60]} |")
            continue
        f, w = r["fidelity"], r["world"] or {}
        lines.append(f"| {target} | {r['label']} | {r['sampler_steps']} | {cell(f['velocity_rel_mse'])} | "
                     f"{cell(f['psnr_db'])} | {cell(f['ssim'])} | " + " | ".join(cell(w.get(k)) for k in WORLD_KEYS)
                     + f" | {cell(r['pipeline_seconds'])} |")
    return "\n".join(lines)


def _comparable(key: str, value: Any) -> Any:
    """A setting as rows compare it: the model by its folder and file name, so checkouts at other paths merge."""
    return Path(value).parts[-2:] if key == "model" and value is not None else value


def merge(paths: list[Path], out: Path) -> dict:
    """Join the result files of separate processes (same settings); later files win per (row, target)."""
    from lincompress import atomic

    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    distilling = [(path, part) for path, part in zip(paths, parts)
                  if any(run["row"] in DISTILLING_ROWS for run in part["runs"])]
    for path, part in zip(paths, parts):
        differ = [k for k in COMPARABLE if _comparable(k, part["settings"].get(k)) != _comparable(k, first["settings"].get(k))]
        if differ:
            raise SystemExit(f"{path}: setting {differ[0]!r} differs from {paths[0]}; the rows are not comparable")
    for path, part in distilling:
        ref_path, ref = distilling[0]
        differ = [k for k in DISTILL_SETTINGS if part["settings"].get(k) != ref["settings"].get(k)]
        if differ:
            raise SystemExit(f"{path}: setting {differ[0]!r} differs from {ref_path}; the distillation rows are not comparable")
    if distilling:  # the merged file's settings are those the distillation rows ran with
        first = {**first, "settings": {**first["settings"], **{k: distilling[0][1]["settings"].get(k) for k in DISTILL_SETTINGS}}}
    runs: dict[tuple, dict] = {}
    for part in parts:
        for run in part["runs"]:
            runs[(run["row"], run["target_linear"])] = run
    payload = {**first, "runs": list(runs.values()), "merged_from": [str(p) for p in paths],
               "elapsed_seconds": round(sum(p.get("elapsed_seconds", 0.0) for p in parts), 1)}
    payload["table_md"] = markdown_table(payload)
    atomic.write_json(out, payload)
    print(payload["table_md"])
    return payload


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--targets", default="0.5,0.75")
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--student-steps", type=int, default=4)
    p.add_argument("--stage1-steps", type=int, default=200, help="stage-1 (selective transfer + ADM) steps")
    p.add_argument("--distill-steps", type=int, default=200, help="distillation steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5, help="stage-1 learning rate (RecoveryConfig's default)")
    p.add_argument("--distill-lr", type=float, default=5e-5)
    p.add_argument("--fake-lr", type=float, default=None, help="[default: --distill-lr]")
    p.add_argument("--fake-updates", type=int, default=5)
    p.add_argument("--regression", type=float, default=None, help="pair-regression weight [default: the library's]")
    p.add_argument("--teacher-samples", type=int, default=32, help="cached teacher trajectories (the regression pairs)")
    p.add_argument("--teacher-steps", type=int, default=20, help="teacher steps of those trajectories")
    p.add_argument("--feature-map", default="hedgehog")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--eval-steps", type=int, default=20, help="the teacher's (full) step count in the evaluation")
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--device", default=None)
    p.add_argument("--work", type=Path, default=None, help="keep stage 1 here and resume it across processes")
    p.add_argument("--smoke", action="store_true", help="tiny settings on the CPU: checks the script, measures nothing")
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="join these result files into --out and stop")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distill.json")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        p.error(f"unknown --rows {unknown[0]!r}; choose from {', '.join(ROWS)}")
    if args.smoke:
        args.device = "cpu"
        args.stage1_steps, args.distill_steps, args.batch_size, args.fake_updates = 1, 1, 1, 1
        args.teacher_samples, args.teacher_steps, args.student_steps = 1, 2, 2
        args.eval_samples, args.eval_steps, args.eval_batch = 1, 3, 1
    targets = [float(t) for t in args.targets.split(",")]

    forward_s = time_forward(args)
    print(f"one teacher forward at batch {args.batch_size}: {forward_s * 1e3:.2f} ms on {device_name(args)}; "
          "expected runtime per row:", flush=True)
    for row in rows:
        for t in ([None] if row == "teacher4" else targets):
            label = "" if t is None else f" @ {t:g}"
            print(f"  {row}{label}: ~{expected_seconds(row, args, forward_s):.0f} s", flush=True)

    start = time.perf_counter()
    payload = {
        "device": torch.cuda.get_device_name() if device_name(args).startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "smoke": args.smoke, "forward_ms": round(forward_s * 1e3, 3),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "expected_seconds": {f"{row}@{t}": round(expected_seconds(row, args, forward_s), 1)
                             for row in rows for t in ([None] if row == "teacher4" else targets)},
        "runs": [],
    }

    def write() -> None:
        from lincompress import atomic

        payload["elapsed_seconds"] = round(time.perf_counter() - start, 1)
        payload["table_md"] = markdown_table(payload)
        atomic.write_json(args.out, payload)

    with tempfile.TemporaryDirectory(prefix="lincompress-distill-") as tmp:
        if "teacher4" in rows:
            payload["runs"] += run_rows(["teacher4"], None, args, Path(tmp))
            write()
        for t in targets:
            payload["runs"] += run_rows([r for r in rows if r != "teacher4"], t, args, Path(tmp))
            write()
    write()
    print(payload["table_md"])
    return payload


if __name__ == "__main__":
    main()
