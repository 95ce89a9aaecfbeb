"""Deployment latency: eager vs torch.compile vs AOTInductor (vs TensorRT where installed) of fixed hybrids.

Model: Wan2.1-T2V-1.3B shapes (diffusers ``WanTransformer3DModel``: 30 layers, 12 x 128
heads, FFN 8960), random weights, bf16 (Wan's float32 modules stay float32), batch 1,
latent 16 x 21 x 60 x 104 (81 frames at 480p -> 32,760 video tokens) and 512 text
tokens; one denoiser forward. Targets 0 (the original softmax model), 0.5, 0.7 and
1.0 of the 30 self-attention layers linear, evenly spread
(``heuristic_selection(..., "uniform")``), relu feature map (elementwise, so the op
does all of the linear attention; Hedgehog adds a per-head projection + softmax).

Per target (in this priority order, so a run cut by ``--deadline-s`` keeps the most
useful numbers):

* ``eager``     the fixed model as PyTorch runs it (linear sites: the fused Triton kernels);
* ``aoti``      ``lincompress.exporters.aoti.compile_aoti`` (static shapes: the benchmark
                shape) -> ``.pt2`` -> ``load_aoti``; compile time reported separately;
* ``compile``   ``torch.compile`` per transformer block (regional, default mode), as
                ``benchmarks/e2e.py`` does;
* ``tensorrt``  only where ``tensorrt_status()`` says an engine can be built (never
                on the machines this project has; the reason is recorded instead).

Every mode of a target is checked against that target's eager output (max abs error
and relative L2 error in the JSON). The Wan builders are shared with ``e2e.py``.

Usage (GPU)::

    python benchmarks/deploy.py --json benchmarks/results/deploy.json

``--tiny`` runs toy sizes on a CPU to check the script.
"""

from __future__ import annotations

import argparse
import ast
import faulthandler
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import e2e  # noqa: E402  (Wan configs and builders shared with the end-to-end benchmark)

from lincompress import Target, atomic  # noqa: E402
from lincompress import benchmarking as bm  # noqa: E402
from lincompress.selection import heuristic_selection  # noqa: E402

MODES = ("eager", "aoti", "compile", "tensorrt")


def _save(path: str | None, results: dict[str, Any]) -> None:
    if path:
        atomic.write_json(path, results)


def _errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    out, ref = out.float(), ref.float()
    return {"max_abs_err": float((out - ref).abs().max()),
            "rel_l2_err": float((out - ref).norm() / ref.norm().clamp_min(1e-12))}


def _time(fn, device, reps: int) -> dict[str, Any]:
    timing = bm.time_call(fn, device, warmup=1, reps=reps)
    return {"forward_ms": timing.median_ms, "min_ms": timing.min_ms, "max_ms": timing.max_ms, "reps": timing.reps}


def aoti_inductor_configs(extra: list[str] | None = None) -> dict[str, Any]:
    """Faster package builds where this torch knows the knob (the wrapper's C++ at -O1 is plenty), plus
    ``--aoti-config aot_inductor.KEY=VALUE`` overrides (values parsed as Python literals where they are)."""
    known = getattr(torch._inductor.config, "_config", {})
    configs: dict[str, Any] = {k: v for k, v in {"aot_inductor.compile_wrapper_opt_level": "O1"}.items() if k in known}
    for item in extra or []:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise SystemExit(f"--aoti-config wants KEY=VALUE, got {item!r}")
        if key not in known:
            raise SystemExit(f"--aoti-config: this torch ({torch.__version__}) has no inductor config {key!r}")
        try:
            configs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            configs[key] = value
    return configs


def kept_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """With ``--merge``: the rows of an earlier run's JSON for modes this run does not measure."""
    if not (args.merge and args.json and Path(args.json).is_file()):
        return []
    earlier = json.loads(Path(args.json).read_text()).get("rows", [])
    return [r for r in earlier if r.get("mode") not in args.modes]


def fill_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-ups against the target-0 (softmax) row of the same mode and of eager, wherever both were measured."""
    base = {r["mode"]: r["forward_ms"] for r in rows if r["target_linear"] == 0 and "forward_ms" in r}
    for r in rows:
        for key, mode in (("speedup_vs_same_mode_softmax", r["mode"]), ("speedup_vs_eager_softmax", "eager")):
            if "forward_ms" in r and mode in base:
                r[key] = base[mode] / r["forward_ms"]
            else:
                r.pop(key, None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    left = lambda: args.deadline_s - (time.perf_counter() - start)  # noqa: E731
    device = bm.resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    configs = e2e.TINY_CONFIGS if args.tiny else e2e.CONFIGS
    config = configs[args.config]
    if args.layers:  # same block shapes and token count, fewer blocks (quick checks of a mode)
        config = e2e.Config(f"{config.name}-{args.layers}layers", dict(config.model, num_layers=args.layers),
                            config.latent, config.text_tokens, f"{config.note}, first {args.layers} layers")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)

    from lincompress.exporters.tensorrt.builder import tensorrt_status

    trt_ok, trt_reason = tensorrt_status()
    results: dict[str, Any] = {
        "environment": bm.environment(device),
        "config": config.name, "note": config.note, "model": dict(config.model), "latent": list(config.latent),
        "tokens": config.tokens, "text_tokens": config.text_tokens, "dtype": str(dtype).removeprefix("torch."),
        "batch_size": 1, "feature_map": args.feature_map, "selection": "uniform",
        "settings": {"compile": "torch.compile per transformer block (regional), default mode",
                     "aoti": f"torch.export (static shapes) -> aoti_compile_and_package, inductor_configs={aoti_inductor_configs(args.aoti_config)}",
                     "timing": "CUDA events, median of reps after 1 warm-up call; compile/first call excluded",
                     "deadline_s": args.deadline_s},
        "tensorrt": {"available": trt_ok, "reason": trt_reason},
        "rows": kept_rows(args),
    }
    print(f"device: {results['environment']['device']}; torch {torch.__version__}; {config.name}: "
          f"{config.tokens:,} video tokens; tensorrt: {trt_reason}", flush=True)

    model = e2e.build_wan(config, device, dtype)
    sites, candidates = e2e.find_sites(model, config, device, dtype)
    kwargs = e2e.wan_inputs(config, config.latent, config.text_tokens, device, dtype, seed=1)
    target = Target(model=model, example_inputs=lambda b: kwargs, name=config.name)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {len(candidates)} candidate sites", flush=True)

    selections = {t: heuristic_selection(candidates, t, "uniform") if t > 0 else [] for t in args.targets}
    refs: dict[float, torch.Tensor] = {}

    def record(mode: str, t: float, row: dict[str, Any]) -> None:
        row.update(mode=mode, target_linear=t, num_linear=len(selections[t]))
        results["rows"] = [r for r in results["rows"] if (r["mode"], r["target_linear"]) != (mode, t)] + [row]
        fill_speedups(results["rows"])
        _save(args.json, results)
        extra = f", compile {row['compile_s']:.1f} s" if "compile_s" in row else ""
        err = f", rel err {row['rel_l2_err']:.2e}" if "rel_l2_err" in row else ""
        shown = f"{row['forward_ms']:,.1f} ms" if "forward_ms" in row else row.get("skipped") or row.get("error", "")
        print(f"  {mode:8s} target {t:<4g}: {shown}{extra}{err}", flush=True)

    # eager for every target first (cheap, and the reference of every other mode), then the
    # other modes target by target in the given order, so a deadline cuts whole targets last.
    compile_estimate = {"aoti": args.aoti_estimate_s, "compile": args.compile_estimate_s}
    plan = [("eager", t) for t in args.targets if "eager" in args.modes]
    plan += [(m, t) for t in args.targets for m in args.modes if m != "eager"]
    for mode, t in plan:
        if mode == "tensorrt" and not trt_ok:
            record(mode, t, {"skipped": trt_reason})
            continue
        need = args.min_left_s + compile_estimate.get(mode, 0.0)
        if left() < need:
            record(mode, t, {"skipped": f"deadline ({left():.0f} s left, about {need:.0f} s needed)"})
            continue
        with bm.fixed_in_place(model, sites, selections[t], args.feature_map), torch.no_grad():
            try:
                row = measure(mode, model, kwargs, target, device, args, refs, t)
            except Exception as exc:  # report and go on: one broken mode must not lose the others
                row = {"error": bm.exception_line(exc)}
                print(f"  {mode} target {t}: {row['error']}", flush=True)
            finally:
                if mode == "compile":
                    e2e.uncompile_blocks(model)
                    torch._dynamo.reset()
        if "compile_s" in row:
            compile_estimate[mode] = max(row["compile_s"], 0.6 * compile_estimate.get(mode, 0.0))
        record(mode, t, row)
        bm.release_memory(device)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    _save(args.json, results)
    return results


class _CountTritonCalls:
    """Counts launches of lincompress's Triton forward (evidence of which kernel a compiled artifact runs)."""

    def __enter__(self):
        from lincompress import kernels

        self.impl = getattr(kernels, "_triton_impl", None)
        self.calls = 0
        if self.impl is not None:
            self.original = self.impl.linear_attention_forward_triton

            def counted(*a, **k):
                self.calls += 1
                return self.original(*a, **k)

            self.impl.linear_attention_forward_triton = counted
        return self

    def __exit__(self, *exc):
        if self.impl is not None:
            self.impl.linear_attention_forward_triton = self.original


def measure(mode, model, kwargs, target, device, args, refs, t) -> dict[str, Any]:
    from lincompress.exporters._common import ExportSource
    from lincompress.exporters.aoti import compile_aoti

    row: dict[str, Any] = {}
    if mode == "eager":
        with _CountTritonCalls() as counter:
            out = bm.model_output(model(**kwargs))
        row["triton_linear_attention_calls"] = counter.calls
        refs[t] = out.detach().clone()
        row.update(_time(lambda: model(**kwargs), device, args.reps))
        row["output_finite"] = bool(torch.isfinite(out).all())
        return row
    if mode == "compile":
        e2e.compile_blocks(model)
        t0 = time.perf_counter()
        out = bm.model_output(model(**kwargs))
        bm.synchronize(device)
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        row.update(_time(lambda: model(**kwargs), device, args.reps))
    elif mode == "aoti":
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            path = Path(tmp) / "model.pt2"
            print(f"  aoti     target {t:<4g}: building the package ...", flush=True)
            t0 = time.perf_counter()
            compile_aoti(ExportSource(model, target), path, batch=1, dynamic=False, device=device,
                         inductor_configs=aoti_inductor_configs(args.aoti_config))
            row["compile_s"] = round(time.perf_counter() - t0, 1)
            row["package_bytes"] = path.stat().st_size
            result = run_package_isolated(path, kwargs, args.reps, Path(tmp))
            out = result.pop("output", None)
            row.update(result)
            if out is None:
                return row
    else:
        raise ValueError(f"unknown mode {mode}")
    if t in refs:
        row.update(_errors(out, refs[t]))
    return row


def _input_device(kwargs: dict[str, Any]) -> torch.device:
    return next(v.device for v in kwargs.values() if isinstance(v, torch.Tensor))


def run_package_isolated(path: Path, kwargs: dict[str, Any], reps: int, workdir: Path) -> dict[str, Any]:
    """Load, run and time a ``.pt2`` in a fresh process: a loader crash becomes this row's error, not the run's end.

    Returns the timing fields and ``output`` (the package's output tensor), or ``error``
    (+ the child's last stderr lines) when the child failed.
    """
    inputs, output = workdir / "inputs.pt", workdir / "output.pt"
    torch.save(kwargs, inputs)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-package", str(path), "--inputs", str(inputs),
           "--output", str(output), "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln][-6:]
        return {"error": f"the package failed to load/run in a fresh process ({how})", "stderr_tail": tail}
    result = json.loads(lines[-1])
    result["output"] = torch.load(output, weights_only=True).to(_input_device(kwargs))
    return result


def run_package(args: argparse.Namespace) -> None:
    """Child of ``run_package_isolated``: one JSON line with the timing, the output tensor saved to ``--output``."""
    from lincompress.exporters.aoti import load_aoti

    kwargs = torch.load(args.inputs, weights_only=True)
    device = _input_device(kwargs)
    runner = load_aoti(args.run_package)
    with torch.no_grad(), _CountTritonCalls() as counter:
        out = bm.model_output(runner(**kwargs))
    row: dict[str, Any] = {"triton_linear_attention_calls": counter.calls}
    with torch.no_grad():
        row.update(_time(lambda: runner(**kwargs), device, args.reps))
    torch.save(out.detach().cpu(), args.output)
    print(json.dumps(row), flush=True)


def table(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [f"Device: {env['device']} | torch {env['torch']} | {results['config']} ({results['tokens']:,} video tokens, "
             f"{results['text_tokens']} text) | {results['dtype']}, batch 1, one denoiser forward, relu feature map", "",
             "| target linear | mode | ms | speed-up vs same-mode softmax | vs eager softmax | compile s | rel. err vs eager |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(results["rows"], key=lambda r: (r["target_linear"], MODES.index(r["mode"]))):
        if "forward_ms" not in r:
            why = r.get("skipped") or r.get("error")
            lines.append(f"| {r['target_linear']:g} | {r['mode']} | - | - | - | - | {why} |")
            continue
        f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"  # noqa: E731
        lines.append(f"| {r['target_linear']:g} | {r['mode']} | {r['forward_ms']:,.1f} | "
                     f"{f('speedup_vs_same_mode_softmax', '.2f')}x | {f('speedup_vs_eager_softmax', '.2f')}x | "
                     f"{f('compile_s', '.0f')} | {f('rel_l2_err', '.1e')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    faulthandler.enable()  # a crash inside a compiler or kernel still prints where it happened
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="wan-1.3b")
    p.add_argument("--targets", default="0,0.7,1.0,0.5", help="fractions linear, in run order (eager runs all first)")
    p.add_argument("--modes", default="eager,aoti,compile,tensorrt", help=f"comma-separated, in run order; of {MODES}")
    p.add_argument("--feature-map", default="relu")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--deadline-s", type=float, default=600.0, help="start no new measurement after this much wall time")
    p.add_argument("--min-left-s", type=float, default=15.0, help="skip a measurement when less than this (+ its compile estimate) is left")
    p.add_argument("--aoti-estimate-s", type=float, default=90.0, help="first guess of one AOTInductor build (then: the last one)")
    p.add_argument("--compile-estimate-s", type=float, default=40.0, help="first guess of one torch.compile warm-up")
    p.add_argument("--json", default=str(HERE / "results" / "deploy.json"))
    p.add_argument("--workdir", default=None, help="where AOTInductor packages are written (temporary)")
    p.add_argument("--aoti-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra inductor config for the AOTInductor build, e.g. aot_inductor.package_constants_in_so=False")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of modes not measured now from the existing --json (split a long run over several calls)")
    p.add_argument("--layers", type=int, default=None, help="keep only this many transformer blocks (same shapes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--run-package", default=None, help=argparse.SUPPRESS)  # child mode of run_package_isolated
    p.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--output", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help="toy sizes, to check the script on a CPU")
    a = p.parse_args(argv)
    if a.run_package:
        run_package(a)
        return {}
    order = [float(x) for x in a.targets.split(",") if x.strip()]
    a.targets = sorted(bm.parse_targets(a.targets), key=order.index)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {MODES}")
    if a.tiny and a.config == "wan-1.3b":
        a.config = "tiny"
    results = run(a)
    print()
    print(table(results))
    print()
    print(json.dumps({"device": results["environment"]["device"], "rows": results["rows"]}, default=str))
    return results


if __name__ == "__main__":
    main()
