"""Recovery benchmark: does recovery close the gap to the original, and what does a step cost at Wan-1.3B shape?

    python benchmarks/recovery.py --out results/ [--tiny-steps 400] [--skip-wan13]
    python benchmarks/recovery.py --skip-tiny --timed-steps 2      # part 2 only: fused vs unfused s/step

Part 1 (tiny Wan-configured model; the trained shapes teacher when its weights exist,
else random weights): velocity error of the fixed hybrid to the original model on
held-out teacher trajectories (MSE over every step of 8 fresh 8-step trajectories),
with and without recovery, for the learned selection (selective transfer + ADM) and
for a uniform heuristic selection (no recovery / ADM / MSE).

Part 2 (diffusers WanTransformer3DModel at the Wan2.1-1.3B shape, random weights, bf16
autocast, gradient checkpointing, batch 1): seconds per ADM training step with the
selective-transfer hybrid (``--feature-map``, default Hedgehog), while every site is still
hybrid (both branches run) and once K = 21 of 30 sites are frozen linear (their softmax
branch is skipped). Each phase is timed on every path in the same run on the same random
draws (the ADM stop index decides how many forwards a step makes, so only same-draw steps
compare): ``unfused`` (the map in PyTorch, the op with ``identity`` at Dk = 2 D for Hedgehog:
the path before the fused maps; ``--no-compare-unfused`` skips it), ``fused`` (the op applies
the map) and ``compiled`` (fused, every transformer block of student and teacher compiled,
as ``RecoveryConfig(compile=True)`` / ``optimize --compile`` does; ``--no-compile`` skips it).
``speedup_<phase>_<path>`` = unfused / path; ``recompiles_timed_*`` counts graphs compiled
during timed steps (0: the warm-up covered every graph). Falls back to fewer latent frames
when the full 21-frame latent does not fit. ``--wan13-tiny`` runs part 2 on a 3-layer toy Wan
(on a CPU too), to check the script.

Writes ``recovery.json`` (and prints every number).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch._dynamo.utils import counters

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



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
WAN13 = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
             text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN13_TINY = dict(WAN13, num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64,
                  num_layers=3, rope_max_seq_len=64)  # --wan13-tiny: the same code path on a CPU, in seconds
# unfused: PyTorch map + identity op at Dk = 2D, eager (the path before the fused maps); fused: the op applies
# the map, eager; compiled: fused, every transformer block of student and teacher torch.compile'd
# (``RecoveryConfig(compile=True)`` / ``--compile``). Speed-ups are against ``unfused``.
PATHS = ("unfused", "fused", "compiled")


def wan13_target(frames: int, device: torch.device, tiny: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from lincompress import Target

    config = WAN13_TINY if tiny else WAN13
    with torch.device(device):
        torch.manual_seed(0)
        model = WanTransformer3DModel(**config).eval()
    latent = (16, frames, 4, 6) if tiny else (16, frames, 60, 104)
    text_dim, text_tokens = config["text_dim"], (8 if tiny else 512)

    def conditions(batch: int, generator: torch.Generator) -> dict:
        return {"encoder_hidden_states": torch.randn(batch, text_tokens, text_dim, generator=generator)}

    def example_inputs(batch: int) -> dict:  # small latent: discovery only needs the structure
        g = torch.Generator().manual_seed(1)
        return {"hidden_states": torch.randn(batch, 16, 1, 4, 4, generator=g).to(device),
                "timestep": torch.full((batch,), 500.0).to(device),
                "encoder_hidden_states": torch.randn(batch, 8, text_dim, generator=g).to(device), "return_dict": False}

    return Target(model=model, example_inputs=example_inputs, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
                  conditions=conditions, latent_shape=latent, name="wan2.1-1.3b-shape")


def _sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(trainer, ctx, first_step: int, n: int, device: torch.device) -> list[float]:
    times = []
    for i in range(n):
        _sync_device(device)
        t0 = time.perf_counter()
        trainer._train_step(ctx, first_step + i)
        _sync_device(device)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def time_forward(model, target, ctx, device: torch.device, n: int = 2) -> float:
    from lincompress.recovery.sampling import ConditionSource

    cond = {k: v.to(device) for k, v in ConditionSource(target)(1, torch.Generator().manual_seed(0)).items()}
    x = torch.randn(1, *target.latent_shape, device=device)
    sigma = torch.tensor([0.5])
    ctx.velocity(model, x, sigma, cond)
    _sync_device(device)
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.velocity(model, x, sigma, cond)
    _sync_device(device)
    return (time.perf_counter() - t0) / n


def set_fused(model, fused: bool) -> None:
    """Every site applies its feature map in the op (fused) or in PyTorch with an identity op (the path before)."""
    from lincompress.attention import iter_sites

    for _, site in iter_sites(model):
        site.feature_map_q.fused = site.feature_map_k.fused = fused


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _wan13_attempt(args, work: Path, frames: int, row: dict, device: torch.device, save) -> None:
    from lincompress import Pipeline, passes
    from lincompress.regional_compile import compiled_blocks
    from lincompress.recovery.selective import SelectiveConfig
    from lincompress.recovery.trainer import RecoveryConfig, Trainer

    target = wan13_target(frames, device, args.wan13_tiny)
    row["params"] = sum(p.numel() for p in target.model.parameters())
    state = Pipeline([passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map)]).run(target)
    row["sites"] = len(state.candidates)
    config = RecoveryConfig(objective="adm", objective_options={"sampler_steps": 4}, steps=1000, batch_size=1,
                            lr=1e-5, gradient_checkpointing=True, samples=0, device=device.type, seed=0)
    trainer = Trainer(target, state.model, config, work / f"wan13-{frames}",
                      selective=SelectiveConfig(target_linear=0.7), progress=False)
    ctx = trainer._context(None)
    paths = [p for p in PATHS if (p != "unfused" or args.compare_unfused) and (p != "compiled" or args.compile)]
    row["paths"] = paths
    row["teacher_forward_s"] = time_forward(target.model, target, ctx, device)
    row["warmup_step_s"] = time_steps(trainer, ctx, 0, 1, device)[0]
    draws = trainer.generator.get_state()  # every phase and path replays the same random stop indices / t
    reg = trainer.regularizer
    run_modules = [module for module, _ in trainer._modules_to_place().values()]  # what --compile compiles
    step = 1
    for phase in ("all_hybrid", "k_frozen_linear"):
        if phase == "k_frozen_linear":  # freeze K sites (the first K; timing does not depend on which)
            for name, site in trainer.sites[: reg.k]:
                reg._freeze(name, site, step)
        for path in paths:
            set_fused(state.model, path != "unfused")
            compiled = compiled_blocks(run_modules, backend=args.compile_backend) if path == "compiled" else nullcontext()
            with compiled:
                t0 = time.perf_counter()  # a new path's first steps pay one-time costs: allocator growth, compiling
                time_steps(trainer, ctx, step, args.warmup_steps, device)
                row[f"warmup_s_{phase}_{path}"] = time.perf_counter() - t0
                step += args.warmup_steps
                graphs = counters["stats"]["unique_graphs"]
                trainer.generator.set_state(draws)
                times = time_steps(trainer, ctx, step, args.timed_steps, device)
                step += args.timed_steps
                row[f"recompiles_timed_{phase}_{path}"] = counters["stats"]["unique_graphs"] - graphs
                if phase == "k_frozen_linear":
                    row[f"student_forward_frozen_s_{path}"] = time_forward(state.model, target, ctx, device)
            row[f"s_per_step_{phase}_{path}"] = sum(times) / len(times)
            row[f"steps_{phase}_{path}"] = times
            save()  # a job killed at its time limit keeps every path it finished
        if phase == "all_hybrid":
            row["peak_memory_gib_hybrid"] = _peak_gib(device)
    set_fused(state.model, True)
    row.update({"k_linear": reg.k, "peak_memory_gib": _peak_gib(device), "ok": True,
                "graphs_compiled": counters["stats"]["unique_graphs"]})
    base = paths[0]
    for phase in ("all_hybrid", "k_frozen_linear"):
        for path in paths[1:]:
            row[f"speedup_{phase}_{path}"] = row[f"s_per_step_{phase}_{base}"] / row[f"s_per_step_{phase}_{path}"]
    print(f"[wan13] {args.feature_map}, s/step (same draws per path; speed-up vs {base}):", flush=True)
    for path in paths:
        cells = [f"{phase} {row[f's_per_step_{phase}_{path}']:.2f}"
                 + (f" ({row[f'speedup_{phase}_{path}']:.2f}x)" if path != base else "")
                 for phase in ("all_hybrid", "k_frozen_linear")]
        print(f"[wan13]   {path:8s}: {', '.join(cells)}; student fwd (K linear) "
              f"{row[f'student_forward_frozen_s_{path}']:.2f} s", flush=True)
    print(f"[wan13] teacher fwd {row['teacher_forward_s']:.2f} s; peak {row['peak_memory_gib'] or 0:.1f} GiB", flush=True)


def part_wan13(args, work: Path, device: torch.device, results: dict, save) -> dict:
    import gc

    results.update({"attempts": [], "feature_map": args.feature_map, "tiny": args.wan13_tiny})
    for frames in args.frames:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        latent_hw = (4, 6) if args.wan13_tiny else (60, 104)
        row: dict = {"frames": frames, "latent": [16, frames, *latent_hw],
                     "video_tokens": frames * latent_hw[0] * latent_hw[1] // 4}  # fmt: skip
        results["attempts"].append(row)
        print(f"[wan13] frames={frames} tokens={row['video_tokens']}", flush=True)
        try:
            _wan13_attempt(args, work, frames, row, device, save)
        except torch.cuda.OutOfMemoryError as exc:
            row.update(ok=False, error=f"OOM: {str(exc).splitlines()[0][:200]}", peak_memory_gib=_peak_gib(device))
            print(f"[wan13] frames={frames}: out of memory", flush=True)
            continue
        results["result"] = row
        break
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--tiny-steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--timed-steps", type=int, default=3)
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 13, 5])
    parser.add_argument("--feature-map", default="hedgehog")
    parser.add_argument("--compare-unfused", action=argparse.BooleanOptionalAction, default=True,
                        help="part 2 also times the unfused feature-map path (PyTorch map + identity op) in the same run")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="part 2 also times the fused path with every block compiled (RecoveryConfig(compile=True))")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per path and phase (compiling)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--ablation", action="store_true", help="part 1 runs ADM variants and learned+MSE instead")
    parser.add_argument("--skip-wan13", action="store_true")
    parser.add_argument("--wan13-tiny", action="store_true", help="part 2 on a 3-layer toy Wan (runs on a CPU)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import lincompress
    from lincompress.kernels import HAS_TRITON

    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "triton_kernels": HAS_TRITON, "lincompress": lincompress.__version__,
                     "kernel_configs": os.environ.get("LINCOMPRESS_LINEAR_ATTENTION_CONFIGS") or "committed table"}
    work = Path(tempfile.mkdtemp(prefix="lincompress-bench-"))
    if not args.skip_tiny:
        results["tiny_ablation" if args.ablation else "tiny"] = part_tiny(args, device, work)
        _write(args.out, results)
    if not args.skip_wan13 and (device.type == "cuda" or args.wan13_tiny):
        results["wan13"] = {}
        part_wan13(args, work, device, results["wan13"], lambda: _write(args.out, results))
        _write(args.out, results)
    _write(args.out, results)
    print(json.dumps({k: v for k, v in results.items() if not k.startswith("tiny")}, indent=1, default=str)[:3000])
    return results


if __name__ == "__main__":
    main()
