"""Recovery benchmark: does recovery close the gap to the original, and what does a step cost at Wan-1.3B shape?

    python benchmarks/recovery.py --out results/ [--tiny-steps 400] [--skip-wan13]

Part 1 (tiny Wan-configured model; the trained shapes teacher when its weights exist,
else random weights): velocity error of the fixed hybrid to the original model on
held-out teacher trajectories (MSE over every step of 8 fresh 8-step trajectories),
with and without recovery, for the learned selection (selective transfer + ADM) and
for a uniform heuristic selection (no recovery / ADM / MSE).

Part 2 (diffusers WanTransformer3DModel at the Wan2.1-1.3B shape, random weights, bf16
autocast, gradient checkpointing, batch 1): seconds per ADM training step with the
selective-transfer hybrid, while every site is still hybrid (both branches run) and
once K = 21 of 30 sites are frozen linear (their softmax branch is skipped). Falls
back to fewer latent frames when the full 21-frame latent does not fit.

Writes ``recovery.json`` (and prints every number).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recovery.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- part 1: quality
def tiny_target():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from lincompress import Target

    shapes = REPO / "examples/shapes/teacher.safetensors"
    if shapes.is_file():
        from lincompress.target import load_target

        return load_target(REPO / "examples/shapes/model.py"), "shapes teacher (trained)"
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=64, ffn_dim=512, num_layers=8, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).eval()
    with torch.no_grad():  # random q/k give near-uniform attention, which linear attention matches trivially;
        for block in model.blocks:  # sharpen it so the teacher's attention is as peaky as a trained model's
            block.attn1.norm_q.weight.mul_(3.0)  # after the q/k RMS norm: logits grow 9x
            block.attn1.norm_k.weight.mul_(3.0)
    latent = (16, 4, 16, 16)  # 4 x 8 x 8 = 256 video tokens

    def conditions(batch: int, generator: torch.Generator) -> dict:
        return {"encoder_hidden_states": torch.randn(batch, 32, 64, generator=generator)}

    def example_inputs(batch: int) -> dict:
        g = torch.Generator().manual_seed(1)
        return {"hidden_states": torch.randn(batch, *latent, generator=g), "timestep": torch.full((batch,), 500.0),
                **conditions(batch, g), "return_dict": False}

    target = Target(model=model, example_inputs=example_inputs, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                    conditions=conditions, latent_shape=latent, name="tiny-wan-random")
    return target, "tiny Wan (random weights, q/k norm gains x3, 8 layers, 4x32 heads, 256 tokens)"


@torch.no_grad()
def velocity_error(model, target, data, device, batch: int = 16) -> float:
    from lincompress.recovery.sampling import ModelCaller

    caller = ModelCaller(target, target.scheduler)
    x, sigma, v_t, cond = data.eval_points(data.num_samples * data.num_points)
    total = count = 0.0
    for s in range(0, x.shape[0], batch):
        sl = slice(s, s + batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            v = caller(model, x[sl].to(device), sigma[sl], {k: c[sl].to(device) for k, c in cond.items()}).float()
        total += float(((v - v_t[sl].to(device)) ** 2).sum())
        count += v.numel()
    return total / count


def part_tiny(args, device: torch.device, work: Path) -> dict:
    from lincompress import Pipeline, passes
    from lincompress.recovery.teacher_data import build_teacher_cache, load_teacher_cache

    target, label = tiny_target()
    target.model.to(device)
    build_teacher_cache(target, target.model, work / "heldout", samples=8, steps=8, shard_size=8, seed=1000,
                        device=device, autocast=device.type == "cuda")
    heldout = load_teacher_cache(work / "heldout")
    target.model.cpu()
    out: dict = {"model": label, "target_linear": 0.7, "steps": args.tiny_steps, "heldout_points": heldout.num_samples * heldout.num_points}

    def recover(name: str, select, objective: str | None, lr: float, options: dict | None = None) -> dict:
        stages = [passes.FindAttention(), passes.Hybridize(), *select]
        if objective:
            stages.append(passes.Recover(objective, args.tiny_steps, work_dir=work / name, samples=16, teacher_steps=8,
                                         batch_size=4, lr=lr, lr_feature_maps=1e-3, device=str(device), progress=False,
                                         checkpoint_every=max(1, args.tiny_steps), objective_options=options))
        stages.append(passes.Fix())
        start = time.perf_counter()
        state = Pipeline(stages).run(target)
        seconds = time.perf_counter() - start
        state.model.to(device)
        target.model.to(device)
        err = velocity_error(state.model, target, heldout, device)
        state.model.cpu()
        target.model.cpu()
        row = {"selection": state.selection, "velocity_error": err, "seconds": round(seconds, 1)}
        if objective:
            row["train_metrics"] = state.metrics.get("recovery")
        print(f"[tiny] {name:28s} velocity error {err:.5g}  ({seconds:.1f} s)", flush=True)
        return row

    if args.ablation:  # ADM variants and the learned selection under MSE
        uniform = [passes.HeuristicSelect(0.7, "uniform")]
        out["uniform, no recovery"] = recover("uniform-norecovery", uniform, None, args.lr)
        out["uniform+adm(regression=1)"] = recover("uniform+adm-reg1", uniform, "adm", args.lr, {"regression": 1.0})
        out["uniform+adm(8 sampler steps)"] = recover("uniform+adm-8", uniform, "adm", args.lr, {"sampler_steps": 8})
        out["learned+mse"] = recover("learned+mse", [passes.SelectiveTransfer(0.7)], "mse", args.lr)
        return out
    learned = recover("learned+adm", [passes.SelectiveTransfer(0.7)], "adm", args.lr)
    out["learned+adm"] = learned

    class Fixed:  # the learned selection without any training
        name = "fixed-selection"

        def run(self, state):
            state.selection = list(learned["selection"])
            return state

    out["learned, no recovery"] = recover("learned-norecovery", [Fixed()], None, args.lr)
    out["uniform, no recovery"] = recover("uniform-norecovery", [passes.HeuristicSelect(0.7, "uniform")], None, args.lr)
    out["uniform+adm"] = recover("uniform+adm", [passes.HeuristicSelect(0.7, "uniform")], "adm", args.lr)
    out["uniform+mse"] = recover("uniform+mse", [passes.HeuristicSelect(0.7, "uniform")], "mse", args.lr)
    return out


# ---------------------------------------------------------------- part 2: speed at Wan-1.3B shape
def wan13_target(frames: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from lincompress import Target

    with torch.device("cuda"):
        torch.manual_seed(0)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            eps=1e-6, rope_max_seq_len=1024,
        ).eval()
    latent = (16, frames, 60, 104)

    def conditions(batch: int, generator: torch.Generator) -> dict:
        return {"encoder_hidden_states": torch.randn(batch, 512, 4096, generator=generator)}

    def example_inputs(batch: int) -> dict:  # small latent: discovery only needs the structure
        g = torch.Generator().manual_seed(1)
        return {"hidden_states": torch.randn(batch, 16, 1, 4, 4, generator=g).cuda(), "timestep": torch.full((batch,), 500.0).cuda(),
                "encoder_hidden_states": torch.randn(batch, 8, 4096, generator=g).cuda(), "return_dict": False}

    return Target(model=model, example_inputs=example_inputs, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
                  conditions=conditions, latent_shape=latent, name="wan2.1-1.3b-shape")


def time_steps(trainer, ctx, first_step: int, n: int) -> list[float]:
    times = []
    for i in range(n):
        _sync()
        t0 = time.perf_counter()
        trainer._train_step(ctx, first_step + i)
        _sync()
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def time_forward(model, target, ctx, n: int = 2) -> float:
    from lincompress.recovery.sampling import ConditionSource

    cond = {k: v.cuda() for k, v in ConditionSource(target)(1, torch.Generator().manual_seed(0)).items()}
    x = torch.randn(1, *target.latent_shape, device="cuda")
    sigma = torch.tensor([0.5])
    ctx.velocity(model, x, sigma, cond)
    _sync()
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.velocity(model, x, sigma, cond)
    _sync()
    return (time.perf_counter() - t0) / n


def _wan13_attempt(args, work: Path, frames: int, row: dict) -> None:
    from lincompress import Pipeline, passes
    from lincompress.recovery.selective import SelectiveConfig
    from lincompress.recovery.trainer import RecoveryConfig, Trainer

    target = wan13_target(frames)
    row["params"] = sum(p.numel() for p in target.model.parameters())
    state = Pipeline([passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map)]).run(target)
    row["sites"] = len(state.candidates)
    config = RecoveryConfig(objective="adm", objective_options={"sampler_steps": 4}, steps=1000, batch_size=1,
                            lr=1e-5, gradient_checkpointing=True, samples=0, device="cuda", seed=0)
    trainer = Trainer(target, state.model, config, work / f"wan13-{frames}",
                      selective=SelectiveConfig(target_linear=0.7), progress=False)
    ctx = trainer._context(None)
    row["teacher_forward_s"] = time_forward(target.model, target, ctx)
    row["warmup_step_s"] = time_steps(trainer, ctx, 0, 1)[0]
    draws = trainer.generator.get_state()  # both phases replay the same random stop indices / t
    hybrid = time_steps(trainer, ctx, 1, args.timed_steps)
    row.update({"s_per_step_all_hybrid": sum(hybrid) / len(hybrid), "steps_all_hybrid": hybrid,
                "peak_memory_gib_hybrid": torch.cuda.max_memory_allocated() / 2**30})
    reg = trainer.regularizer
    for name, site in trainer.sites[: reg.k]:  # freeze K sites (first K; timing does not depend on which)
        reg._freeze(name, site, 1 + args.timed_steps)
    trainer.generator.set_state(draws)
    frozen = time_steps(trainer, ctx, 1 + args.timed_steps, args.timed_steps)
    row["student_forward_frozen_s"] = time_forward(state.model, target, ctx)
    row.update({
        "k_linear": reg.k, "s_per_step_k_frozen_linear": sum(frozen) / len(frozen), "steps_frozen": frozen,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "ok": True,
    })
    print(f"[wan13] s/step all-hybrid {row['s_per_step_all_hybrid']:.2f}, with {reg.k} frozen linear "
          f"{row['s_per_step_k_frozen_linear']:.2f}; teacher fwd {row['teacher_forward_s']:.2f} s, "
          f"student fwd (K linear) {row['student_forward_frozen_s']:.2f} s; peak {row['peak_memory_gib']:.1f} GiB",
          flush=True)


def part_wan13(args, work: Path) -> dict:
    import gc

    results: dict = {"attempts": []}
    for frames in args.frames:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        row: dict = {"frames": frames, "latent": [16, frames, 60, 104], "video_tokens": frames * 30 * 52}
        results["attempts"].append(row)
        print(f"[wan13] frames={frames} tokens={row['video_tokens']}", flush=True)
        try:
            _wan13_attempt(args, work, frames, row)
        except torch.cuda.OutOfMemoryError as exc:
            row.update(ok=False, error=f"OOM: {str(exc).splitlines()[0][:200]}",
                       peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30)
            print(f"[wan13] frames={frames}: out of memory", flush=True)
            continue
        results["result"] = row
        break
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--tiny-steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--timed-steps", type=int, default=3)
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 13, 5])
    parser.add_argument("--feature-map", default="hedgehog")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--ablation", action="store_true", help="part 1 runs ADM variants and learned+MSE instead")
    parser.add_argument("--skip-wan13", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import lincompress
    from lincompress.kernels import HAS_TRITON

    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "triton_kernels": HAS_TRITON, "lincompress": lincompress.__version__}
    work = Path(tempfile.mkdtemp(prefix="lincompress-bench-"))
    if not args.skip_tiny:
        results["tiny_ablation" if args.ablation else "tiny"] = part_tiny(args, device, work)
        _write(args.out, results)
    if not args.skip_wan13 and device.type == "cuda":
        results["wan13"] = part_wan13(args, work)
        _write(args.out, results)
    _write(args.out, results)
    print(json.dumps({k: v for k, v in results.items() if not k.startswith("tiny")}, indent=1, default=str)[:3000])


if __name__ == "__main__":
    main()
