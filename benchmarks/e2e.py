"""End-to-end DiT speed at real scale: Wan2.1 (diffusers ``WanTransformer3DModel``) with random weights.

For each configuration it builds the transformer directly on the GPU in bf16 (the
modules Wan keeps in float32 stay float32, as ``from_pretrained(torch_dtype=bf16)``
does), finds its attention sites once (on a small input: discovery needs only the
graph), and times one denoiser forward (batch 1, 512 text tokens) of

* the original model, softmax attention through ``F.scaled_dot_product_attention``
  (what diffusers' native attention dispatch calls) with the fastest SDPA backend,
  chosen per shape by timing each backend on that shape's attention (cuDNN and flash;
  memory-efficient attention is never the fastest on Hopper);
* fixed hybrids with 50 / 70 / 100 % of the self-attention layers linear (evenly
  spread, ``lincompress.selection.heuristic_selection(..., "uniform")``), whose linear
  layers call ``lincompress::linear_attention`` (the fused Triton kernels, which apply
  the feature map, Hedgehog's softmaxes included); the kept softmax layers use the same
  SDPA backend. A feature map written ``<map>-unfused`` (e.g. ``hedgehog-unfused@0.7``)
  applies the map in PyTorch and passes ``identity`` to the op, the path before the
  fused feature maps, to compare in the same run;

eager and/or ``torch.compile`` (regional: each transformer block compiled, default
mode; the blocks share one compiled graph per block type). Compute does not depend on
weight values, so random weights measure the real cost. A sampling loop costs N of
these forwards (the scheduler step is negligible next to them), so speed-ups carry
over to N-step generation.

Configurations (tokens = frames x (H/2) x (W/2) of the latent after 1x2x2 patches):

    wan-1.3b       Wan2.1-T2V-1.3B, 480p, 81 frames: latent 16x21x60x104 -> 32,760 tokens
    wan-1.3b-2x    the same at 161 frames: latent 16x41x60x104 -> 63,960 tokens
    wan-1.3b-4x    the same at 321 frames: latent 16x81x60x104 -> 126,360 tokens
    wan-14b-720p   Wan2.1-T2V-14B, 720p, 81 frames: latent 16x21x90x160 -> 75,600 tokens

Usage (GPU)::

    python benchmarks/e2e.py --configs wan-1.3b:eager+compile,wan-14b-720p:compile \\
        --json benchmarks/results/e2e.json
    python benchmarks/e2e.py --configs wan-1.3b:compile --feature-maps hedgehog --targets 0.7,1.0 \\
        --extra relu@0.7,hedgehog-unfused@0.7      # Hedgehog rows, with relu and the unfused path beside them

``--deadline-s`` stops starting new measurements once that much wall time has gone, and
the JSON is rewritten after every measurement, so a cut-off run keeps what it measured.
``--tiny`` swaps in toy sizes so the whole script can be checked on a CPU.

``--generation`` measures whole text-to-video generations instead (text encoder + N denoiser
forwards + VAE decode; the 50-step CFG teacher vs 4-step distilled linear students):
``benchmarks/e2e_generation.py``, whose flags follow it.
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import os
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from lincompress import Target, atomic  # noqa: E402
from lincompress import benchmarking as bm  # noqa: E402
from lincompress.passes import FindAttention  # noqa: E402
from lincompress.pipeline import State  # noqa: E402
from lincompress.regional_compile import compile_regions  # noqa: E402
from lincompress.selection import heuristic_selection  # noqa: E402

WAN_COMMON = dict(
    patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
WAN_1_3B = dict(WAN_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30)
WAN_14B = dict(WAN_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40)
TINY = dict(
    patch_size=(1, 2, 2), attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32, freq_dim=32,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
    num_attention_heads=2, ffn_dim=64, num_layers=4,
)
TEXT_TOKENS = 512


@dataclass(frozen=True)
class Config:
    name: str
    model: dict[str, Any]
    latent: tuple[int, int, int, int]  # C, F, H, W
    text_tokens: int = TEXT_TOKENS
    note: str = ""

    @property
    def tokens(self) -> int:
        pt, ph, pw = self.model["patch_size"]
        _, f, h, w = self.latent
        return (f // pt) * (h // ph) * (w // pw)


CONFIGS = {
    "wan-1.3b": Config("wan-1.3b", WAN_1_3B, (16, 21, 60, 104), note="Wan2.1-1.3B, 480p, 81 frames"),
    "wan-1.3b-2x": Config("wan-1.3b-2x", WAN_1_3B, (16, 41, 60, 104), note="Wan2.1-1.3B, 480p, 161 frames (2x)"),
    "wan-1.3b-4x": Config("wan-1.3b-4x", WAN_1_3B, (16, 81, 60, 104), note="Wan2.1-1.3B, 480p, 321 frames (4x)"),
    "wan-14b-720p": Config("wan-14b-720p", WAN_14B, (16, 21, 90, 160), note="Wan2.1-14B, 720p, 81 frames"),
}
TINY_CONFIGS = {
    "tiny": Config("tiny", TINY, (4, 3, 8, 8), text_tokens=16, note="toy sizes (script check)"),
    "tiny-2x": Config("tiny-2x", TINY, (4, 6, 8, 8), text_tokens=16, note="toy sizes, 2x frames"),
}
MODES = ("eager", "compile")
SDPA_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION")  # memory-efficient SDPA is never the fastest on Hopper


# --------------------------------------------------------------------------- building


def build_wan(config: Config, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer, created on ``device`` in ``dtype`` (no float32 copy on the CPU first)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config.model)
    finally:
        torch.set_default_dtype(previous)
    bm.cast_model(model, device, dtype)  # Wan's float32 modules (rope, norms, modulation) back to float32
    return model.eval().requires_grad_(False)


def wan_inputs(config: Config, latent: tuple[int, ...], text_tokens: int, device: torch.device,
               dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator(device=device).manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, *latent, generator=g, device=device, dtype=dtype),
        "timestep": torch.full((1,), 500.0, device=device),  # float32, as the pipeline passes it
        "encoder_hidden_states": torch.randn(1, text_tokens, config.model["text_dim"], generator=g, device=device,
                                             dtype=dtype),
        "return_dict": False,
    }


def find_sites(model: torch.nn.Module, config: Config, device: torch.device, dtype: torch.dtype):
    """FindAttention on a small input of the same model: the sites depend on the graph, not the sizes."""
    c = config.latent[0]
    small = (c, 2, 4, 6)  # 2 x 2 x 3 = 12 video tokens vs 8 text tokens: self vs cross stays unambiguous
    target = Target(model=model, example_inputs=lambda b: wan_inputs(config, small, 8, device, dtype), name=config.name)
    state = FindAttention().run(State(target=target, model=model))
    return state.sites, state.candidates


# --------------------------------------------------------------------------- SDPA backend


def pick_sdpa_backend(config: Config, device: torch.device, dtype: torch.dtype) -> tuple[Any, dict[str, float]]:
    """Time each SDPA backend on this shape's self-attention (diffusers' permuted [B,N,H,D] views); fastest wins."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, head_dim, n = config.model["num_attention_heads"], config.model["attention_head_dim"], config.tokens
    q, k, v = (torch.randn(1, n, heads, head_dim, device=device, dtype=dtype).permute(0, 2, 1, 3) for _ in range(3))
    times: dict[str, float] = {}
    for name in SDPA_BACKENDS:
        backend = getattr(SDPBackend, name)
        try:
            with sdpa_kernel([backend]):
                t = bm.time_call(lambda: F.scaled_dot_product_attention(q, k, v), device, warmup=1, reps=3)
            times[name] = t.median_ms
        except RuntimeError as exc:  # backend not available for this shape/device
            times[name] = float("nan")
            print(f"  sdpa {name}: unavailable ({str(exc).splitlines()[0][:100]})", flush=True)
    t = bm.time_call(lambda: F.scaled_dot_product_attention(q, k, v), device, warmup=1, reps=3)
    times["default"] = t.median_ms
    valid = {k: v for k, v in times.items() if k != "default" and not math.isnan(v)}
    best = min(valid, key=valid.get) if valid else None
    del q, k, v
    bm.release_memory(device)
    return (getattr(SDPBackend, best) if best else None), times


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    args: argparse.Namespace
    start: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)
    sites: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.args.deadline_s - self.elapsed()

    def save(self) -> None:
        if self.args.json:
            atomic.write_json(self.args.json, self.results)


def reps_for(estimate_ms: float, budget_s: float, min_reps: int, max_reps: int) -> int:
    return int(max(min_reps, min(max_reps, budget_s * 1e3 // max(estimate_ms, 1e-3))))


def measure(run: Run, model, kwargs, device, label: str, estimate_ms: float | None, extra_s: float = 0.0
            ) -> dict[str, Any] | None:
    """First call (compiles, autotunes, grows the allocator), one call to size the repetitions, then the timed calls.

    Skipped when the deadline would be passed (estimated from an earlier variant, plus
    ``extra_s`` for a compilation this variant will trigger).
    """
    a = run.args
    if estimate_ms and run.left() < (2 + a.min_reps) * estimate_ms / 1e3 + extra_s + 5:
        print(f"  {label}: skipped (deadline)", flush=True)
        return None
    start = time.perf_counter()
    with torch.no_grad():
        out = bm.model_output(model(**kwargs))
        bm.synchronize(device)
        first_s = time.perf_counter() - start
        one = bm.time_call(lambda: model(**kwargs), device, warmup=0, reps=1)
        reps = reps_for(one.median_ms, a.time_per_variant_s, a.min_reps, a.max_reps)
        timing = bm.time_call(lambda: model(**kwargs), device, warmup=0, reps=reps)
        finite = bool(torch.isfinite(out).all())
    del out
    row = {
        "forward_ms": timing.median_ms, "min_ms": timing.min_ms, "max_ms": timing.max_ms, "reps": timing.reps,
        "first_call_s": round(first_s, 2), "peak_memory_bytes": timing.peak_memory_bytes,
        "peak_memory_gib": None if timing.peak_memory_bytes is None else round(timing.peak_memory_bytes / 2**30, 2),
        "output_finite": finite,
    }
    print(f"  {label}: {timing.median_ms:,.1f} ms (min {timing.min_ms:,.1f}, max {timing.max_ms:,.1f}, "
          f"{reps} reps; first call {first_s:.1f} s; peak {bm.format_memory(timing.peak_memory_bytes)})", flush=True)
    return row


def profile_forward(model, kwargs, device, top: int = 14) -> list[dict[str, Any]]:
    """Device time per kernel name over one forward (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        model(**kwargs)
        bm.synchronize(device)
    rows = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = getattr(evt, "self_cuda_time_total", 0.0)
        if device.type != "cuda":
            us = evt.self_cpu_time_total
        if us > 0:
            rows.append({"name": evt.key[:120], "ms": us / 1e3, "calls": evt.count})
    rows.sort(key=lambda r: -r["ms"])
    return rows[:top]


UNFUSED_SUFFIX = "-unfused"


@contextmanager
def fixed_variant(model: torch.nn.Module, sites, chosen: list[str], fm: str):
    """``bm.fixed_in_place`` for ``fm``; ``<map>-unfused`` also makes every site apply its map in PyTorch."""
    name = fm.removesuffix(UNFUSED_SUFFIX)
    with bm.fixed_in_place(model, sites, chosen, name) as fixed:
        if fm.endswith(UNFUSED_SUFFIX):
            from lincompress.attention import iter_sites

            for _, site in iter_sites(fixed):
                site.feature_map_q.fused = site.feature_map_k.fused = False
        yield fixed


def compile_blocks(model: torch.nn.Module) -> None:
    """Regional compile kept across variants (``lincompress.regional_compile``'s blocks; undone by ``uncompile_blocks``)."""
    for block in compile_regions(model):
        block.compile()


def uncompile_blocks(model: torch.nn.Module) -> None:
    for block in compile_regions(model):
        block._compiled_call_impl = None


def run_config(run: Run, config: Config, modes: list[str], device: torch.device, dtype: torch.dtype) -> None:
    a = run.args
    result: dict[str, Any] = {
        "config": config.name, "note": config.note, "model": {k: v for k, v in config.model.items()},
        "latent": list(config.latent), "tokens": config.tokens, "text_tokens": config.text_tokens,
        "dtype": str(dtype).replace("torch.", ""), "batch_size": 1, "rows": [],
    }
    run.results["configs"].append(result)
    print(f"\n== {config.name}: {config.note}; {config.tokens:,} video tokens", flush=True)

    t0 = time.perf_counter()
    model = build_wan(config, device, dtype)
    result["num_parameters"] = sum(p.numel() for p in model.parameters())
    result["build_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    key = repr(sorted(config.model.items()))
    if key not in run.sites:  # same architecture, same sites: discover once per model config
        run.sites[key] = find_sites(model, config, device, dtype)
    sites, candidates = run.sites[key]
    result["discovery_s"] = round(time.perf_counter() - t0, 2)
    result["num_candidates"] = len(candidates)
    print(f"  built {result['num_parameters'] / 1e9:.2f}B params in {result['build_s']} s; "
          f"{len(candidates)} self-attention sites found in {result['discovery_s']} s", flush=True)

    backend, sdpa_times = (None, {})
    if device.type == "cuda":
        backend, sdpa_times = pick_sdpa_backend(config, device, dtype)
        print("  sdpa per layer: " + ", ".join(f"{k} {v:.2f} ms" for k, v in sdpa_times.items())
              + f" -> {backend.name if backend else 'default'}", flush=True)
    result["sdpa_backend_ms"] = sdpa_times
    result["sdpa_backend"] = backend.name if backend is not None else "default"

    kwargs = wan_inputs(config, config.latent, config.text_tokens, device, dtype, seed=1)
    variants: list[tuple[str, float, str | None, list[str], tuple[str, ...]]] = [("softmax", 0.0, None, [], MODES)]
    for fm in a.feature_maps:
        for t in a.targets:
            variants.append((f"linear {t:g} ({fm})", t, fm, heuristic_selection(candidates, t, "uniform"), MODES))
    for fm, t in (a.extra if (not a.extra_configs or config.name in a.extra_configs) else []):
        variants.append((f"linear {t:g} ({fm})", t, fm, heuristic_selection(candidates, t, "uniform"),
                         tuple(a.extra_modes)))

    if backend is not None:
        from torch.nn.attention import sdpa_kernel

        sdpa_ctx = sdpa_kernel([backend])
    else:
        sdpa_ctx = nullcontext()
    with sdpa_ctx:
        for mode in modes:
            torch._dynamo.reset()
            if mode == "compile":
                compile_blocks(model)
            base_ms = None
            estimate = None
            compiled_kinds: set[str | None] = set()
            for name, t, fm, chosen, variant_modes in variants:
                if mode not in variant_modes:
                    continue
                label = f"{mode:7s} {name}"
                extra_s = a.compile_estimate_s if mode == "compile" and fm not in compiled_kinds else 0.0
                compiled_kinds.add(fm)
                try:
                    if fm is None:
                        row = measure(run, model, kwargs, device, label, estimate, extra_s)
                    else:
                        with fixed_variant(model, sites, chosen, fm):
                            row = measure(run, model, kwargs, device, label, estimate, extra_s)
                except Exception as exc:  # noqa: BLE001 - record the failure, measure the rest
                    traceback.print_exc()
                    print(f"  {label}: FAILED {bm.exception_line(exc, 200)}", flush=True)
                    result["rows"].append({"mode": mode, "variant": name, "target_linear": t, "feature_map": fm,
                                           "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
                    run.save()
                    bm.release_memory(device)
                    continue
                if row is None:
                    continue
                if mode in a.profile_modes and config.name in a.profile_configs and t in (0.0, 1.0):
                    ctx = fixed_variant(model, sites, chosen, fm) if fm is not None else nullcontext()
                    with ctx:
                        row["profile"] = profile_forward(model, kwargs, device)
                    total = sum(r["ms"] for r in row["profile"])
                    print(f"    top kernels ({total:.1f} ms in these):", flush=True)
                    for r in row["profile"]:
                        print(f"      {r['ms']:9.2f} ms {r['calls']:5d}x  {r['name']}", flush=True)
                estimate = row["forward_ms"] if estimate is None else estimate
                if fm is None:
                    base_ms = row["forward_ms"]
                row.update(mode=mode, variant=name, target_linear=t, feature_map=fm, num_linear=len(chosen),
                           linear_sites=chosen, speedup=(base_ms / row["forward_ms"]) if base_ms else None)
                if mode == "compile":
                    row["compile_s"] = row["first_call_s"]
                result["rows"].append(row)
                run.save()
                bm.release_memory(device)
            if mode == "compile":
                uncompile_blocks(model)
    del model, kwargs
    torch._dynamo.reset()
    bm.release_memory(device)


def table(results: dict[str, Any]) -> str:
    """Markdown table (for the README)."""
    lines = [f"Device: {results['environment']['device']} | torch {results['environment']['torch']} | "
             f"triton {results['environment'].get('triton')} | "
             f"{results['configs'][0]['dtype'] if results['configs'] else ''}, batch 1, one denoiser forward", "",
             "| model (tokens) | mode | softmax ms | variant | ms | speed-up | peak GiB |",
             "|---|---|---:|---|---:|---:|---:|"]
    for cfg in results["configs"]:
        for mode in MODES:
            rows = [r for r in cfg["rows"] if r["mode"] == mode]
            if not rows:
                continue
            base = next((r for r in rows if r["feature_map"] is None and "error" not in r), None)
            base_ms = f"{base['forward_ms']:,.1f}" if base else "-"
            for r in rows:
                if "error" in r:
                    lines.append(f"| {cfg['config']} ({cfg['tokens']:,}) | {mode} | {base_ms} | {r['variant']} | "
                                 f"failed: {r['error'][:60]} | | |")
                    continue
                speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
                mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "n/a"
                lines.append(f"| {cfg['config']} ({cfg['tokens']:,}) | {mode} | {base_ms} | {r['variant']} | "
                             f"{r['forward_ms']:,.1f} | {speed} | {mem} |")
        sdpa = cfg.get("sdpa_backend")
        if sdpa:
            lines.append(f"| {cfg['config']}: softmax SDPA backend {sdpa} | | | | | | |")
    return "\n".join(lines)


def parse_configs(text: str, default_modes: list[str], tiny: bool) -> list[tuple[Config, list[str]]]:
    table_ = TINY_CONFIGS if tiny else CONFIGS
    chosen = []
    for item in text.split(","):
        name, _, modes = item.strip().partition(":")
        if name not in table_:
            raise SystemExit(f"unknown config {name!r}; choose from {', '.join(table_)}")
        mode_list = [m for m in modes.split("+") if m] if modes else default_modes
        for m in mode_list:
            if m not in MODES:
                raise SystemExit(f"unknown mode {m!r} for {name}; choose from {MODES}")
        chosen.append((table_[name], mode_list))
    return chosen


def prepare_run(device: torch.device) -> torch.dtype:
    """The dtype a Wan-scale run uses (bf16 on CUDA, with TF32 matmuls; fp32 elsewhere), with dynamo's recompile
    limit raised so that every variant's compiled block graph stays compiled in one process."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def main(argv: list[str] | None = None) -> dict[str, Any]:
    faulthandler.enable()  # a crash inside a compiler or kernel still prints where it happened
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--generation" in argv:  # full text-to-video generation latency: benchmarks/e2e_generation.py
        import e2e_generation

        return e2e_generation.main([x for x in argv if x != "--generation"])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="wan-1.3b:eager+compile,wan-14b-720p:compile,wan-1.3b-2x:compile,wan-1.3b-4x:compile",
                   help="comma-separated name[:mode+mode]; modes eager, compile")
    p.add_argument("--modes", default="eager,compile", help="modes for configs that name none")
    p.add_argument("--targets", default="0.5,0.7,1.0")
    p.add_argument("--feature-maps", default="relu", help="comma-separated feature maps of the linear sites")
    p.add_argument("--extra", default="", help="more variants, as feature_map@target, e.g. hedgehog@0.7,hedgehog@1.0")
    p.add_argument("--extra-modes", default="compile", help="modes the --extra variants run in")
    p.add_argument("--extra-configs", default="", help="configs the --extra variants run in (default: all)")
    p.add_argument("--profile-configs", default="", help="configs whose softmax and 100%% linear forwards get profiled")
    p.add_argument("--profile-modes", default="compile", help="modes profiled")
    p.add_argument("--time-per-variant-s", type=float, default=3.0, help="timed seconds per variant (sets reps)")
    p.add_argument("--compile-estimate-s", type=float, default=45.0,
                   help="compile time assumed for a new block graph when checking the deadline")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--max-reps", type=int, default=10)
    p.add_argument("--deadline-s", type=float, default=540.0, help="start no new measurement after this much wall time")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "e2e.json"))
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="toy sizes, to check the script on a CPU")
    a = p.parse_args(argv)
    bm.parse_targets(a.targets)  # validates; the order given is the order measured
    a.targets = list(dict.fromkeys(float(x) for x in a.targets.split(",")))
    a.feature_maps = [f.strip() for f in a.feature_maps.split(",") if f.strip()]
    from lincompress.feature_maps import FEATURE_MAPS

    a.extra = [(fm.strip(), bm.parse_targets(t)[0]) for fm, _, t in (x.partition("@") for x in a.extra.split(",") if x.strip())]
    a.extra_modes = [m for m in a.extra_modes.split(",") if m]
    a.extra_configs = [c for c in a.extra_configs.split(",") if c]
    a.profile_configs = [c for c in a.profile_configs.split(",") if c]
    a.profile_modes = [m for m in a.profile_modes.split(",") if m]
    for fm in [*a.feature_maps, *(fm for fm, _ in a.extra)]:
        if fm.removesuffix(UNFUSED_SUFFIX) not in FEATURE_MAPS:
            raise SystemExit(f"unknown feature map {fm!r}; choose from {FEATURE_MAPS} (or <map>{UNFUSED_SUFFIX})")
    device = bm.resolve_device(a.device)
    configs = parse_configs(a.configs, [m for m in a.modes.split(",") if m], a.tiny)
    dtype = prepare_run(device)

    run = Run(a)
    run.results = {
        "environment": bm.environment(device),
        "settings": {"targets": a.targets, "feature_maps": a.feature_maps, "selection": "uniform",
                     "extra": [f"{fm}@{t:g}" for fm, t in a.extra], "extra_modes": a.extra_modes,
                     "compile": "regional: block.compile() per transformer block, default mode",
                     "timing": "CUDA events, median; first call (compile) excluded", "batch_size": 1,
                     "text_tokens": TEXT_TOKENS, "deadline_s": a.deadline_s,
                     "kernel_configs": os.environ.get("LINCOMPRESS_LINEAR_ATTENTION_CONFIGS") or "committed table"},
        "configs": [],
    }
    print(f"device: {run.results['environment']['device']}; torch {torch.__version__}; "
          f"linear attention: {run.results['environment']['linear_attention_backend']}", flush=True)
    for config, modes in configs:
        if run.left() < 30:
            print(f"\n== {config.name}: skipped (deadline)", flush=True)
            run.results.setdefault("skipped", []).append(config.name)
            continue
        try:
            run_config(run, config, modes, device, dtype)
        except Exception as exc:  # noqa: BLE001 - keep what was measured, go on with the next configuration
            traceback.print_exc()
            print(f"== {config.name}: FAILED {bm.exception_line(exc, 200)}", flush=True)
            run.results["configs"][-1].setdefault("error", f"{type(exc).__name__}: {str(exc)[:500]}")
            torch._dynamo.reset()
            bm.release_memory(device)
        run.save()
    run.results["wall_s"] = round(run.elapsed(), 1)
    run.results["table_md"] = table(run.results)
    run.save()
    print("\n" + run.results["table_md"], flush=True)
    return run.results


if __name__ == "__main__":
    main()
