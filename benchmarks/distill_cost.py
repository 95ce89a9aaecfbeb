"""Cost of the few-step distillation stage at the Wan2.1-1.3B shape: seconds per step and peak GPU memory (GPU).

diffusers ``WanTransformer3DModel`` at Wan2.1-1.3B's config (random weights; cost does not
depend on them), fp32 master weights, bf16 autocast, gradient checkpointing, batch 1, the
480p/81-frame latent (16x21x60x104: 32,760 video tokens) and 512 text tokens. The student is
the hybrid with half of its self-attention linear (uniform selection, ``--feature-map``),
trained by the library's own ``Trainer`` with the objective ``passes.Distill`` builds:

* ``dmd2``: DMD2 with its fake-score network (a full copy of the teacher, trained: its
  weights, gradients and AdamW state are all in the peak), ``--fake-updates`` per step;
* ``dmd2-attention``: the same with only the fake score's attention modules trained;
* ``adm``: the few-step ADM (no auxiliary network), for comparison.

Per row: one warm-up step (allocates optimizer state), then ``--timed-steps`` timed steps
(CUDA-synchronised), split into the fake-score updates (``before_step``) and the student's
update; peak memory is ``torch.cuda.max_memory_allocated`` over the row (teacher, student,
fake score, optimizer states, activations). No teacher cache (``samples=0``), so the
regression term is off: it adds N student forwards + one backward per step.

    python benchmarks/distill_cost.py --json benchmarks/results/distill_cost.json

``--tiny`` runs toy sizes on the CPU (checks the script, measures nothing real).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import e2e  # noqa: E402  (the Wan configs)
from lincompress import atomic  # noqa: E402
from lincompress import benchmarking as bm  # noqa: E402

ROWS = ("dmd2", "dmd2-attention", "adm")


def wan_target(config, device: torch.device):
    """A recovery Target at ``config``'s shape: fp32 weights on ``device``, random 512-token text conditions."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from lincompress import Target

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**config.model).eval()
    text_dim = config.model["text_dim"]

    def conditions(batch: int, generator: torch.Generator) -> dict:
        return {"encoder_hidden_states": torch.randn(batch, e2e.TEXT_TOKENS, text_dim, generator=generator)}

    def example_inputs(batch: int) -> dict:  # a small latent: discovery needs only the graph
        g = torch.Generator().manual_seed(1)
        return {"hidden_states": torch.randn(batch, config.latent[0], 2, 4, 6, generator=g).to(device),
                "timestep": torch.full((batch,), 500.0).to(device),
                "encoder_hidden_states": torch.randn(batch, 8, text_dim, generator=g).to(device), "return_dict": False}

    return Target(model=model, example_inputs=example_inputs, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                  conditions=conditions, latent_shape=config.latent, name=config.name)


def measure_row(row: str, config, args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    from lincompress import Pipeline, passes
    from lincompress.distill_config import DistillConfig
    from lincompress.recovery.distill import distill_objective
    from lincompress.recovery.sampling import few_step_grid, timestep_shift
    from lincompress.recovery.trainer import Trainer

    bm.release_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    target = wan_target(config, device)
    state = Pipeline([passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map),
                      passes.HeuristicSelect(target_linear=0.5)]).run(target)
    objective = "adm" if row == "adm" else "dmd2"
    config_d = DistillConfig(student_steps=args.student_steps, distill_objective=objective, distill_steps=1000,
                             fake_updates=args.fake_updates, fake_train="attention" if row == "dmd2-attention" else "all",
                             gradient_checkpointing=not args.tiny, samples=0, device=str(device), lr=1e-5,
                             compare_without_recovery=False)
    sigmas = [round(float(s), 6) for s in few_step_grid(timestep_shift(target.scheduler), args.student_steps)]
    trainer = Trainer(target, state.model, config_d.recovery_config(), work / row, selection=state.selection,
                      objective=distill_objective(config_d, sigmas), progress=False, stage="distill")
    ctx = trainer._context(None)
    trainer.objective.setup(ctx)  # the fake-score network (dmd2)
    fake_s: list[float] = []
    before_step = trainer.objective.before_step

    def timed_before_step(*a, **k):
        bm.synchronize(device)
        t0 = time.perf_counter()
        out = before_step(*a, **k)
        bm.synchronize(device)
        fake_s.append(time.perf_counter() - t0)
        return out

    trainer.objective.before_step = timed_before_step
    steps = []
    for i in range(1 + args.timed_steps):
        bm.synchronize(device)
        t0 = time.perf_counter()
        trainer._train_step(ctx, i)
        bm.synchronize(device)
        steps.append(time.perf_counter() - t0)
    timed, timed_fake = steps[1:], fake_s[1:]
    aux = trainer.objective.modules().get("fake_score")
    out = {
        "row": row, "objective": objective, "student_steps": args.student_steps,
        "fake_updates": args.fake_updates if objective == "dmd2" else None,
        "fake_train": config_d.fake_train if objective == "dmd2" else None,
        "num_linear": len(state.selection), "num_candidates": len(state.candidates),
        "parameters": sum(p.numel() for p in target.model.parameters()),
        "fake_score_trained_parameters": sum(p.numel() for p in aux.parameters() if p.requires_grad) if aux else 0,
        "warmup_step_s": round(steps[0], 3), "s_per_step": round(statistics.median(timed), 3), "steps_s": timed,
        "fake_updates_s_per_step": round(statistics.median(timed_fake), 3) if timed_fake else 0.0,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    print(f"  {row}: {out['s_per_step']:.2f} s/step (fake-score updates {out['fake_updates_s_per_step']:.2f} s), "
          f"peak {out['peak_memory_gib']} GiB", flush=True)
    del trainer, state, target, ctx
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--student-steps", type=int, default=4)
    p.add_argument("--fake-updates", type=int, default=5)
    p.add_argument("--timed-steps", type=int, default=2)
    p.add_argument("--feature-map", default="hedgehog")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "distill_cost.json")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing real")
    a = p.parse_args(argv)
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        p.error(f"unknown --rows {unknown[0]!r}; choose from {', '.join(ROWS)}")
    device = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    config = e2e.TINY_CONFIGS["tiny"] if a.tiny else e2e.CONFIGS["wan-1.3b"]
    if a.tiny:
        a.student_steps, a.fake_updates, a.timed_steps = 2, 1, 1
    results: dict[str, Any] = {"environment": bm.environment(device), "config": config.name, "note": config.note,
                               "latent": list(config.latent), "video_tokens": config.tokens, "text_tokens": e2e.TEXT_TOKENS,
                               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                               "precision": "fp32 weights, bf16 autocast" + (", gradient checkpointing" if not a.tiny else ""),
                               "rows": []}
    print(f"distillation stage cost at {config.note} ({config.tokens:,} video tokens) on "
          f"{results['environment']['device']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lincompress-distill-cost-") as tmp:
        for row in rows:
            try:
                results["rows"].append(measure_row(row, config, a, device, Path(tmp)))
            except torch.cuda.OutOfMemoryError as exc:
                results["rows"].append({"row": row, "error": f"out of memory: {str(exc).splitlines()[0][:200]}"})
                print(f"  {row}: out of memory", flush=True)
            if a.json:
                atomic.write_json(a.json, results)
            bm.release_memory(device)
    return results


if __name__ == "__main__":
    main()
