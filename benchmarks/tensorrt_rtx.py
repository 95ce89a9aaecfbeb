"""A real TensorRT engine from our ONNX export: TensorRT-RTX through onnxruntime's NvTensorRTRTX plugin EP.

TensorRT's own builder is not installable from the registries this project can reach;
``onnxruntime-ep-nv-tensorrt-rtx-cu13`` (PyPI) bundles TensorRT-RTX 1.7 (builder + ONNX
parser) as an onnxruntime plugin execution provider. This script builds engines with it
from ``lincompress export --format onnx`` files and checks them against PyTorch:

1. **Device check.** The EP serves only the GPUs TensorRT-RTX targets: compute
   capability 8.6, 8.9 or >= 12.0 (RTX-class Ampere, Ada, Blackwell; its own message).
   Hopper (H100/H200, 9.0) is refused: onnxruntime then lists no device for the EP. Seen
   on this project's H100 (onnxruntime 1.30, EP 0.5.0, whose TensorRT-RTX 1.7 libraries
   load): the script records the reason and stops, it never falls back to another EP.
2. **Correctness.** Tiny Wan (``e2e.TINY_CONFIGS``), fixed at 0.5 linear (relu), fp32,
   exported once with dynamic token axes, both as the ``lincompress::LinearAttention``
   function-node file and ``--decompose``; the engine's output vs PyTorch at two token
   counts (one file), max abs / relative L2 error.
3. **Latency** (``--latency``): Wan-1.3B blocks (12 x 128 heads, FFN 8960) with
   ``--latency-layers`` layers at the full 480p/81-frame latent (32,760 tokens), fp16
   ONNX, targets 0 and 1.0 (and those given): TensorRT-RTX vs PyTorch eager (our Triton
   kernels; cuDNN/flash SDPA) on the same model. ``session.run`` timings include the
   host<->device copies of inputs and output (a few MB).

Usage (GPU, wheel installed)::

    python benchmarks/tensorrt_rtx.py --json benchmarks/results/tensorrt_rtx.json --latency
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import e2e  # noqa: E402  (Wan configs and builders)

from lincompress import Target, atomic  # noqa: E402
from lincompress import benchmarking as bm  # noqa: E402
from lincompress.exporters._common import ExportSource  # noqa: E402
from lincompress.exporters.onnx import count_attention_nodes, export_onnx  # noqa: E402
from lincompress.selection import heuristic_selection  # noqa: E402

# --------------------------------------------------------------------------- the EP and its devices


def load_ep():
    """(onnxruntime, EP name, the EP's OrtEpDevices, every discovered device described) after registering the EP."""
    import onnxruntime as ort
    import onnxruntime_ep_nv_tensorrt_rtx as trt_ep

    name = trt_ep.get_ep_name()
    try:
        ort.register_execution_provider_library(name, trt_ep.get_library_path())
    except Exception as exc:  # registering twice in one process raises; anything else is real
        if "already" not in str(exc).lower():
            raise
    devices = ort.get_ep_devices()
    described = [{"ep": d.ep_name, "type": str(d.device.type), "vendor_id": hex(d.device.vendor_id),
                  "device_id": hex(d.device.device_id), "metadata": dict(d.device.metadata)} for d in devices]
    return ort, name, [d for d in devices if d.ep_name == name], described


SUPPORTED_CAPABILITIES = "8.6, 8.9 or >= 12.0"


def capability_supported(major: int, minor: int) -> bool:
    """TensorRT-RTX's GPUs: sm_86, sm_89 and sm_120+ (the EP refuses the rest, Hopper's sm_90 included)."""
    return (major, minor) in ((8, 6), (8, 9)) or major >= 12


# --------------------------------------------------------------------------- models


def fixed_wan(config: e2e.Config, t: float, device: torch.device, dtype: torch.dtype):
    """The Wan model, its sites and a uniform ``t`` of its self-attention sites to make linear."""
    model = e2e.build_wan(config, device, dtype)
    sites, candidates = e2e.find_sites(model, config, device, dtype)
    return model, sites, heuristic_selection(candidates, t, "uniform") if t > 0 else []


def session_for(ort, ep_devices, path: Path):
    """A session on the EP alone: a node TensorRT-RTX cannot take fails the build instead of falling back to the CPU."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(ep_devices, {})
    return ort.InferenceSession(str(path), sess_options=so)


def feeds_for(session, kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    return {i.name: kwargs[i.name].detach().cpu().numpy() for i in session.get_inputs()}


def errors(out: np.ndarray, ref: torch.Tensor) -> dict[str, float]:
    o, r = torch.from_numpy(out).float(), ref.detach().float().cpu()
    return {"max_abs_err": float((o - r).abs().max()), "rel_l2_err": float((o - r).norm() / r.norm().clamp_min(1e-12))}


def correctness(ort, ep_devices, workdir: Path) -> list[dict[str, Any]]:
    """Tiny Wan at 0.5 linear, fp32: engine vs PyTorch at two token counts, function-node and decomposed files."""
    config, bigger = e2e.TINY_CONFIGS["tiny"], e2e.TINY_CONFIGS["tiny-2x"]
    cpu = torch.device("cpu")
    model, sites, selection = fixed_wan(config, 0.5, cpu, torch.float32)
    with bm.fixed_in_place(model, sites, selection, "relu"):
        return _correctness(ort, ep_devices, workdir, model, len(selection), config, bigger)


def _correctness(ort, ep_devices, workdir: Path, model, k: int, config: e2e.Config, bigger: e2e.Config) -> list[dict[str, Any]]:
    cpu = torch.device("cpu")
    inputs = [e2e.wan_inputs(c, c.latent, c.text_tokens, cpu, torch.float32, seed=3) for c in (config, bigger)]
    target = Target(model=model, example_inputs=lambda b: e2e.wan_inputs(config, config.latent, config.text_tokens, cpu,
                                                                           torch.float32, seed=1), name=config.name)
    rows = []
    for decompose in (False, True):
        path = workdir / f"tiny_{'decomposed' if decompose else 'function'}.onnx"
        export_onnx(ExportSource(model, target), path, decompose=decompose, batch=1)
        counts = dict(count_attention_nodes(path))
        row: dict[str, Any] = {"model": "tiny-wan", "decompose": decompose, "num_linear": k, "attention_nodes": counts}
        try:
            t0 = time.perf_counter()
            session = session_for(ort, ep_devices, path)
            row["session_s"] = round(time.perf_counter() - t0, 2)
            row["providers"] = session.get_providers()
            for kwargs, c in zip(inputs, (config, bigger)):
                with torch.no_grad():
                    ref = bm.model_output(model(**kwargs))
                t0 = time.perf_counter()
                out = session.run(None, feeds_for(session, kwargs))[0]
                row[f"tokens_{c.tokens}"] = {**errors(out, ref), "first_run_s": round(time.perf_counter() - t0, 2)}
        except Exception as exc:
            row["error"] = bm.exception_line(exc, 400)
        print(f"  tiny-wan {'decomposed' if decompose else 'function-node'}: {json.dumps(row)}", flush=True)
        rows.append(row)
    return rows


def latency(ort, ep_devices, workdir: Path, args) -> list[dict[str, Any]]:
    """Wan-1.3B blocks at the full 480p latent, fp16: TensorRT-RTX vs PyTorch eager, per target."""
    device = torch.device("cuda")
    base = e2e.CONFIGS["wan-1.3b"]
    config = e2e.Config(f"wan-1.3b-{args.latency_layers}layers", dict(base.model, num_layers=args.latency_layers),
                        base.latent, note=f"Wan2.1-1.3B blocks, {args.latency_layers} layers, 480p 81 frames")
    rows = []
    start = time.perf_counter()
    for t in args.latency_targets:
        if time.perf_counter() - start > args.latency_budget_s:
            rows.append({"model": config.name, "target_linear": t, "skipped": "latency budget spent"})
            continue
        row: dict[str, Any] = {"model": config.name, "tokens": config.tokens, "target_linear": t, "dtype": "float16"}
        try:
            model, sites, selection = fixed_wan(config, t, device, torch.float16)
            row["num_linear"] = len(selection)
            with bm.fixed_in_place(model, sites, selection, "relu"):
                row.update(_latency_one(ort, ep_devices, workdir, model, config, t, args))
            del model
        except Exception as exc:
            row["error"] = bm.exception_line(exc, 400)
        bm.release_memory(device)
        print(f"  {config.name} target {t:g}: {json.dumps(row)}", flush=True)
        rows.append(row)
    softmax = next((r for r in rows if r.get("target_linear") == 0 and "tensorrt_rtx_ms" in r), None)
    for r in rows:
        if softmax and "tensorrt_rtx_ms" in r:
            r["tensorrt_rtx_speedup_vs_softmax"] = softmax["tensorrt_rtx_ms"] / r["tensorrt_rtx_ms"]
    return rows


def _latency_one(ort, ep_devices, workdir: Path, model, config: e2e.Config, t: float, args) -> dict[str, Any]:
    device = torch.device("cuda")
    row: dict[str, Any] = {}
    kwargs = e2e.wan_inputs(config, config.latent, config.text_tokens, device, torch.float16, seed=1)
    target = Target(model=model, example_inputs=lambda b: kwargs, name=config.name)
    with torch.no_grad():
        ref = bm.model_output(model(**kwargs))
        eager = bm.time_call(lambda: model(**kwargs), device, warmup=1, reps=args.reps)
    row["torch_eager_ms"] = eager.median_ms
    path = workdir / f"{config.name}_{t:g}.onnx"
    t0 = time.perf_counter()
    export_onnx(ExportSource(model, target), path, batch=1, dynamic=False)
    row["export_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    session = session_for(ort, ep_devices, path)
    feeds = feeds_for(session, kwargs)
    out = session.run(None, feeds)[0]
    row["build_and_first_run_s"] = round(time.perf_counter() - t0, 1)
    row.update(errors(out, ref))
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    row["tensorrt_rtx_ms"] = float(np.median(times))
    row["tensorrt_rtx_vs_eager"] = row["torch_eager_ms"] / row["tensorrt_rtx_ms"]
    return row


# --------------------------------------------------------------------------- main


def _stop(args, results: dict[str, Any], reason: str) -> dict[str, Any]:
    results["skipped"] = reason
    print(f"skipped: {reason}")
    atomic.write_json(args.json, results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    faulthandler.enable()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=str(HERE / "results" / "tensorrt_rtx.json"))
    p.add_argument("--latency", action="store_true", help="also time Wan-1.3B blocks at full size (GPU)")
    p.add_argument("--latency-layers", type=int, default=4)
    p.add_argument("--latency-targets", default="0,1.0,0.7")
    p.add_argument("--latency-budget-s", type=float, default=240.0)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    args.latency_targets = [float(x) for x in args.latency_targets.split(",") if x.strip()]

    results: dict[str, Any] = {"environment": bm.environment(bm.resolve_device("auto"))}
    if not torch.cuda.is_available():
        return _stop(args, results, "no CUDA GPU here")
    major, minor = torch.cuda.get_device_capability()
    results["compute_capability"] = f"{major}.{minor}"
    try:
        import onnxruntime_ep_nv_tensorrt_rtx as trt_ep

        results["ep_package"] = trt_ep.__version__
    except ImportError as exc:
        return _stop(args, results, f"onnxruntime-ep-nv-tensorrt-rtx-cu13 is not installed ({exc})")
    ort, name, ep_devices, described = load_ep()
    results.update(onnxruntime=ort.__version__, ep_name=name, discovered_devices=described)
    print(f"onnxruntime {ort.__version__}; {name} devices: {len(ep_devices)}; all: {described}", flush=True)
    if not capability_supported(major, minor):
        return _stop(args, results, f"{torch.cuda.get_device_name()} is compute capability {major}.{minor}; "
                                    f"TensorRT-RTX serves {SUPPORTED_CAPABILITIES} only (EP devices listed: {len(ep_devices)})")
    if not ep_devices:
        return _stop(args, results, f"onnxruntime discovered no GPU for {name}")
    with tempfile.TemporaryDirectory() as tmp:
        results["correctness"] = correctness(ort, ep_devices, Path(tmp))
        atomic.write_json(args.json, results)
        if args.latency:
            results["latency"] = latency(ort, ep_devices, Path(tmp), args)
    atomic.write_json(args.json, results)
    print(json.dumps({k: results.get(k) for k in ("correctness", "latency")}, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
