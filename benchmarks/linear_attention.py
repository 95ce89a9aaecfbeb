"""Benchmark of ``lincompress::linear_attention``: every feature map, fused vs unfused Hedgehog, on a CUDA GPU.

Per shape and feature map (``--feature-maps``, default relu, elu1, hedgehog; q and k are
the *projected* q/k, as a site passes them) it times forward and forward+backward of

* ``<map> eager``: ``lincompress.ops.linear_attention`` called eagerly, what models run
  (one autograd.Function; the forward's per-head state feeds the backward);
* ``<map> op``: ``torch.ops.lincompress.linear_attention``, what ``torch.compile`` /
  ``torch.export`` graphs hold (the backward recomputes the state);
* ``hedgehog unfused`` (with hedgehog): the path before the fused feature map, PyTorch
  ``[softmax(x), softmax(-x)]`` in fp32 cast to bf16, then the op with ``identity`` at
  Dk = 2 D (autograd through the softmaxes);
* the PyTorch reference compiled (``--reference``) and softmax SDPA (``--sdpa``), for scale.

Times are GPU times (one call captured in a CUDA graph, replayed back to back); eager
back-to-back times, which include host overhead, are printed beside them, and the host
(CPU) time per call of the eager path and of the op is reported (the dispatch overhead).
It prints ms, achieved GB/s over the minimum bytes and the fraction of the HBM floor
(those bytes at the measured copy bandwidth), the max relative error of out/dq/dk/dv
against an fp32 reference (max|ours - ref| / max|ref|), and writes JSON naming the device.

    python benchmarks/linear_attention.py [--shapes wan-1.3b ...] [--feature-maps relu,elu1,hedgehog] [--out PATH]
    python benchmarks/linear_attention.py --smoke      # CPU: tiny sizes, the PyTorch reference, dispatch overhead

Minimum bytes: forward reads q, k, v and writes o; backward additionally reads q, k,
v, dO and writes dq, dk, dv (so forward+backward counts 11 tensors of that size).
Launch configs come from ``lincompress/kernels/tuned_configs.py``, or from a tuner JSON
named by ``LINCOMPRESS_LINEAR_ATTENTION_CONFIGS`` (``benchmarks/tune_linear_attention.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lincompress.kernels  # noqa: E402,F401  (registers the CUDA kernels)
from lincompress import atomic  # noqa: E402
from lincompress import benchmarking as bm  # noqa: E402
from lincompress.ops import linear_attention as linear_attention_fn  # noqa: E402
from lincompress.ops import spec  # noqa: E402
from lincompress.ops.linear_attention import (  # noqa: E402
    REFERENCE_BACKEND,
    Backend,
    linear_attention_backward_reference,
    linear_attention_reference,
    register_backend,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "linear_attention.json"
EPS = 1e-6


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
    "wan-1.3b-d64": Shape("wan-1.3b-d64", 1, 24, 32760, 64),
    "wan-14b": Shape("wan-14b", 1, 40, 32760, 128),
    "long-video": Shape("long-video", 1, 12, 75600, 128),
}
SMOKE_SHAPE = Shape("smoke", 1, 2, 64, 16)
FWD_TENSORS, FWD_BWD_TENSORS = 4, 11


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(fn: Callable[[], object], rep_ms: int = 200, repeats: int = 5, device: torch.device | None = None) -> float:
    """Median over ``repeats`` of the mean ms per call of back-to-back calls (CUDA events; host clock on CPU).

    Back to back, as in a model, the host enqueues ahead of the GPU, so host overhead
    shows only where it exceeds the GPU time. Inputs are far larger than L2, so no cache
    flushing is needed between calls.
    """
    device = device or torch.device("cuda")
    for _ in range(3):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
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

    The graph removes host overhead (Python, dispatch, launches), which for sub-ms ops
    can exceed the GPU time. None when ``fn`` cannot be captured.
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


def host_ms(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Host (CPU) ms per call to enqueue ``fn``: what bounds it when the device finishes first."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    _sync(device)
    return elapsed / calls * 1e3


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.randn(2**29 // 2, device="cuda", dtype=torch.bfloat16)  # 512 MiB
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


# --------------------------------------------------------------------------- what is timed


def make_inputs(shape: Shape, layout: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    dims = (shape.batch, shape.heads, shape.tokens, shape.head_dim)
    if layout == "bnhd":
        dims = (shape.batch, shape.tokens, shape.heads, shape.head_dim)
    return tuple(torch.randn(dims, device=device, dtype=dtype, generator=gen) for _ in range(4))


def fwd_bwd(fn: Callable[..., torch.Tensor], q, k, v, grad_out) -> Callable[[], object]:
    """Closure running forward then backward through autograd."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def run() -> object:
        return torch.autograd.grad(fn(*leaves), leaves, grad_out)

    return run


def unfused_hedgehog(layout: str) -> Callable[..., torch.Tensor]:
    """The pre-fusion Hedgehog site: PyTorch softmax features (fp32, cast back), then the op with identity at 2 D."""
    phi = spec.feature_map_spec("hedgehog").phi

    def run(q, k, v):
        fq, fk = phi(q.float()).to(q.dtype), phi(k.float()).to(k.dtype)
        return linear_attention_fn(fq, fk, v, "identity", EPS, layout)

    return run


def methods(feature_map: str, layout: str, args) -> dict[str, Callable[..., torch.Tensor]]:
    rows = {
        f"{feature_map} eager": lambda q, k, v: linear_attention_fn(q, k, v, feature_map, EPS, layout),
        f"{feature_map} op": lambda q, k, v: torch.ops.lincompress.linear_attention(q, k, v, feature_map, EPS, layout),
    }
    if feature_map == "hedgehog":
        rows["hedgehog unfused (Dk 2D)"] = unfused_hedgehog(layout)
    if args.reference and not args.smoke:
        rows[f"{feature_map} reference compiled"] = torch.compile(
            lambda q, k, v: linear_attention_reference(q, k, v, feature_map, EPS, layout)
        )
    return rows


def sdpa_methods() -> dict[str, Callable[..., torch.Tensor]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def with_backend(backend: SDPBackend) -> Callable[..., torch.Tensor]:
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return run

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    return {f"sdpa softmax ({n})": with_backend(b) for n, b in names.items()}


def time_method(fn, inputs, args, device: torch.device, transpose: bool = False, rep_ms: int | None = None,
                repeats: int = 5) -> dict[str, float | str]:  # fmt: skip
    """GPU (CUDA graph) and eager ms of forward and forward+backward, and host ms of the eager calls.

    ``transpose`` gives SDPA (B, H, N, D) views. ``*_ms`` is the GPU time (the eager time
    where capture fails or on CPU); ``*_eager_ms`` is back-to-back eager calls, host overhead included.
    """
    rep_ms = rep_ms or args.rep_ms
    q, k, v, g = (t.transpose(1, 2) for t in inputs) if transpose else inputs
    forward = lambda: fn(q, k, v)  # noqa: E731
    both = fwd_bwd(fn, q, k, v, g)
    row: dict[str, float | str] = {}
    try:
        with torch.no_grad():
            row["fwd_eager_ms"] = bench(forward, rep_ms, repeats, device)
            row["fwd_ms"] = (graph_bench(forward, rep_ms, repeats) if device.type == "cuda" else None) or row["fwd_eager_ms"]
            row["fwd_host_ms"] = host_ms(forward, device)
        row["fwd_bwd_eager_ms"] = bench(both, rep_ms, repeats, device)
        row["fwd_bwd_ms"] = (graph_bench(both, rep_ms, repeats) if device.type == "cuda" else None) or row["fwd_bwd_eager_ms"]
        row["fwd_bwd_host_ms"] = host_ms(both, device)
    except Exception as exc:  # a backend that cannot run this shape is reported, not fatal
        return {"error": bm.exception_line(exc, 120)}
    return row


def max_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the error relative to the output's scale."""
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def norm_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def errors_vs_fp32(fn: Callable[..., torch.Tensor], inputs, feature_map: str, layout: str) -> dict[str, float]:
    """A method's results (bf16 in) against the fp32 reference on the same bf16-rounded inputs."""
    q, k, v, g = inputs
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, g)
    wide = [t.float() for t in (g, q, k, v)]
    want_out = linear_attention_reference(*wide[1:], feature_map, EPS, layout)
    want_grads = linear_attention_backward_reference(*wide, feature_map, EPS, layout)
    result = {"out_max_rel": max_rel(out, want_out), "out_norm_rel": norm_rel(out, want_out)}
    for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
        result[f"{name}_max_rel"] = max_rel(got, want)
        result[f"{name}_norm_rel"] = norm_rel(got, want)
    result["max_rel"] = max(result[f"{n}_max_rel"] for n in ("out", "dq", "dk", "dv"))
    return result


def add_bandwidth(row: dict, shape: Shape, dtype: torch.dtype, bandwidth: float | None) -> dict:
    """GB/s over the minimum bytes and the fraction of the HBM floor those bytes set."""
    for key, tensors in (("fwd", FWD_TENSORS), ("fwd_bwd", FWD_BWD_TENSORS)):
        if f"{key}_ms" in row and bandwidth:
            nbytes = tensors * shape.tensor_bytes(dtype)
            seconds = row[f"{key}_ms"] * 1e-3
            row[f"{key}_gbps"] = nbytes / seconds / 1e9
            row[f"{key}_floor_frac"] = nbytes / bandwidth / seconds
            row[f"{key}_floor_ms"] = nbytes / bandwidth * 1e3
    return row


def breakdown(shape: Shape, feature_map: str, layout: str, device: torch.device) -> dict[str, dict[str, float | None]]:
    """GPU and host ms of each pass of the fused kernels (the reductions between passes included)."""
    from lincompress.kernels import linear_attention_triton as lat

    q, k, v, g = make_inputs(shape, layout, torch.bfloat16, device)
    plan = lat.make_plan(q, k, v, feature_map, layout)
    state = lat.launch_state(k, v, plan)
    out = torch.empty_like(v)
    _, d_state = lat.launch_bwd_query(g, q, state, EPS, plan)
    passes = {
        "state pass": lambda: lat.launch_state(k, v, plan),
        "output pass": lambda: lat.launch_output(q, state, out, EPS, plan),
        "bwd query side": lambda: lat.launch_bwd_query(g, q, state, EPS, plan),
        "bwd key pass": lambda: lat.launch_bwd_key(k, v, d_state, plan),
    }
    times = {}
    for name, fn in passes.items():
        times[name] = {"gpu_ms": graph_bench(fn), "host_ms": host_ms(fn, device)}
    times["configs"] = {name: c.to_dict() for name, c in plan.configs.items()}
    return times


# --------------------------------------------------------------------------- dispatch overhead (CPU)


def dispatch_overhead(calls: int = 1000) -> dict[str, float]:
    """Host us per fwd+bwd through the eager path and through the registered op, with a CPU backend doing no work.

    What remains of the op's CPU cost besides the kernels themselves: validation, the
    wrapper layers and autograd (plus, on CUDA, the launches and the partial sums).
    """
    empty = Backend(
        forward=lambda q, k, v, fm, eps, layout, keep: (torch.empty_like(v), None),
        backward=lambda g, q, k, v, state, fm, eps, layout: (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)),
    )
    q, k, v = (torch.randn(1, 2, 4, 8, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(1, 2, 4, 8)
    paths = {
        "eager path (linear_attention)": lambda: linear_attention_fn(q, k, v, "hedgehog", EPS, "bhnd"),
        "registered op (torch.ops)": lambda: torch.ops.lincompress.linear_attention(q, k, v, "hedgehog", EPS, "bhnd"),
    }
    result = {}
    register_backend("cpu", empty)
    try:
        for name, fn in paths.items():
            step = lambda: torch.autograd.grad(fn(), (q, k, v), grad_out)  # noqa: E731
            for _ in range(30):
                step()
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(calls // 5):
                    step()
                samples.append((time.perf_counter() - start) / (calls // 5) * 1e6)
            result[f"{name} fwd+bwd us"] = min(samples)  # the least disturbed sample: other work shares the CPU
        bare = lambda: torch.autograd.grad((q * 1.0 + k + v).sum(), (q, k, v))  # noqa: E731
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls // 5):
                bare()
            samples.append((time.perf_counter() - start) / (calls // 5) * 1e6)
        result["autograd floor (3 elementwise ops) fwd+bwd us"] = min(samples)
    finally:
        register_backend("cpu", REFERENCE_BACKEND)
    return result


# --------------------------------------------------------------------------- report


def run_shape(shape: Shape, args, device: torch.device, dtype: torch.dtype, bandwidth: float | None) -> dict:
    inputs = make_inputs(shape, args.layout, dtype, device)
    rows: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    for fm in args.feature_maps:
        for name, fn in methods(fm, args.layout, args).items():
            rows[name] = time_method(fn, inputs, args, device)
            rows[name]["feature_map"] = fm
            if not name.endswith("compiled"):
                errors[name] = errors_vs_fp32(fn, inputs, fm, args.layout)
    if args.sdpa and device.type == "cuda":
        heavy = shape.heads * shape.tokens**2 > 2e10  # softmax attention: keep its repeats short
        for name, fn in sdpa_methods().items():
            rows[name] = time_method(fn, inputs, args, device, args.layout == "bnhd", 30 if heavy else None,
                                     3 if heavy else 5)  # fmt: skip
    rows = {n: add_bandwidth(r, shape, dtype, bandwidth) for n, r in rows.items()}
    result = {"shape": asdict(shape), "methods": rows, "errors_vs_fp32": errors}
    if device.type == "cuda":
        result["breakdown_ms"] = {fm: breakdown(shape, fm, args.layout, device) for fm in args.feature_maps}
    del inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def print_table(result: dict) -> None:
    shape, rows, errors = result["shape"], result["methods"], result["errors_vs_fp32"]
    print(f"\n{shape['name']}: B{shape['batch']} H{shape['heads']} N{shape['tokens']} D{shape['head_dim']}")
    print(f"{'method':34s} {'fwd ms':>8s} {'%floor':>7s} {'fwd+bwd ms':>11s} {'%floor':>7s} {'eager f/fb ms':>15s}"
          f" {'host f/fb ms':>14s} {'max rel err':>11s}")  # fmt: skip
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:34s} {row['error']}")
            continue
        floor = (f"{100 * row['fwd_floor_frac']:6.1f}%", f"{100 * row['fwd_bwd_floor_frac']:6.1f}%") \
            if "fwd_floor_frac" in row else ("     -", "     -")  # fmt: skip
        err = f"{errors[name]['max_rel']:.1e}" if name in errors else "-"
        print(f"{name:34s} {row['fwd_ms']:8.3f} {floor[0]:>7s} {row['fwd_bwd_ms']:11.3f} {floor[1]:>7s}"
              f" {row['fwd_eager_ms']:7.3f}/{row['fwd_bwd_eager_ms']:<7.3f} {row['fwd_host_ms']:6.3f}/{row['fwd_bwd_host_ms']:<7.3f}"
              f" {err:>11s}")  # fmt: skip
    for fm, passes in result.get("breakdown_ms", {}).items():
        print(f"  {fm} passes: " + ", ".join(f"{n} {t['gpu_ms']:.3f} ms (host {t['host_ms']:.3f})"
                                            for n, t in passes.items() if n != "configs" and t["gpu_ms"]))  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--shapes", nargs="+", default=["wan-1.3b"], choices=list(SHAPES))
    parser.add_argument("--layout", default="bnhd", choices=list(spec.LAYOUTS))
    parser.add_argument("--feature-maps", default="relu,elu1,hedgehog")
    parser.add_argument("--rep-ms", type=int, default=200)
    parser.add_argument("--reference", action="store_true", help="also time torch.compile of the PyTorch reference")
    parser.add_argument("--sdpa", action="store_true", help="also time softmax SDPA (cuDNN, flash)")
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny sizes, the reference backend, dispatch overhead")
    args = parser.parse_args(argv)
    args.feature_maps = [f for f in args.feature_maps.split(",") if f]
    for fm in args.feature_maps:
        if fm not in spec.FEATURE_MAPS:
            raise SystemExit(f"--feature-maps: unknown {fm!r}; choose from {spec.FEATURE_MAP_NAMES}")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("benchmarks/linear_attention.py needs a CUDA GPU (or --smoke on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if args.smoke:
        args.rep_ms = 1
    bandwidth = copy_bandwidth() if device.type == "cuda" else None
    name = bm.device_name(device)
    print(f"device: {name}; torch {torch.__version__}"
          + (f"; copy bandwidth {bandwidth / 1e12:.2f} TB/s (read+write)" if bandwidth else "")
          + f"; kernel configs: {os.environ.get('LINCOMPRESS_LINEAR_ATTENTION_CONFIGS') or 'committed table'}")
    report = {"device": name, "environment": bm.environment(device), "copy_bandwidth_Bps": bandwidth,
              "layout": args.layout, "feature_maps": args.feature_maps, "dtype": str(dtype),
              "kernel_configs": os.environ.get("LINCOMPRESS_LINEAR_ATTENTION_CONFIGS") or "committed table",
              "shapes": []}  # fmt: skip
    for shape in ([SMOKE_SHAPE] if args.smoke else [SHAPES[s] for s in args.shapes]):
        result = run_shape(shape, args, device, dtype, bandwidth)
        report["shapes"].append(result)
        print_table(result)
        atomic.write_json(args.out, report)
    report["dispatch_overhead_cpu_us"] = dispatch_overhead()
    print("dispatch overhead (CPU, a backend doing no work): " + ", ".join(
        f"{k} {v:.0f}" for k, v in report["dispatch_overhead_cpu_us"].items()))  # fmt: skip
    atomic.write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
