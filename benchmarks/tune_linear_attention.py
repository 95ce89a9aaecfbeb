"""Tune the launch configs of the fused linear-attention kernels on this GPU; write the table to commit.

For each (feature map, head dim) key it compiles a designed grid of configs per kernel
in parallel worker processes (Triton's on-disk cache then serves the timing process),
times every kernel pass alone (one CUDA graph of back-to-back launches, median of
replays), sweeps programs-per-SM on the best few, re-ranks those on the other memory
layout, checks the winners against the fp32 reference, and writes

* ``--json`` (default ``benchmarks/results/linear_attention_tuning.json``): every timing,
  the chosen configs (``{"configs": {key: {kernel: fields}}}``, which
  ``LINCOMPRESS_LINEAR_ATTENTION_CONFIGS=<this file>`` makes the kernels use at once) and
  per key the pass times with the defaults vs the tuned configs;
* ``--table`` (default ``benchmarks/results/tuned_configs.py``): the committed module
  ``lincompress/kernels/tuned_configs.py`` with this run's kernels merged in, key by key and
  kernel by kernel (``--units state,output`` re-tunes the forward and keeps every backward
  entry); copying it there commits the tuning.

The query side of the backward is tuned as one unit over both variants (``split`` 0:
one pass accumulates dS and dz; 1: a scalar pass and a state-kernel dS pass).

    python benchmarks/tune_linear_attention.py [--maps relu,hedgehog] [--dims 128,64] [--units state,output] [--budget-s 240]
    TRITON_INTERPRET=1 python benchmarks/tune_linear_attention.py --smoke   # CPU check of the machinery

Shapes: the Wan-1.3B attention (B1 H12 N32760 D128; D64 keys use H24, the same bytes),
bf16; keys are ``<map>:<D>x<D>:<layout>`` (layout = memory order of q/k/v). One-part maps
without their own entry use relu's, so tuning relu covers elu1.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import math
import multiprocessing
import os
import pprint
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lincompress import atomic  # noqa: E402
from lincompress.kernels import linear_attention_triton as lat  # noqa: E402
from lincompress.ops import spec  # noqa: E402
from lincompress.ops.linear_attention import (  # noqa: E402
    linear_attention_backward_reference,
    linear_attention_reference,
)

RESULTS = Path(__file__).resolve().parent / "results"
UNITS = ("state", "output", "query", "bwd_key")  # timed separately; "query" = bwd_query (+ bwd_state if split)
Config = lat.KernelConfig


@dataclass(frozen=True)
class Key:
    feature_map: str
    d: int
    heads: int
    tokens: int
    layout: str

    @property
    def name(self) -> str:
        return lat.table_key(self.feature_map, self.d, self.d, self.layout)


# --------------------------------------------------------------------------- candidate configs


def candidates(unit: str, key: Key, smoke: bool) -> list[dict[str, Config]]:
    """Configs to try for one unit (a dict kernel -> config, as ``configs=`` takes it)."""
    two_part = spec.FEATURE_MAPS[key.feature_map].expansion == 2
    dvs = (key.d, max(16, key.d // 2))  # value-dim tile of the accumulating kernels: whole, or half
    if smoke:
        small = [Config(block_n=16, num_warps=1, num_stages=1), Config(block_n=32, num_warps=1, num_stages=1)]
        if unit == "query":
            return [{"bwd_query": c} for c in small] + [{"bwd_query": Config(block_n=16, split=1), "bwd_state": small[0]}]
        if unit == "output" and two_part:  # both normalisations of the output pass
            return [{"output": c} for c in small] + [{"output": Config(block_n=16, num_warps=1, num_stages=1, tc_norm=1)}]
        return [{unit: c} for c in small]  # state, bwd_key: the unit is the kernel
    block_ns = (16, 32, 64) if two_part else (32, 64, 128)
    if unit == "state":
        grid = itertools.product(block_ns, (4, 8), (2, 3), dvs)
        configs = [Config(block_n=n, num_warps=w, num_stages=s, block_dv=dv) for n, w, s, dv in grid]
        if two_part:  # 16 warps: half the accumulator registers per thread, twice the warps per SM
            configs += [Config(block_n=n, num_warps=16, num_stages=s, block_dv=dv)
                        for n, s, dv in itertools.product((32, 64, 128), (2, 3), dvs)]  # fmt: skip
        return [{"state": c} for c in configs]
    if unit == "output":
        configs = [Config(block_n=n, num_warps=w, num_stages=s) for n, w, s in itertools.product(block_ns, (4, 8), (2, 3))]
        if two_part:  # normalised after the products (tensor-core row sums): wgmma tiles of 64+ tokens;
            # maxnreg=128 lets two 8-warp programs share an SM (16 warps) for a few spilled registers
            configs += [Config(block_n=n, num_warps=w, num_stages=s, tc_norm=1)
                        for n, w, s in itertools.product((64, 128), (4, 8, 16), (1, 2, 3))]  # fmt: skip
            if key.d >= 128:  # smaller heads stay under 128 registers anyway
                configs += [Config(block_n=64, num_warps=8, num_stages=s, maxnreg=128, tc_norm=1) for s in (1, 2, 3)]
        return [{"output": c} for c in configs]
    if unit == "bwd_key":
        return [{"bwd_key": Config(block_n=n, num_warps=w, num_stages=s)}
                for n, w, s in itertools.product(block_ns[:2], (4, 8, 16), (2, 3))]  # fmt: skip
    fused = [{"bwd_query": Config(block_n=n, num_warps=w, num_stages=s, block_dv=dv)}
             for n, w, s, dv in itertools.product(block_ns[:2], (8, 16), (2, 3), dvs)]  # fmt: skip
    default_state = lat.DEFAULT_CONFIGS["two_part" if two_part else "elementwise"]["bwd_state"]
    split_query = [{"bwd_query": Config(block_n=n, num_warps=w, num_stages=s, split=1), "bwd_state": default_state}
                   for n, w, s in itertools.product(block_ns[:2], (4, 8, 16), (2, 3))]  # fmt: skip
    split_state = [{"bwd_query": Config(block_n=block_ns[1], num_warps=8, num_stages=2, split=1),
                    "bwd_state": Config(block_n=n, num_warps=w, num_stages=s, block_dv=dv)}
                   for n, w, s, dv in itertools.product(block_ns, (4, 8), (2, 3), dvs)]  # fmt: skip
    return fused + split_query + split_state


# --------------------------------------------------------------------------- inputs and units


class Inputs:
    """Tensors of one key (q, k, v, dO, state, dS) and the four timed units."""

    def __init__(self, key: Key, device: torch.device, dtype: torch.dtype) -> None:
        self.key, self.device = key, device
        gen = torch.Generator(device=device).manual_seed(0)
        dims = (1, key.heads, key.tokens, key.d) if key.layout == "bhnd" else (1, key.tokens, key.heads, key.d)
        self.q, self.k, self.v, self.g = (torch.randn(dims, device=device, dtype=dtype, generator=gen) for _ in range(4))
        self.state = lat.launch_state(self.k, self.v, self.plan({}))
        self.out = torch.empty_like(self.v)

    @functools.cached_property
    def d_state(self):  # only the key-side unit needs it: forward-only runs compile no backward kernel
        return lat.launch_bwd_query(self.g, self.q, self.state, 1e-6, self.plan({}))[1]

    def plan(self, configs: dict[str, Config]):
        return lat.make_plan(self.q, self.k, self.v, self.key.feature_map, self.key.layout, configs)

    def unit(self, name: str, configs: dict[str, Config]) -> Callable[[], object]:
        plan = self.plan(configs)
        if name == "state":
            return lambda: lat.launch_state(self.k, self.v, plan)
        if name == "output":
            return lambda: lat.launch_output(self.q, self.state, self.out, 1e-6, plan)
        if name == "query":
            return lambda: lat.launch_bwd_query(self.g, self.q, self.state, 1e-6, plan)
        return lambda: lat.launch_bwd_key(self.k, self.v, self.d_state, plan)


def _to_dicts(configs: dict[str, Config]) -> dict[str, dict[str, int]]:
    return {k: c.to_dict() for k, c in configs.items()}


def _from_dicts(configs: dict[str, dict[str, int]]) -> dict[str, Config]:
    return {k: Config.from_dict(c) for k, c in configs.items()}


# --------------------------------------------------------------------------- compiling in parallel


def _compile_jobs(jobs: list[tuple[Key, str, dict]], dtype_name: str) -> list[str | None]:
    """Worker: launch each (key, unit, configs) once, which compiles it into Triton's cache; errors as text."""
    device = torch.device("cuda")
    dtype = getattr(torch, dtype_name)
    inputs: dict[Key, Inputs] = {}
    errors = []
    for key, unit, configs in jobs:
        try:
            if key not in inputs:
                inputs[key] = Inputs(key, device, dtype)
            inputs[key].unit(unit, _from_dicts(configs))()
            torch.cuda.synchronize()
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - a config that cannot compile or launch is recorded, not fatal
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    return errors


def precompile(jobs: list[tuple[Key, str, dict]], workers: int, dtype: torch.dtype) -> list[str | None]:
    """Compile every job in ``workers`` spawned processes (0: nothing here, the timing run compiles)."""
    if workers <= 0 or not jobs:
        return [None] * len(jobs)
    chunks = [jobs[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = pool.starmap(_compile_jobs, [(chunk, str(dtype).split(".")[-1]) for chunk in chunks])
    errors: list[str | None] = [None] * len(jobs)
    for w, chunk_errors in enumerate(results):
        for j, err in enumerate(chunk_errors):
            errors[w + j * workers] = err
    return errors


# --------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object], device: torch.device, reps: int = 10, replays: int = 5) -> float:
    """Median ms per call: on CUDA one graph of ``reps`` back-to-back calls, replayed; on CPU the host clock."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(2):
            fn()
        return (time.perf_counter() - start) / 2 * 1e3
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    graph.replay()
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    del graph
    return statistics.median(times)


def measure(inputs: Inputs, unit: str, configs: dict[str, Config], device: torch.device) -> float:
    try:
        return time_ms(inputs.unit(unit, configs), device)
    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory for this config
        print(f"    {inputs.key.name} {unit} {_to_dicts(configs)}: {type(exc).__name__}", flush=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return math.inf


def with_pps(configs: dict[str, Config], pps: int) -> dict[str, Config]:
    from dataclasses import replace

    return {k: replace(c, programs_per_sm=pps) for k, c in configs.items()}


# --------------------------------------------------------------------------- correctness of the winners


def max_rel_errors(inputs: Inputs, configs: dict[str, Config], backward: bool = True) -> dict[str, float]:
    """max|ours - fp32 ref| / max|ref| of out (and dq, dk, dv) with ``configs`` (bf16 inputs, fp32 reference)."""
    key = inputs.key
    args = (key.feature_map, 1e-6, key.layout)
    wide = [t.float() for t in (inputs.g, inputs.q, inputs.k, inputs.v)]
    got = [lat.linear_attention_forward_triton(inputs.q, inputs.k, inputs.v, *args, configs=configs)]
    want = [linear_attention_reference(*wide[1:], *args)]
    if backward:
        got += lat.linear_attention_backward_triton(inputs.g, inputs.q, inputs.k, inputs.v, *args, configs=configs)
        want += linear_attention_backward_reference(*wide, *args)
    return {n: ((a.float() - b).abs().max() / b.abs().max()).item() for n, a, b in zip(("out", "dq", "dk", "dv"), got, want)}


# --------------------------------------------------------------------------- the table file


def render_table(configs: dict[str, dict[str, dict[str, int]]], source: str) -> str:
    """The text of ``lincompress/kernels/tuned_configs.py`` holding ``configs`` (one kernel per line)."""
    template = Path(lat.__file__).with_name("tuned_configs.py").read_text()
    header = template.split("SOURCE = ", 1)[0]
    lines = [f"{header}SOURCE = {source!r}", "", "TUNED_CONFIGS: dict[str, dict[str, dict[str, int]]] = {"]
    for key in sorted(configs):
        lines.append(f"    {key!r}: {{")
        for kernel in lat.KERNELS:
            if kernel in configs[key]:
                fields = ", ".join(f"{f!r}: {v}" for f, v in configs[key][kernel].items())
                lines.append(f"        {kernel!r}: {{{fields}}},")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- static check (CPU, no GPU)


class _Sm90Driver:
    """Enough of a Triton driver to compile for sm_90 where there is no GPU (ptxas ships with Triton)."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def token_loop_instructions(sass: str) -> int:
    """SASS instructions of a kernel's token loop: the longest span closed by a backward branch.

    Times the warps of a program over its token tile, it is the issue work per token, which
    the fused feature maps add to the same HBM traffic (0: no loop found).
    """
    import re

    addresses, loops = [], []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        addresses.append(addr)
        branch = re.search(r"\bBRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", m.group(2))
        if branch and branch.group(1) and int(branch.group(1), 16) < addr:
            loops.append((int(branch.group(1), 16), addr))
    if not loops:
        return 0
    start, end = max(loops, key=lambda span: span[1] - span[0])
    return sum(start <= a <= end for a in addresses)


def static_usage(keys: list[Key], smoke: bool = False, units: tuple[str, ...] = UNITS) -> list[dict[str, Any]]:
    """Compile every candidate for sm_90 without a GPU and report registers, spill stack, shared memory
    and SASS instructions per token (``token_loop_instructions``).

    Catches what the interpreter cannot (frontend/compiler errors) and shows which configs
    spill; the numbers come from this machine's Triton, not necessarily the GPU's.
    """
    import subprocess
    import tempfile

    import triton
    import triton.runtime.jit as jit
    from triton.runtime.driver import driver

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    compiled: list = []
    original = jit.JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kwargs, kernel))
        return kernel

    def usage(kernel, num_warps: int, block_n: int) -> dict[str, Any]:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            text = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
            sass = subprocess.run([str(cuobjdump), "-sass", f.name], capture_output=True, text=True).stdout
        fields = dict(p.split(":", 1) for line in text.splitlines() if "REG:" in line for p in line.split() if ":" in p)
        loop = token_loop_instructions(sass)
        return {"registers": int(fields["REG"]), "spill_stack_bytes": int(fields["STACK"]),
                "shared_bytes": int(kernel.metadata.shared), "loop_instructions": loop,
                "warp_instructions_per_token": round(loop * num_warps / block_n, 1)}  # fmt: skip

    rows = []
    previous = getattr(driver, "_active", None)  # reset_active() would look for a real GPU driver
    driver.set_active(_Sm90Driver())
    jit.JITFunction.run = compile_only
    try:
        for key in keys:
            inputs = Inputs.__new__(Inputs)  # no launches: tensors only, for shapes and strides
            inputs.key, inputs.device = key, torch.device("cpu")
            dims = (1, key.heads, key.tokens, key.d) if key.layout == "bhnd" else (1, key.tokens, key.heads, key.d)
            inputs.q = inputs.k = inputs.v = inputs.g = inputs.out = torch.empty(dims, dtype=torch.bfloat16)
            plan = inputs.plan({})
            fd = plan.shapes.fd
            inputs.state = inputs.d_state = torch.empty((plan.shapes.bh, fd * key.d + fd))
            for unit in units:
                for configs in candidates(unit, key, smoke):
                    compiled.clear()
                    try:
                        inputs.unit(unit, configs)()
                        for name, kwargs, kernel in compiled:
                            rows.append({"key": key.name, "unit": unit, "kernel": name, "configs": _to_dicts(configs),
                                         "block_dv": kwargs["BLOCK_DV"],
                                         **usage(kernel, kwargs["num_warps"], kwargs["BLOCK_N"])})  # fmt: skip
                    except Exception as exc:  # noqa: BLE001 - reported per config
                        rows.append({"key": key.name, "unit": unit, "configs": _to_dicts(configs),
                                     "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"})  # fmt: skip
                    last = rows[-1]
                    print(f"{key.name:22s} {unit:8s} {json.dumps(last['configs'])[:120]:120s} "
                          + (last.get("error") or f"{last['kernel']} REG {last['registers']} STACK "
                                                  f"{last['spill_stack_bytes']} SMEM {last['shared_bytes']} "
                                                  f"instr/token {last['warp_instructions_per_token']}"), flush=True)
    finally:
        jit.JITFunction.run = original
        driver._active = previous
    return rows


# --------------------------------------------------------------------------- main


def tune(args, save: Callable[[dict[str, Any]], None] = lambda report: None) -> dict[str, Any]:
    """The whole tuning run; ``save(report)`` is called after every key, so a cut-off run keeps its keys."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter's bf16 dot is wrong
    start = time.perf_counter()
    tokens = 40 if args.smoke else args.tokens
    keys = [Key(fm, d, (16 if args.smoke else 12 * 128) // d, tokens, "bnhd") for d in args.dims for fm in args.maps]
    other = {"bnhd": "bhnd", "bhnd": "bnhd"}
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET smoke run)",
        "torch": torch.__version__, "triton": __import__("triton").__version__, "dtype": str(dtype),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "keys": [k.name for k in keys],
        "units": list(args.units),
        "candidates": [], "configs": {}, "summary": {},
    }  # fmt: skip

    jobs = [(key, unit, _to_dicts(c)) for key in keys for unit in args.units for c in candidates(unit, key, args.smoke)]
    print(f"compiling {len(jobs)} candidate launches in {args.workers} worker processes", flush=True)
    errors = precompile(jobs, args.workers if device.type == "cuda" else 0, dtype)
    report["compile_s"] = round(time.perf_counter() - start, 1)
    print(f"  compiled in {report['compile_s']} s; {sum(e is not None for e in errors)} candidates failed", flush=True)

    for key in keys:
        if report["configs"] and time.perf_counter() - start > args.budget_s:  # the first key always runs
            print(f"{key.name}: skipped (budget)", flush=True)
            continue
        inputs = Inputs(key, device, dtype)
        alt = Inputs(Key(key.feature_map, key.d, key.heads, key.tokens, other[key.layout]), device, dtype)
        chosen: dict[str, Config] = {}
        summary: dict[str, Any] = {}
        for unit in args.units:
            rows = []
            for (jkey, junit, configs), err in zip(jobs, errors):
                if jkey != key or junit != unit:
                    continue
                hopeless = err is not None and ("OutOfResources" in err or "Compilation" in err)  # else the worker died
                ms = math.inf if hopeless else measure(inputs, unit, _from_dicts(configs), device)
                rows.append({"configs": configs, "ms": ms, "error": err})
            rows.sort(key=lambda r: r["ms"])
            finalists = []  # programs per SM on the best three (no recompilation), then the other layout
            for row in rows[: args.top]:
                for pps in (1, 2, 3, 4):
                    cfg = with_pps(_from_dicts(row["configs"]), pps)
                    finalists.append({"configs": _to_dicts(cfg), "ms": measure(inputs, unit, cfg, device)})
            finalists.sort(key=lambda r: r["ms"])
            for row in finalists[: args.top]:
                row["ms_other_layout"] = measure(alt, unit, _from_dicts(row["configs"]), device)
            best = finalists[0]
            best_alt = min(finalists[: args.top], key=lambda r: r.get("ms_other_layout", math.inf))
            default = measure(inputs, unit, {}, device)
            chosen.update(_from_dicts(best["configs"]))
            report.setdefault("configs_other_layout", {}).setdefault(alt.key.name, {}).update(best_alt["configs"])
            summary[unit] = {"default_ms": default, "tuned_ms": best["ms"], "configs": best["configs"],
                             "other_layout_ms": best_alt.get("ms_other_layout")}  # fmt: skip
            report["candidates"].append({"key": key.name, "unit": unit, "rows": rows, "finalists": finalists})
            print(f"{key.name:26s} {unit:8s} default {default:8.4f} ms -> tuned {best['ms']:8.4f} ms  "
                  f"{best['configs']}", flush=True)  # fmt: skip
        if not chosen.get("bwd_query", Config()).split:
            chosen.pop("bwd_state", None)
        summary["errors_vs_fp32"] = max_rel_errors(inputs, chosen, backward=bool({"query", "bwd_key"} & set(args.units)))
        summary["max_rel_error"] = max(summary["errors_vs_fp32"].values())
        report["configs"][key.name] = _to_dicts(chosen)
        report["summary"][key.name] = summary
        print(f"{key.name:26s} max rel. error vs fp32 {summary['max_rel_error']:.2e}", flush=True)
        save(report)
        del inputs, alt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["wall_s"] = round(time.perf_counter() - start, 1)
    return report


def merged_table(tuned: dict[str, dict[str, dict[str, int]]], committed: dict[str, dict[str, dict[str, int]]]):
    """The committed table with this run's kernels replaced, key by key and kernel by kernel (a run that
    tuned only some units of a key keeps that key's other kernels); the count of kernel entries kept."""
    table = {key: dict(entry) for key, entry in committed.items()}
    for key, entry in tuned.items():
        table.setdefault(key, {}).update(entry)
    kept = sum(1 for key, entry in committed.items() for kernel in entry if kernel not in tuned.get(key, {}))
    return table, kept


def write_outputs(report: dict[str, Any], args) -> None:
    """The JSON (configs of both memory orders, this run's kernels only: it overlays the committed table)
    and the table module (the committed table with this run's kernels merged in)."""
    from lincompress.kernels.tuned_configs import SOURCE, TUNED_CONFIGS

    configs = {**report.get("configs_other_layout", {}), **report["configs"]}
    atomic.write_json(args.json, {**{k: v for k, v in report.items() if k != "configs_other_layout"}, "configs": configs})
    source = f"{report['device']}, torch {report['torch']}, triton {report['triton']}, {report['date']}"
    table, kept = merged_table(configs, TUNED_CONFIGS)
    if kept:
        source += f" ({', '.join(report['units'])}); {kept} kernel entries kept from: {SOURCE}"
    atomic.write_text(args.table, render_table(table, source))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", default="relu,hedgehog", help="feature maps to tune (elu1 uses relu's table)")
    p.add_argument("--dims", default="128,64", help="head dims (q/k/v) to tune")
    p.add_argument("--units", default=",".join(UNITS),
                   help=f"passes to tune, of {','.join(UNITS)} (query = the query side of the backward); "
                        "the others keep their committed configs")
    p.add_argument("--tokens", type=int, default=32760)
    p.add_argument("--top", type=int, default=3, help="configs per kernel kept for the programs-per-SM sweep")
    p.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    p.add_argument("--budget-s", type=float, default=300.0, help="start no new key after this much wall time")
    p.add_argument("--json", type=Path, default=None,
                   help="default: results/linear_attention_tuning.json (--static: results/linear_attention_static_sm90.json)")
    p.add_argument("--table", type=Path, default=RESULTS / "tuned_configs.py")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (needs TRITON_INTERPRET=1)")
    p.add_argument("--static", action="store_true",
                   help="no GPU: compile the candidates for sm_90 and report registers/spills/shared memory (JSON)")
    args = p.parse_args(argv)
    args.json = args.json or RESULTS / ("linear_attention_static_sm90.json" if args.static else "linear_attention_tuning.json")
    args.maps = [m for m in args.maps.split(",") if m]
    args.units = [u for u in args.units.split(",") if u]
    if not args.units or set(args.units) - set(UNITS):
        raise SystemExit(f"--units: choose from {','.join(UNITS)}, got {','.join(args.units) or 'nothing'}")
    args.dims = [16] if args.smoke else [int(d) for d in args.dims.split(",") if d]
    for m in args.maps:
        if spec.FEATURE_MAPS.get(m) is None or spec.FEATURE_MAPS[m].kernel_id is None:
            raise SystemExit(f"--maps: {m!r} has no fused kernels; choose from {tuple(lat.FEATURE_IDS)}")
    if args.static:
        keys = [Key(fm, d, 12 * 128 // d, args.tokens, "bnhd") for d in args.dims for fm in args.maps]
        rows = static_usage(keys, args.smoke, tuple(args.units))
        atomic.write_json(args.json, {"static_sm90": rows, "triton": __import__("triton").__version__})
        print(f"wrote {args.json}")
        return {"static_sm90": rows}
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--smoke runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("tune_linear_attention.py needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
    report = tune(args, lambda partial: write_outputs(partial, args))
    write_outputs(report, args)
    print(f"wrote {args.json} and {args.table} ({report['wall_s']} s); "
          f"use now: {lat.CONFIGS_ENV}={args.json}; commit: cp {args.table} lincompress/kernels/tuned_configs.py")
    return report


if __name__ == "__main__":
    main()
