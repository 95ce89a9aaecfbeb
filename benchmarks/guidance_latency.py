"""Full-generation latency at Wan2.1-1.3B shape: softmax teacher with CFG vs the guidance-distilled 0.7-linear student.

A 50-step text-to-video generation through diffusers' own ``WanPipeline`` denoising loop
(its UniPC flow-matching scheduler, 480x832, 81 frames: 32,760 video tokens, 512 text
tokens), with random weights (compute does not depend on them), bf16, batch 1:

* ``teacher``: the original ``WanTransformer3DModel`` (softmax attention), CFG at Wan's
  default scale 5: two transformer forwards per step (the pipeline's cond + uncond calls);
* ``student cfg``: 70 % of the self-attention layers linear (evenly spread), still CFG;
* ``student distilled``: the same 0.7-linear model run at guidance scale 1
  (``lincompress.guidance.run_pipeline`` with ``student="distilled"``): one forward per step.

Text encoding and VAE decoding are *excluded*: the prompt embeddings are given to the
pipeline (``prompt_embeds``), it returns latents (``output_type="latent"``); both cost
the same for every model. Where ``transformers`` is not installed (diffusers' WanPipeline
needs it even without a text encoder), ``wan_loop`` -- the same loop, written out -- runs
instead, and the JSON says which ran (``loop``). Counted per generation: transformer forwards (a hook) and
wall time (CUDA-synchronised, after a 2-step warm-up run of each model).

    python benchmarks/guidance_latency.py --json benchmarks/results/guidance_latency.json

``--compile`` compiles each transformer block (regional ``torch.compile``) first.
``--tiny`` is a seconds-long CPU check of the script with toy sizes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import e2e  # noqa: E402  (the Wan-1.3B config, builder, discovery and SDPA backend choice)
from lincompress import atomic  # noqa: E402
from lincompress import benchmarking as bm  # noqa: E402
from lincompress.guidance import GuidanceConfig, pipeline_call_kwargs  # noqa: E402
from lincompress.selection import heuristic_selection  # noqa: E402

# pixel size whose Wan latent (VAE: 8x spatial, 4x temporal) is each config's latent
PIXELS = {"wan-1.3b": (480, 832, 81), "tiny": (64, 64, 9)}
CFG_SCALE = 5.0  # WanPipeline's default guidance_scale


def make_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=3.0)


def make_pipeline(model: torch.nn.Module):
    """diffusers' WanPipeline around ``model`` (no text encoder, no VAE), or None without ``transformers``."""
    try:
        from diffusers import WanPipeline

        return WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=make_scheduler())
    except (ImportError, OSError):
        return None


class LoopOutput:
    def __init__(self, frames: torch.Tensor) -> None:
        self.frames = frames


class WanLoop:
    """WanPipeline's denoising loop written out (latents in, latents out), for machines without ``transformers``.

    Same steps as ``WanPipeline.__call__``: UniPC timesteps, ``timestep = t.expand(B)``, a
    conditional and (with CFG) an unconditional transformer call per step, their
    combination, ``scheduler.step``. ``tests/benchmarks`` checks it against WanPipeline.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.transformer = model
        self.scheduler = make_scheduler()

    @torch.no_grad()
    def __call__(self, prompt_embeds, height, width, num_frames, num_inference_steps, output_type, generator,
                 guidance_scale=5.0, negative_prompt_embeds=None):
        model, device = self.transformer, prompt_embeds.device
        channels = model.config.in_channels
        shape = (prompt_embeds.shape[0], channels, (num_frames - 1) // 4 + 1, height // 8, width // 8)
        latents = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        dtype = prompt_embeds.dtype
        for t in self.scheduler.timesteps:
            timestep = t.expand(latents.shape[0])
            x = latents.to(dtype)
            noise = model(hidden_states=x, timestep=timestep, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            if guidance_scale > 1.0:
                uncond = model(hidden_states=x, timestep=timestep, encoder_hidden_states=negative_prompt_embeds,
                               return_dict=False)[0]
                noise = uncond + guidance_scale * (noise - uncond)
            latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
        return LoopOutput(latents)


class Counter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(lambda *a: setattr(self, "calls", self.calls + 1))

    def remove(self) -> None:
        self.handle.remove()


def generate(pipe, embeds: torch.Tensor, guidance: GuidanceConfig, size: tuple[int, int, int], steps: int, seed: int):
    if isinstance(pipe, WanLoop):
        kwargs = {"guidance_scale": guidance.pipeline_scale()}
    else:
        kwargs = pipeline_call_kwargs(pipe, guidance)
        kwargs.pop("negative_prompt", None)  # embeddings are given instead
    if guidance.forwards_per_step == 2:
        kwargs["negative_prompt_embeds"] = torch.zeros_like(embeds)
    height, width, frames = size
    return pipe(prompt_embeds=embeds, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                output_type="latent", generator=torch.Generator(device=embeds.device).manual_seed(seed), **kwargs).frames


def measure(pipe, model, embeds, guidance, size, steps, device, reps: int) -> dict[str, Any]:
    generate(pipe, embeds, guidance, size, 2, 0)  # warm-up: kernels, compilation, allocator
    counter = Counter(model)
    times = []
    for rep in range(reps):
        counter.calls = 0
        bm.synchronize(device)
        t0 = time.perf_counter()
        out = generate(pipe, embeds, guidance, size, steps, rep)
        bm.synchronize(device)
        times.append(time.perf_counter() - t0)
    counter.remove()
    finite = bool(torch.isfinite(out.float()).all())
    return {"latency_s": round(sorted(times)[len(times) // 2], 3), "all_s": [round(t, 3) for t in times],
            "forwards_per_video": counter.calls, "output_finite": finite}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--target-linear", type=float, default=0.7)
    p.add_argument("--feature-map", default="hedgehog", help="feature map of the linear layers (relu is faster)")
    p.add_argument("--reps", type=int, default=1, help="timed generations per model (median)")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing real")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    name = "tiny" if args.tiny else "wan-1.3b"
    config = e2e.TINY_CONFIGS["tiny"] if args.tiny else e2e.CONFIGS["wan-1.3b"]
    steps = min(args.steps, 3) if args.tiny else args.steps
    size = PIXELS[name]

    model = e2e.build_wan(config, device, dtype)
    sites, candidates = e2e.find_sites(model, config, device, dtype)
    chosen = heuristic_selection(candidates, args.target_linear, "uniform")
    backend, sdpa_times = (None, {})
    if device.type == "cuda":
        backend, sdpa_times = e2e.pick_sdpa_backend(config, device, dtype)
    pipe = make_pipeline(model)
    loop = "diffusers WanPipeline" if pipe is not None else "WanLoop (transformers not installed)"
    pipe = pipe if pipe is not None else WanLoop(model)
    g = torch.Generator(device=device).manual_seed(1)
    embeds = torch.randn(1, config.text_tokens, config.model["text_dim"], generator=g, device=device, dtype=dtype)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "config": name, "note": config.note, "latent": list(config.latent),
        "video_tokens": config.tokens, "text_tokens": config.text_tokens, "pixels": list(size), "steps": steps,
        "dtype": str(dtype).replace("torch.", ""), "cfg_scale": CFG_SCALE, "target_linear": args.target_linear,
        "feature_map": args.feature_map, "num_linear": len(chosen), "num_candidates": len(candidates),
        "compile": args.compile, "sdpa_backend": backend.name if backend is not None else "default",
        "excluded": "text encoding and VAE decoding (prompt embeddings in, latents out)", "loop": loop, "rows": [],
    }
    if args.compile:
        e2e.compile_blocks(model)
    rows = [("teacher (softmax), CFG", None, "cfg"), (f"student {args.target_linear:g} linear, CFG", chosen, "cfg"),
            (f"student {args.target_linear:g} linear, distilled", chosen, "distilled")]
    if backend is not None:
        from torch.nn.attention import sdpa_kernel

        sdpa_ctx = sdpa_kernel([backend])
    else:
        sdpa_ctx = nullcontext()
    with sdpa_ctx, torch.no_grad():
        for label, selection, mode in rows:
            guidance = GuidanceConfig(scale=CFG_SCALE, negative_prompt="", student=mode)
            ctx = bm.fixed_in_place(model, sites, selection, args.feature_map) if selection is not None else nullcontext()
            with ctx:
                row = measure(pipe, model, embeds, guidance, size, steps, device, args.reps)
            row.update(model=label, student_guidance=mode if selection is not None else "-",
                       forwards_per_step=guidance.forwards_per_step)
            results["rows"].append(row)
            print(f"{label:40s} {row['latency_s']:9.2f} s  {row['forwards_per_video']:4d} forwards", flush=True)
            if args.json:
                atomic.write_json(args.json, results)
            bm.release_memory(device)
    base = results["rows"][0]["latency_s"]
    for row in results["rows"]:
        row["speedup_vs_teacher"] = round(base / row["latency_s"], 3) if row["latency_s"] else None
    if args.json:
        atomic.write_json(args.json, results)
    print(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{results['note']}, {results['video_tokens']:,} video tokens, {results['steps']} steps, "
             f"{results['device']}, {results['dtype']}{', compiled' if results['compile'] else ''}; "
             f"excluded: {results['excluded']}", "",
             "| model | forwards per video | latency s | speed-up |", "|---|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['forwards_per_video']} | {r['latency_s']:.2f} | {r['speedup_vs_teacher']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
