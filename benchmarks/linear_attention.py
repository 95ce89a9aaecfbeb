"""Benchmark of ``lincompress::linear_attention`` (fused Triton kernels) on a CUDA GPU.

For each shape it times forward and forward+backward of: our kernels, the PyTorch
reference (eager and ``torch.compile``), softmax SDPA (each backend that runs; the best
is the one to compare with) and flash-linear-attention where installed. Times are GPU
times (one call captured in a CUDA graph, replayed back to back); eager back-to-back
times, which include host overhead, are printed beside them. It prints ms, achieved
GB/s over the minimum bytes, and the fraction of the HBM floor (those bytes at the
measured copy bandwidth), measures our error against an fp32 reference, and writes
everything as JSON.

    python benchmarks/linear_attention.py [--out PATH] [--shapes wan-1.3b ...] [--sweep]

Minimum bytes: forward reads q, k, v and writes o; backward additionally reads q, k,
v, dO and writes dq, dk, dv (so forward+backward counts 11 tensors of that size).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lincompress.kernels  # noqa: E402,F401  (registers the CUDA kernels)
from lincompress import benchmarking as bm  # noqa: E402
from lincompress.kernels import linear_attention_triton as lat  # noqa: E402
from lincompress.ops.linear_attention import (  # noqa: E402
    linear_attention_backward_reference,
    linear_attention_reference,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "linear_attention.json"


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    tokens: int
    head_dim: int

    def tensor_bytes(self, dtype: torch.dtype) -> int:
        return self.batch * self.heads * self.tokens * self.head_dim * torch.finfo(dtype).bits // 8


SHAPES = {
    "wan-1.3b": Shape("wan-1.3b", 1, 12, 32760, 128),
    "wan-14b": Shape("wan-14b", 1, 40, 32760, 128),
    "long-video": Shape("long-video", 1, 12, 75600, 128),
}
FWD_TENSORS, FWD_BWD_TENSORS = 4, 11


def bench(fn: Callable[[], object], rep_ms: int = 200, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean ms per call of back-to-back calls, timed with CUDA events.

    Back to back, as in a model, the host enqueues ahead of the GPU, so host overhead
    shows only where it exceeds the GPU time. Inputs are far larger than L2, so no cache
    flushing is needed between calls.
    """
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    calls = max(3, min(1000, int(rep_ms / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return sorted(times)[len(times) // 2]


def graph_bench(fn: Callable[[], object], rep_ms: int = 200, repeats: int = 5) -> float | None:
    """GPU time in ms: ``fn`` captured once in a CUDA graph, replays timed back to back.

    The graph removes host overhead (Python, dispatch, launches), which for sub-ms ops on
    this machine can exceed the GPU time. None when ``fn`` cannot be captured.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:  # some ops cannot be captured; the eager time still stands
        print(f"  (no CUDA graph: {type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
        torch.cuda.synchronize()
        return None
    try:
        return bench(graph.replay, rep_ms, repeats)
    finally:
        del graph
        torch.cuda.empty_cache()


def host_ms(fn: Callable[[], object], calls: int = 20) -> float:
    """Host (CPU) ms per call to enqueue ``fn``: what bounds it when the GPU finishes first."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e3


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.randn(2**29 // 2, device="cuda", dtype=torch.bfloat16)  # 512 MiB
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def make_inputs(shape: Shape, layout: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dims = (shape.batch, shape.heads, shape.tokens, shape.head_dim)
    if layout == "bnhd":
        dims = (shape.batch, shape.tokens, shape.heads, shape.head_dim)
    return tuple(torch.randn(dims, device="cuda", dtype=dtype, generator=gen) for _ in range(4))


def fwd_bwd(fn: Callable[..., torch.Tensor], q, k, v, grad_out) -> Callable[[], object]:
    """Closure running forward then backward through autograd."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def run() -> object:
        return torch.autograd.grad(fn(*leaves), leaves, grad_out)

    return run


def linear_methods(feature_map: str, layout: str) -> dict[str, Callable[..., torch.Tensor]]:
    def ours(q, k, v):
        return torch.ops.lincompress.linear_attention(q, k, v, feature_map, 1e-6, layout)

    def reference(q, k, v):
        return linear_attention_reference(q, k, v, feature_map, 1e-6, layout)

    return {"ours (triton)": ours, "reference eager": reference, "reference compiled": torch.compile(reference)}


def sdpa_methods() -> dict[str, Callable[..., torch.Tensor]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def with_backend(backend: SDPBackend) -> Callable[..., torch.Tensor]:
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return run

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    return {f"sdpa softmax ({n})": with_backend(b) for n, b in names.items()}


def fla_note() -> str | None:
    """flash-linear-attention is only a comparison point; say why it is missing."""
    try:
        import fla  # noqa: F401
    except ImportError:
        return "flash-linear-attention not installed on this machine: skipped"
    return "flash-linear-attention installed but not wired in (its kernels are causal/chunked): skipped"


def time_method(fn, inputs, rep_ms: int, transpose: bool = False, repeats: int = 5) -> dict[str, float | str]:
    """GPU (CUDA graph) and eager ms of forward and forward+backward of one method.

    ``transpose`` gives SDPA (B, H, N, D) views. ``*_ms`` is the GPU time (the eager time
    where capture fails); ``*_eager_ms`` is back-to-back eager calls, host overhead included.
    """
    q, k, v, g = (t.transpose(1, 2) for t in inputs) if transpose else inputs
    forward = lambda: fn(q, k, v)  # noqa: E731
    both = fwd_bwd(fn, q, k, v, g)
    row: dict[str, float | str] = {}
    try:
        with torch.no_grad():
            row["fwd_eager_ms"] = bench(forward, rep_ms, repeats)
            row["fwd_ms"] = graph_bench(forward, rep_ms, repeats) or row["fwd_eager_ms"]
        row["fwd_bwd_eager_ms"] = bench(both, rep_ms, repeats)
        row["fwd_bwd_ms"] = graph_bench(both, rep_ms, repeats) or row["fwd_bwd_eager_ms"]
    except Exception as exc:  # a backend that cannot run this shape is reported, not fatal
        return {"error": bm.exception_line(exc, 120)}
    return row


def max_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the error relative to the output's scale."""
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def norm_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def errors_vs_fp32(inputs, feature_map: str, layout: str) -> dict[str, float]:
    """Our bf16 results against the fp32 reference on the same (bf16-rounded) inputs."""
    q, k, v, g = inputs
    out = lat.linear_attention_forward_triton(q, k, v, feature_map, 1e-6, layout)
    grads = lat.linear_attention_backward_triton(g, q, k, v, feature_map, 1e-6, layout)
    wide = [t.float() for t in (g, q, k, v)]
    want_out = linear_attention_reference(*wide[1:], feature_map, 1e-6, layout)
    want_grads = linear_attention_backward_reference(*wide, feature_map, 1e-6, layout)
    result = {"out_max_rel": max_rel(out, want_out), "out_norm_rel": norm_rel(out, want_out)}
    for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
        result[f"{name}_max_rel"] = max_rel(got, want)
        result[f"{name}_norm_rel"] = norm_rel(got, want)
    return result


def add_bandwidth(row: dict, shape: Shape, dtype: torch.dtype, bandwidth: float) -> dict:
    """GB/s over the minimum bytes and the fraction of the HBM floor those bytes set."""
    for key, tensors in (("fwd", FWD_TENSORS), ("fwd_bwd", FWD_BWD_TENSORS)):
        if f"{key}_ms" in row:
            nbytes = tensors * shape.tensor_bytes(dtype)
            seconds = row[f"{key}_ms"] * 1e-3
            row[f"{key}_gbps"] = nbytes / seconds / 1e9
            row[f"{key}_floor_frac"] = nbytes / bandwidth / seconds
            row[f"{key}_floor_ms"] = nbytes / bandwidth * 1e3
    return row


def run_shape(shape: Shape, args, bandwidth: float) -> dict:
    dtype = torch.bfloat16
    inputs = make_inputs(shape, args.layout, dtype)
    heavy = shape.heads * shape.tokens**2 > 2e10  # softmax attention: keep its repeats short
    rows = {}
    for name, fn in linear_methods(args.feature_map, args.layout).items():
        rows[name] = time_method(fn, inputs, args.rep_ms)
    for name, fn in sdpa_methods().items():
        rows[name] = time_method(fn, inputs, 30 if heavy else args.rep_ms, args.layout == "bnhd", 3 if heavy else 5)
    rows = {n: add_bandwidth(r, shape, dtype, bandwidth) for n, r in rows.items()}
    torch.cuda.empty_cache()
    return {"shape": asdict(shape), "methods": rows, "errors_vs_fp32": errors_vs_fp32(inputs, args.feature_map, args.layout)}


def speed_ratios(rows: dict[str, dict]) -> dict[str, dict[str, float]]:
    """How many times faster ours is than each other method."""
    ours = rows["ours (triton)"]
    ratios = {}
    for name, row in rows.items():
        if name != "ours (triton)" and "fwd_ms" in row and "fwd_ms" in ours:
            ratios[name] = {k: row[k] / ours[k] for k in ("fwd_ms", "fwd_bwd_ms")}
    return ratios


def print_table(result: dict) -> None:
    shape, rows = result["shape"], result["methods"]
    print(f"\n{shape['name']}: B{shape['batch']} H{shape['heads']} N{shape['tokens']} D{shape['head_dim']} bf16")
    print(f"{'method':24s} {'fwd ms':>9s} {'GB/s':>7s} {'%floor':>7s} {'fwd+bwd ms':>11s} {'GB/s':>7s} {'%floor':>7s}"
          f" {'x ours f/fb':>12s} {'eager f/fb ms':>15s}")  # fmt: skip
    ratios = result["speed_ratios"]
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:24s} {row['error']}")
            continue
        ratio = ratios.get(name)
        ratio_txt = f"{ratio['fwd_ms']:.1f}/{ratio['fwd_bwd_ms']:.1f}" if ratio else "-"
        print(
            f"{name:24s} {row['fwd_ms']:9.3f} {row['fwd_gbps']:7.0f} {100 * row['fwd_floor_frac']:6.1f}% "
            f"{row['fwd_bwd_ms']:11.3f} {row['fwd_bwd_gbps']:7.0f} {100 * row['fwd_bwd_floor_frac']:6.1f}% {ratio_txt:>12s}"
            f" {row['fwd_eager_ms']:7.3f}/{row['fwd_bwd_eager_ms']:.3f}"
        )
    err = result["errors_vs_fp32"]
    print("errors vs fp32 reference (max|d|/max|ref|, norm): " + ", ".join(
        f"{n} {err[n + '_max_rel']:.1e}/{err[n + '_norm_rel']:.1e}" for n in ("out", "dq", "dk", "dv")
    ))  # fmt: skip


SWEEP_SPACES = {  # (block_n, num_warps, num_stages, programs_per_sm) per kernel
    "state": list(itertools.product((64, 128), (4, 8), (3,), (1, 2))),
    "output": list(itertools.product((64, 128), (4, 8), (3,), (1, 2))),
    "bwd_query": list(itertools.product((32, 64), (8, 16), (2, 3), (2,))),
    "bwd_key": list(itertools.product((32, 64), (8, 16), (2, 3), (2,))),
}


def sweep(shape: Shape, args) -> list[dict]:
    """Coordinate sweep of each kernel's launch config (others at default) at one shape."""
    q, k, v, g = make_inputs(shape, args.layout, torch.bfloat16)
    fm, layout = args.feature_map, args.layout
    fwd = lambda cfg: lambda: lat.linear_attention_forward_triton(q, k, v, fm, 1e-6, layout, configs=cfg)  # noqa: E731
    bwd = lambda cfg: lambda: lat.linear_attention_backward_triton(g, q, k, v, fm, 1e-6, layout, configs=cfg)  # noqa: E731
    results = []
    for kernel, space in SWEEP_SPACES.items():
        for block_n, warps, stages, pps in space:
            cfg = lat.with_overrides(kernel, block_n=block_n, num_warps=warps, num_stages=stages, programs_per_sm=pps)
            try:
                ms = graph_bench((fwd if kernel in ("state", "output") else bwd)(cfg), 30, repeats=3) or math.inf
            except Exception as exc:  # out of shared memory / registers for this config
                ms = math.inf
                print(f"  {kernel} {block_n}/{warps}/{stages}/{pps}: {type(exc).__name__}")
            results.append({"kernel": kernel, "block_n": block_n, "num_warps": warps, "num_stages": stages,
                            "programs_per_sm": pps, "ms": ms})  # fmt: skip
    for kernel in lat.DEFAULT_CONFIGS:
        best = sorted((r for r in results if r["kernel"] == kernel), key=lambda r: r["ms"])[:5]
        print(f"sweep {kernel} ({'fwd' if kernel in ('state', 'output') else 'bwd'} ms): " + "; ".join(
            f"{r['block_n']}/{r['num_warps']}/{r['num_stages']}/{r['programs_per_sm']}={r['ms']:.3f}" for r in best
        ))  # fmt: skip
    return results


def breakdown(shape: Shape, args) -> dict[str, float]:
    """ms of each pass of our kernels (the reductions between passes included in their pass)."""
    q, k, v, g = make_inputs(shape, args.layout, torch.bfloat16)
    fm, layout = args.feature_map, args.layout
    shapes, feature, dot = lat._shapes(q, k, v, layout), lat._FEATURE_IDS[fm], lat._dot_dtype(q, k, v)
    state = lat._launch_state(k, v, shapes, feature, layout, dot, None)
    _, d_state = lat._launch_bwd_query(g, q, state, 1e-6, shapes, feature, layout, dot, None)
    passes = {
        "state pass": lambda: lat._launch_state(k, v, shapes, feature, layout, dot, None),
        "forward": lambda: lat.linear_attention_forward_triton(q, k, v, fm, 1e-6, layout),
        "bwd query pass": lambda: lat._launch_bwd_query(g, q, state, 1e-6, shapes, feature, layout, dot, None),
        "bwd key pass": lambda: lat._launch_bwd_key(k, v, d_state, shapes, feature, layout, dot, None),
        "backward": lambda: lat.linear_attention_backward_triton(g, q, k, v, fm, 1e-6, layout),
        "op fwd+bwd": fwd_bwd(linear_methods(fm, layout)["ours (triton)"], q, k, v, g),
    }
    units = {"state pass": 2, "forward": 4, "bwd query pass": 3, "bwd key pass": 4, "backward": 9, "op fwd+bwd": 13}
    nbytes = shape.tensor_bytes(torch.bfloat16)
    print(f"breakdown at {shape.name} (GPU time via CUDA graph; host = CPU time to enqueue one call):")
    times = {}
    for name, fn in passes.items():
        times[name] = {"gpu_ms": graph_bench(fn), "host_ms": host_ms(fn)}
        gpu = times[name]["gpu_ms"]
        print(f"  {name:15s} gpu {gpu:7.3f} ms  {units[name] * nbytes / gpu / 1e6:6.0f} GB/s ({units[name]} tensors)"
              f"  host {times[name]['host_ms']:.3f} ms")  # fmt: skip
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--layout", default="bnhd", choices=["bnhd", "bhnd"])
    parser.add_argument("--feature-map", default="elu1", choices=["identity", "relu", "elu1"])
    parser.add_argument("--rep-ms", type=int, default=200)
    parser.add_argument("--sweep", action="store_true", help="also sweep kernel launch configs at the first shape")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/linear_attention.py needs a CUDA GPU")
    bandwidth = copy_bandwidth()
    device = torch.cuda.get_device_name()
    print(f"device: {device}; torch {torch.__version__}; copy bandwidth {bandwidth / 1e12:.2f} TB/s (read+write)")
    report = {"device": device, "torch": torch.__version__, "copy_bandwidth_Bps": bandwidth,
              "layout": args.layout, "feature_map": args.feature_map, "fla": fla_note(), "shapes": []}  # fmt: skip
    if args.sweep:
        report["sweep"] = sweep(SHAPES[args.shapes[0]], args)
    report["breakdown_ms"] = breakdown(SHAPES[args.shapes[0]], args)
    for name in args.shapes:
        result = run_shape(SHAPES[name], args, bandwidth)
        result["speed_ratios"] = speed_ratios(result["methods"])
        report["shapes"].append(result)
        print_table(result)
    print(report["fla"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
