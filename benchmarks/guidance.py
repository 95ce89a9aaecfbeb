"""Guided teacher vs student ``cfg`` vs student ``distilled`` on the shipped shapes teacher (GPU; CPU with --smoke).

The shapes teacher samples with classifier-free guidance at the scale it was tuned for
(its weights' metadata, ``examples/shapes/train_teacher.py --cond-dropout ... --guidance-sweep``).
For each target fraction of linear attention (default 0.5 and 0.75) and each student
guidance mode, the script runs the standard recipe -- FindAttention, Hybridize,
SelectiveTransfer, Recover (ADM) with ``student_guidance=cfg|distilled``, Fix, Save --
and evaluates the artifact with ``lincompress.evaluation.evaluate`` against the *guided*
teacher from the same noise and conditions:

* ``cfg``: the student keeps CFG: two denoiser forwards per sampler step;
* ``distilled``: one forward per step learns the guided velocity (half the forwards).

Reported per run: the world score and its parts, PSNR / SSIM against the guided
teacher's samples, the velocity error along the teacher's trajectory, denoiser forwards
per step. Also the guided and the unguided teacher's own world scores (same noise).

    python benchmarks/guidance.py --targets 0.5 --out benchmarks/results/guidance.json
    python benchmarks/guidance.py --targets 0.75 --out benchmarks/results/guidance.json   # merges

Runs already in ``--out`` (same target and mode) are kept unless ``--rerun``; the JSON is
rewritten after every run. Separate runs (e.g. one per target and mode, each well inside
a 10-minute job) are joined with ``--merge a.json b.json ... --out all.json``, which
checks they used the same teacher scale and settings. ``--smoke`` is a seconds-long CPU
check of the whole script.
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

from shapes_common import cell, device_name, synchronize  # noqa: E402
MODEL = REPO / "examples" / "shapes" / "model.py"
MODES = ("cfg", "distilled")
WORLD_KEYS = ("colour_correct", "class_correct", "direction_correct", "world_score")


def load_target(scale: float | None):
    import dataclasses

    from lincompress.target import load_target as load

    target = load(MODEL)
    if scale is not None:
        target = dataclasses.replace(target, guidance_scale=scale, extras=dict(target.extras))
    return target


def run_one(target_linear: float, mode: str, args: argparse.Namespace, scratch: Path) -> dict:
    from lincompress import Pipeline, passes
    from lincompress.evaluation import evaluate
    from lincompress.guidance import GuidanceConfig

    torch.manual_seed(args.seed)
    target = load_target(args.guidance_scale)
    tag = f"{target_linear:g}-{mode}"
    art_dir, work_dir = scratch / tag / "artifact", scratch / tag / "work"
    pipeline = Pipeline([
        passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map),
        passes.SelectiveTransfer(target_linear=target_linear),
        passes.Recover(objective="adm", steps=args.steps, work_dir=work_dir, progress=False, batch_size=args.batch_size,
                       samples=args.teacher_samples, teacher_steps=args.teacher_steps, seed=args.seed,
                       device=args.device, compare_without_recovery=False, student_guidance=mode),
        passes.Fix(), passes.Save(art_dir, overwrite=True),
    ])
    synchronize()
    start = time.perf_counter()
    state = pipeline.run(target)
    synchronize()
    seconds = time.perf_counter() - start
    guidance = GuidanceConfig(scale=target.teacher_guidance_scale, negative_prompt="", student=mode)
    results = evaluate(load_target(args.guidance_scale), art_dir, samples=args.eval_samples, steps=args.eval_steps,
                       seed=args.eval_seed, batch_size=args.eval_batch, device=device_name(args),
                       out_dir=scratch / tag / "eval", pictures=False, guidance=guidance)
    return {
        "target_linear": target_linear, "mode": mode, "selection": state.selection,
        "num_linear": len(state.selection or []), "pipeline_seconds": round(seconds, 2),
        "guidance": results["settings"]["guidance"], "fidelity": results["fidelity"],
        "world": results["world"]["compressed"], "teacher_world": results["world"]["teacher"],
        "recovery": {k: v for k, v in state.metrics.get("recovery", {}).items() if isinstance(v, (int, float, str))},
    }


@torch.no_grad()
def unguided_teacher_world(args: argparse.Namespace) -> dict:
    """The teacher at scale 1 on the evaluation's conditions and noise (the same draws ``evaluate`` makes)."""
    from lincompress.recovery.sampling import ModelCaller, euler_sample, sigma_grid

    target = load_target(1.0)
    world = target.extras["world"]
    device = torch.device(device_name(args))
    model = target.model.to(device).eval()
    generator = torch.Generator().manual_seed(args.eval_seed)
    conditions = world.sample_conditions(args.eval_samples, generator)
    cond = world.condition_inputs(conditions)
    noise = torch.randn(args.eval_samples, *target.latent_shape, generator=generator)
    caller, sigmas = ModelCaller(target, target.scheduler), sigma_grid(target.scheduler, args.eval_steps)
    finals = []
    for lo in range(0, args.eval_samples, args.eval_batch):
        c = {k: v[lo:lo + args.eval_batch].to(device) for k, v in cond.items()}
        finals.append(euler_sample(lambda x, s, c=c: caller(model, x, s, c).float(),
                                   noise[lo:lo + args.eval_batch].to(device), sigmas).cpu())
    scores = world.score(world.to_frames(torch.cat(finals)), conditions)
    return {k: sum(v) / len(v) for k, v in scores.items()}



def markdown_table(payload: dict) -> str:
    head = ["target", "model", "forwards/step", "vel. rel-MSE", "PSNR dB", "SSIM", "colour", "shape", "direction", "world"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scale = payload.get("guidance_scale")
    for label, world in ((f"teacher, CFG {cell(scale)} (reference)", payload.get("teacher_world")),
                         ("teacher, unguided", payload.get("teacher_unguided_world"))):
        if world:
            forwards = "2" if "CFG" in label else "1"
            lines.append(f"| - | {label} | {forwards} | 0 | inf | 1 | " + " | ".join(cell(world.get(k)) for k in WORLD_KEYS) + " |")
    for r in sorted(payload["runs"], key=lambda r: (r["target_linear"], MODES.index(r["mode"]))):
        if "error" in r:
            lines.append(f"| {r['target_linear']:g} | student {r['mode']} | - | " + " | ".join("-" for _ in range(7))
                         + f" | {r['error'][:60]} |")
            continue
        f, w = r["fidelity"], r["world"]
        lines.append(f"| {r['target_linear']:g} | student {r['mode']} | {r['guidance']['student_forwards_per_step']} | "
                     f"{cell(f['velocity_rel_mse'])} | {cell(f['psnr_db'])} | {cell(f['ssim'])} | "
                     + " | ".join(cell(w.get(k)) for k in WORLD_KEYS) + " |")
    return "\n".join(lines)


COMPARABLE = ("steps", "batch_size", "teacher_samples", "teacher_steps", "feature_map", "seed", "eval_samples",
              "eval_steps", "eval_seed")


def merge(paths: list[Path], out: Path) -> dict:
    """Join result files of separate runs (same teacher scale and settings); later files win per (target, mode)."""
    from lincompress import atomic

    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    for path, part in zip(paths, parts):
        if part.get("guidance_scale") != first.get("guidance_scale"):
            raise SystemExit(f"{path}: teacher guidance scale {part.get('guidance_scale')} != {first.get('guidance_scale')}")
        differ = [k for k in COMPARABLE if part["settings"].get(k) != first["settings"].get(k)]
        if differ:
            raise SystemExit(f"{path}: setting {differ[0]!r} differs from {paths[0]}; runs are not comparable")
    runs: dict[tuple, dict] = {}
    for part in parts:
        for run in part["runs"]:
            runs[(run["target_linear"], run["mode"])] = run
    payload = {**first, "runs": list(runs.values()), "merged_from": [str(p) for p in paths],
               "teacher_world": next((p["teacher_world"] for p in parts if p.get("teacher_world")), None),
               "teacher_unguided_world": next((p["teacher_unguided_world"] for p in parts if p.get("teacher_unguided_world")), None),
               "elapsed_seconds": round(sum(p.get("elapsed_seconds", 0.0) for p in parts), 1)}
    atomic.write_json(out, payload)
    print(markdown_table(payload))
    return payload


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="0.5,0.75")
    p.add_argument("--modes", default="cfg,distilled")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="teacher CFG scale [default: the one the shipped teacher was tuned for]")
    p.add_argument("--steps", type=int, default=200, help="recovery steps per run")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--teacher-samples", type=int, default=32)
    p.add_argument("--teacher-steps", type=int, default=8)
    p.add_argument("--feature-map", default="hedgehog")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--device", default=None)
    p.add_argument("--rerun", action="store_true", help="redo runs already in --out")
    p.add_argument("--max-seconds", type=float, default=float("inf"), help="start no new run after this much wall time")
    p.add_argument("--smoke", action="store_true", help="tiny settings on the CPU: checks the script, measures nothing")
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="join these result files into --out and stop")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "guidance.json")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.smoke:
        args.targets, args.device = args.targets.split(",")[0], "cpu"
        args.steps, args.batch_size, args.teacher_samples, args.teacher_steps = 1, 1, 1, 2
        args.eval_samples, args.eval_steps, args.eval_batch = 2, 2, 2
        args.guidance_scale = args.guidance_scale or 2.0
    targets = [float(t) for t in args.targets.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown --modes {unknown[0]!r}; choose from {', '.join(MODES)}")

    scale = load_target(args.guidance_scale).teacher_guidance_scale
    if scale == 1.0:
        p.error("the shapes teacher has no guidance scale > 1 (it was trained without condition dropout); fine-tune it "
                "(examples/shapes/README.md) or pass --guidance-scale")
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    keep = previous.get("guidance_scale") == scale and not args.rerun
    runs = [r for r in previous.get("runs", []) if keep and "error" not in r]
    done = {(r["target_linear"], r["mode"]) for r in runs}
    start = time.perf_counter()
    payload = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and device_name(args).startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__, "guidance_scale": scale, "smoke": args.smoke,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "teacher_world": previous.get("teacher_world") if keep else None,
        "teacher_unguided_world": previous.get("teacher_unguided_world") if keep else None, "runs": runs,
    }

    def write() -> None:
        payload["elapsed_seconds"] = round(time.perf_counter() - start, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from lincompress import atomic

        atomic.write_json(args.out, payload)

    if payload["teacher_unguided_world"] is None:
        payload["teacher_unguided_world"] = unguided_teacher_world(args)
    with tempfile.TemporaryDirectory(prefix="lincompress-guidance-") as tmp:
        for target_linear in targets:
            for mode in modes:
                if (target_linear, mode) in done:
                    continue
                if time.perf_counter() - start > args.max_seconds:
                    print(f"{target_linear:g} {mode}: not run (time budget spent)", flush=True)
                    continue
                t0 = time.perf_counter()
                try:
                    record = run_one(target_linear, mode, args, Path(tmp))
                except Exception as exc:  # noqa: BLE001 - record the failure, run the rest
                    record = {"target_linear": target_linear, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:300]}
                payload["runs"].append(record)
                payload["teacher_world"] = payload["teacher_world"] or record.get("teacher_world")
                print(json.dumps({"target_linear": target_linear, "mode": mode, "seconds": round(time.perf_counter() - t0, 1),
                                  "world_score": record.get("world", {}).get("world_score"),
                                  "psnr_db": record.get("fidelity", {}).get("psnr_db"), "error": record.get("error")}),
                      flush=True)
                write()
    write()
    print(markdown_table(payload))
    return payload


if __name__ == "__main__":
    main()
