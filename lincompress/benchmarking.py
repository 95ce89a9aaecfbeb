"""Latency and memory of an original model and its fixed hybrids, measured the same way in one run.

``bench(target, ...)`` (``lincompress.bench``, the ``lincompress bench`` command) measures
the original model and fixed hybrids at several targets (or an artifact's model) in one
run; the building blocks are used by ``benchmarks/e2e.py`` too. Timing follows the usual rules
for asynchronous devices: warm up first (module load, ``torch.compile``, autotuning and
allocator growth stay out of the numbers), then time each repetition on its own and
report the median with its spread (min-max and quartiles; a warning when the middle half of
the timings spans more than 10 % of the median, since then speed-ups are noise). On CUDA a repetition is timed with CUDA events and peak memory is
``torch.cuda.max_memory_allocated`` over one call; on CPU the host clock is used and
memory is reported as unavailable (``None``), since an RSS delta mostly measures the
allocator, not the model.

Fixed models are built from the original in place (hybridize the chosen sites, fix,
measure, then ``restore_original``), so a 14B model never needs a second copy in memory;
an artifact's fixed model is built on a deep copy (``lincompress.apply``), because its
weights may replace base parameters.
"""

from __future__ import annotations

import copy
import gc
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress.attention import SITES_ATTR, detach_sites, iter_sites
from lincompress.config import Arg, ArgumentError, PassConfig, config_fields, feature_map_option, literal, option
from lincompress.devices import DTYPES, resolve_device, resolve_dtype
from lincompress.discovery import SiteInfo
from lincompress.errors import LinCompressError, LinCompressWarning
from lincompress.rewrite import fix_model, hybridize_model
from lincompress.selection import HEURISTICS, heuristic_selection
from lincompress.target import Target, TargetOptions, load_target

__all__ = ["DTYPES", "BenchConfig", "Row", "Timing", "bench", "resolve_device", "resolve_dtype", "time_call"]
DEFAULT_TARGETS = "0.5,0.7,1.0"
REPORT_FORMAT = "lincompress-bench"  # marks the JSON report, so a re-run replaces only a report of ours


# --------------------------------------------------------------------------- parsing user options


def parse_targets(text: str) -> list[float]:
    """``"0.5,0.7,1"`` -> ``[0.5, 0.7, 1.0]`` (sorted, unique); one-line error otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(p == "" for p in parts):
        raise ArgumentError("{} is not a comma-separated list of fractions; write e.g. {}",
                            Arg("targets", text), Arg("targets", "0.5,0.7,1.0"))
    values = []
    for p in parts:
        try:
            value = float(p)
        except ValueError:
            raise ArgumentError(f"{{}}: {literal(repr(p))} is not a number; give fractions of attention layers to make "
                                "linear, e.g. 0.5,0.7,1.0", Arg("targets")) from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ArgumentError(f"{{}}: {literal(p)} is out of range; each target is a fraction in [0, 1]",
                                Arg("targets"))
        values.append(value)
    return sorted(set(values))


# --------------------------------------------------------------------------- timing and memory


WIDE_SPREAD = 0.10  # interquartile range / median above which timings are too noisy to compare


@dataclass
class Timing:
    """Milliseconds per call over ``reps`` timed calls: the median (the reported number) and the spread.

    ``q1_ms`` / ``q3_ms`` are the quartiles; ``spread`` = (q3 - q1) / median, the relative width of
    the middle half of the timings. Above ``WIDE_SPREAD`` a number is not a measurement of the
    model so much as of whatever else the machine was doing.
    """

    median_ms: float
    min_ms: float
    max_ms: float
    reps: int
    warmup: int
    first_call_s: float  # wall time of the first warm-up call (includes compilation, if any)
    peak_memory_bytes: int | None = None  # CUDA: max_memory_allocated over the timed calls (weights included)
    q1_ms: float | None = None
    q3_ms: float | None = None

    @classmethod
    def of(cls, samples: list[float], warmup: int, first_call_s: float, peak_memory_bytes: int | None = None) -> Timing:
        """The statistics of ``samples`` (milliseconds, one per timed call)."""
        if len(samples) >= 2:
            q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        else:
            q1 = q3 = samples[0]
        return cls(median_ms=statistics.median(samples), min_ms=min(samples), max_ms=max(samples), reps=len(samples),
                   warmup=warmup, first_call_s=first_call_s, peak_memory_bytes=peak_memory_bytes, q1_ms=q1, q3_ms=q3)

    @property
    def spread(self) -> float:
        if self.q1_ms is None or self.q3_ms is None or self.median_ms <= 0:
            return 0.0
        return (self.q3_ms - self.q1_ms) / self.median_ms

    @property
    def wide(self) -> bool:
        return self.spread > WIDE_SPREAD

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "spread": round(self.spread, 4)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, reps: int = 10) -> Timing:
    """Median latency of ``fn()``: ``warmup`` untimed calls, then ``reps`` individually timed ones.

    CUDA: each call between two CUDA events (device time, launch gaps included), and
    the peak memory allocated over the timed calls; CPU: ``time.perf_counter`` around
    each call, no memory figure.
    """
    if reps < 1:
        raise ValueError("reps must be >= 1")
    first_call_s = 0.0
    for i in range(max(0, warmup)):
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i == 0:
            first_call_s = time.perf_counter() - start
    samples: list[float] = []
    peak = None
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for begin, end in events:
            begin.record()
            fn()
            end.record()
        synchronize(device)
        samples = [begin.elapsed_time(end) for begin, end in events]
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
    return Timing.of(samples, max(0, warmup), first_call_s, peak)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak bytes allocated on the device during one ``fn()`` (weights included); ``None`` off CUDA."""
    if device.type != "cuda":
        fn()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def cast_model(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``model.to(device, dtype)``, except what the model keeps in float32 in half precision.

    diffusers models name such modules in ``_keep_in_fp32_modules`` (Wan: rope, time
    embedder, norms, modulation tables) and ``from_pretrained(torch_dtype=...)`` keeps
    them in float32; doing the same here benchmarks the model as pipelines run it.
    Each tensor is cast once, straight to its final dtype.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype in (torch.float16, torch.bfloat16) else set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            parts = set(module_name.split(".")) if module_name else set()
            for table in (module._parameters, module._buffers):
                for name, tensor in list(table.items()):
                    if tensor is None:
                        continue
                    if tensor.is_floating_point():
                        kept = bool(keep & (parts | {name}))
                        new = tensor.to(device=device, dtype=torch.float32 if kept else dtype)
                    else:
                        new = tensor.to(device=device)
                    if isinstance(tensor, nn.Parameter):
                        tensor.data = new
                    else:
                        table[name] = new
    return model


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def exception_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (cut at ``limit``): how a benchmark row records a failure it survived."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"


# --------------------------------------------------------------------------- model calls


def model_output(out: Any) -> torch.Tensor:
    """The denoiser's prediction out of a tensor, a tuple (``return_dict=False``) or a diffusers output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise LinCompressError(
        f"the model returned {type(out).__name__}; bench needs a tensor, a tuple whose first item is the prediction, "
        "or an output with .sample"
    )


def move_inputs(kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype, keep_dtype: tuple[str, ...] = ()) -> dict[str, Any]:
    """Tensors to ``device``; floating tensors to ``dtype`` except those named in ``keep_dtype`` (timesteps)."""
    moved = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and key not in keep_dtype:
                value = value.to(device=device, dtype=dtype)
            else:
                value = value.to(device=device)
        moved[key] = value
    return moved


def flow_sigmas(scheduler: Any, steps: int) -> tuple[str, Any]:
    """How the sampling loop walks noise -> data: the target's scheduler when it can, else plain Euler."""
    if scheduler is not None and hasattr(scheduler, "set_timesteps") and hasattr(scheduler, "step"):
        return "scheduler", scheduler
    return "euler", torch.linspace(1.0, 0.0, steps + 1)


def make_sampler(
    model: Callable[..., Any], kwargs: dict[str, Any], latent_key: str, timestep_key: str, scheduler: Any, steps: int,
    uncond: dict[str, Any] | None = None, guidance_scale: float = 1.0,
) -> tuple[Callable[[], torch.Tensor], str]:
    """A closure running an N-step flow-matching Euler sampling loop from ``kwargs[latent_key]``.

    With ``uncond`` (the kwargs of CFG's unconditional branch) every step runs two forwards,
    conditional then unconditional, and steps along ``v_u + guidance_scale (v_c - v_u)``, as a
    guided pipeline does.

    With a diffusers scheduler (``set_timesteps`` + ``step``) the loop is exactly a
    pipeline's denoising loop (a fresh copy of the scheduler per run, so runs are
    identical); without one it is plain Euler on ``x_t = (1 - t) x_0 + t eps`` with
    ``t`` from 1 to 0 in ``steps`` equal steps and timestep ``1000 t``. Returns
    (closure, description).
    """
    if latent_key not in kwargs:
        raise LinCompressError(
            f"the model's inputs have no {latent_key!r}; set Target(latent_key=...) to the kwarg that carries the latent"
        )
    latent = kwargs[latent_key]
    example_t = kwargs.get(timestep_key)
    t_dtype = example_t.dtype if isinstance(example_t, torch.Tensor) else torch.float32
    batch = latent.shape[0]
    kind, spec = flow_sigmas(scheduler, steps)
    cfg = f", CFG scale {guidance_scale:g} (2 forwards per step)" if uncond is not None else ""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = t.to(device=x.device, dtype=t_dtype).reshape(1).repeat(batch)  # contiguous, like the example
        v = model_output(model(**{**kwargs, latent_key: x, timestep_key: timestep}))
        if uncond is None:
            return v
        v_uncond = model_output(model(**{**uncond, latent_key: x, timestep_key: timestep}))
        return v_uncond + guidance_scale * (v - v_uncond)

    if kind == "scheduler":

        def run() -> torch.Tensor:
            sched = copy.deepcopy(spec)
            sched.set_timesteps(steps, device=latent.device)
            x = latent.clone()
            for t in sched.timesteps:
                x = sched.step(call(x, t), t, x, return_dict=False)[0]
            return x

        return run, f"{type(spec).__name__}, {steps} steps{cfg}"

    sigmas = spec.to(latent.device)

    def run_euler() -> torch.Tensor:
        x = latent.clone()
        for i in range(steps):
            v = call(x, sigmas[i] * 1000.0)
            x = (x.float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(latent.dtype)
        return x

    return run_euler, f"Euler (flow matching), {steps} steps{cfg}"


# --------------------------------------------------------------------------- fixed models


def candidate_sites(sites: list[SiteInfo]) -> list[SiteInfo]:
    return [s for s in sites if s.candidate]


def restore_original(model: nn.Module) -> None:
    """Undo ``hybridize_model``/``fix_model`` in place: every owner gets its original class back."""
    for _, module in list(model.named_modules()):
        if hasattr(module, SITES_ATTR) and getattr(type(module), "_lincompress_original_class", None) is not None:
            detach_sites(module)


@contextmanager
def fixed_in_place(
    model: nn.Module, sites: list[SiteInfo], selection: list[str], feature_map: str, eps: float = 1e-6
) -> Iterator[nn.Module]:
    """``model`` as the fixed hybrid with ``selection`` linear, restored to the original on exit.

    The linear sites' feature maps start at their initialisation (identity projections):
    speed does not depend on their values.
    """
    if iter_sites(model):
        raise LinCompressError("the model already carries lincompress sites; benchmark the original model")
    try:
        hybridize_model(model, sites, feature_map, eps)
        fix_model(model, selection)
        yield model
    finally:
        restore_original(model)


# --------------------------------------------------------------------------- environment


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment(device: torch.device) -> dict[str, Any]:
    """Device and library versions, for the JSON report."""
    import lincompress

    env: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lincompress": lincompress.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            cuda=torch.version.cuda,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        env["cpu_threads"] = torch.get_num_threads()
    for name in ("diffusers", "triton"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
        except ImportError:
            env[name] = None
    from lincompress.kernels import HAS_TRITON

    env["linear_attention_backend"] = "triton" if (HAS_TRITON and device.type == "cuda") else "pytorch reference"
    return env


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One benchmarked model: the original (``target_linear`` 0, no linear site) or a fixed hybrid."""

    variant: str
    target_linear: float
    num_linear: int
    num_candidates: int
    linear_sites: list[str]
    forward: Timing | None = None
    sampling: Timing | None = None
    peak_memory_bytes: int | None = None
    compile_s: float | None = None
    speedup_forward: float | None = None
    speedup_sampling: float | None = None
    forwards_per_step: int = 1  # denoiser forwards per sampler step: 2 with CFG, 1 unguided or guidance-distilled
    speedup_step: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step_ms(self) -> float | None:
        """Denoiser time per sampler step: one forward's median times the forwards per step."""
        return self.forward.median_ms * self.forwards_per_step if self.forward else None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "variant": self.variant,
            "target_linear": self.target_linear,
            "num_linear": self.num_linear,
            "num_candidates": self.num_candidates,
            "linear_sites": list(self.linear_sites),
            "forward_ms": self.forward.median_ms if self.forward else None,
            "forward": self.forward.to_dict() if self.forward else None,
            "sampling_ms": self.sampling.median_ms if self.sampling else None,
            "sampling": self.sampling.to_dict() if self.sampling else None,
            "speedup_forward": self.speedup_forward,
            "speedup_sampling": self.speedup_sampling,
            "forwards_per_step": self.forwards_per_step,
            "step_ms": self.step_ms,
            "speedup_step": self.speedup_step,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_mib": None if self.peak_memory_bytes is None else round(self.peak_memory_bytes / 2**20, 1),
            "compile_s": self.compile_s,
        }
        data.update(self.extra)
        return data


def speedup_range(base: Timing, row: Timing) -> tuple[float, float]:
    """The speed-up between the quartiles: slowest base quartile over the row's fastest, and the reverse."""
    return base.q1_ms / row.q3_ms, base.q3_ms / row.q1_ms


def fill_speedups(rows: list[Row]) -> None:
    """Speed-ups of every row against the first one (the original): medians, and their quartile range."""
    if not rows:
        return
    base = rows[0]
    for row in rows:
        if base.forward and row.forward:
            row.speedup_forward = base.forward.median_ms / row.forward.median_ms
            row.extra["speedup_forward_range"] = [round(x, 4) for x in speedup_range(base.forward, row.forward)]
        if base.sampling and row.sampling:
            row.speedup_sampling = base.sampling.median_ms / row.sampling.median_ms
            row.extra["speedup_sampling_range"] = [round(x, 4) for x in speedup_range(base.sampling, row.sampling)]
        if base.step_ms and row.step_ms:
            row.speedup_step = base.step_ms / row.step_ms


def spread_warnings(rows: list[Row]) -> list[str]:
    """One line naming every timing whose middle half spans more than ``WIDE_SPREAD`` of its median (none: [])."""
    wide = [f"{row.variant} {what} ({timing.spread:.0%})" for row in rows
            for what, timing in (("forward", row.forward), ("sampling", row.sampling))
            if timing is not None and timing.wide]
    if not wide:
        return []
    return [f"timings spread wide (interquartile range > {WIDE_SPREAD:.0%} of the median): {', '.join(wide)}; the "
            "machine was busy or the calls are too short, so these speed-ups are unreliable: re-run on an idle machine "
            "with more repetitions"]


def format_memory(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "n/a"
    if num_bytes >= 2**30:
        return f"{num_bytes / 2**30:.2f} GiB"
    return f"{num_bytes / 2**20:.1f} MiB"


def format_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:,.1f}" if ms >= 10 else f"{ms:.3f}"


def format_timing(timing: dict[str, Any] | None) -> str:
    """``median ±h%`` of a row's timing dict (h: half the interquartile range), ``!`` marking a wide spread."""
    if not timing:
        return "-"
    spread = timing.get("spread", 0.0)
    return f"{format_ms(timing['median_ms'])} ±{spread / 2:.0%}" + ("!" if spread > WIDE_SPREAD else "")


def format_speedup(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


# --------------------------------------------------------------------------- lincompress.bench


@dataclass
class BenchConfig(PassConfig):
    """What ``bench`` measures and how; every field is a flag of ``lincompress bench``."""

    targets: list[float] | None = option(
        None, parse=parse_targets, metavar="T,T,...",
        help=f"Comma-separated fractions of attention layers made linear (uniformly spread) [default: {DEFAULT_TARGETS}].")
    compile: bool = option(False, help="torch.compile every model (compile time is reported, not timed).")
    steps: int = option(8, low=0, help="Steps of the sampling loop (0: forward only).")
    batch_size: int = option(1, low=1, help="Batch size of the timed calls.")
    dtype: str = option("auto", choices=("auto", *DTYPES), help="auto: bf16 on CUDA, fp32 on CPU.")
    device: str = option("auto", help="cpu, cuda, cuda:N (auto: cuda when available).")
    feature_map: str = feature_map_option("Feature map of the linear sites (an artifact records its own).")
    select: str = option("uniform", choices=HEURISTICS, help="Which layers become linear for the targets.")
    warmup: int = option(2, low=0, help="Untimed calls before timing.")
    reps: int = option(10, low=1, help="Timed forwards (the median is reported).")
    sampling_reps: int = option(3, low=1, help="Timed sampling loops.")

    def check(self) -> None:
        if self.compile and self.warmup < 1:
            raise ArgumentError("{} needs {} >= 1: the first call compiles and must not be timed",
                                Arg("compile", True), Arg("warmup"))
        if self.targets is not None:
            self.targets = parse_targets(",".join(map(str, self.targets)))


def _measure(row: Row, model: nn.Module, kwargs: dict[str, Any], target: Target, device: torch.device,
             config: BenchConfig, uncond: dict[str, Any] | None = None, sampler: Any = None) -> None:
    """Fill ``row`` with forward/sampling timings and peak memory of ``model`` (compiled if asked).

    ``uncond``: CFG's unconditional kwargs, used by the sampling loop when the row runs 2 forwards per step.
    ``sampler``: a distilled artifact's ``SamplerConfig``; its loop runs the recorded steps on
    the recorded grid instead of ``config.steps`` on the target's scheduler.
    """
    runner = model
    if config.compile:
        torch._dynamo.reset()
        runner = torch.compile(model)
    with torch.no_grad():
        forward = time_call(lambda: runner(**kwargs), device, config.warmup, config.reps)
        row.forward = forward
        if config.compile:
            row.compile_s = round(forward.first_call_s, 3)  # the first warm-up call compiled the model
        row.peak_memory_bytes = forward.peak_memory_bytes
        row.extra["output_finite"] = bool(torch.isfinite(model_output(runner(**kwargs))).all())
        if config.steps > 0:
            scheduler, steps = (sampler.scheduler(), sampler.steps) if sampler is not None else (target.scheduler, config.steps)
            sample, how = make_sampler(runner, kwargs, target.latent_key, target.timestep_key, scheduler, steps,
                                       uncond if row.forwards_per_step == 2 else None, target.teacher_guidance_scale)
            row.sampling = time_call(sample, device, warmup=1, reps=config.sampling_reps)
            row.extra["sampling_steps"] = steps
            if sampler is not None:
                row.extra["sampler"] = f"recorded few-step sampler: {how}"


def bench(target: Target | str | Path, *, artifact: str | Path | None = None,
          log: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """Latency, speed-up and peak memory of ``target``'s model and its fixed hybrids, in one run.

    Measures the original model and, per target fraction (``targets``, uniformly spread by
    default), a fixed hybrid built in place -- or the ``artifact``'s model instead. Options
    are ``BenchConfig`` fields and ``TargetOptions`` fields (a model.py is rebuilt as the
    artifact recorded -- resolution, prompts, guidance -- unless they override it). A guided
    teacher (and a ``cfg`` student) runs 2 denoiser forwards per sampler step, a
    guidance-distilled student 1: each row's ``step_ms`` is its forward time times its
    ``forwards_per_step``, and the sampling loop runs them all. Returns the JSON-ready report:
    model, environment (device, versions), settings, and one row per model (median forward,
    per-step and sampling-loop ms, speed-ups against the original, peak device memory).
    """
    from lincompress.artifacts import apply, read_artifact
    from lincompress.guidance import GuidanceConfig, guidance_from_manifest
    from lincompress.passes.find_attention import FindAttention
    from lincompress.pipeline import State
    from lincompress.target_record import recorded_options

    target_fields = {f.name for f in config_fields(TargetOptions)}
    target_flags = {k: options.pop(k) for k in list(options) if k in target_fields}
    config = BenchConfig.build((), options, "bench")
    if artifact is not None and config.targets is not None:
        raise ArgumentError("{} and {} are exclusive: the artifact fixes which layers are linear; drop one of them",
                            Arg("artifact"), Arg("targets"))
    say = log or (lambda message: None)
    model_py = None
    if not isinstance(target, Target):
        model_py = str(Path(target).resolve())
        target = load_target(target, recorded_options(artifact, **target_flags) if artifact is not None
                             else TargetOptions(**target_flags))
    elif target_flags:
        target = TargetOptions(**target_flags).apply(target)
    teacher_guidance = GuidanceConfig.from_target(target)  # "cfg": the teacher's own forwards per step
    target_values = (config.targets if config.targets is not None else parse_targets(DEFAULT_TARGETS)) \
        if artifact is None else []
    dev = resolve_device(config.device)
    dt = resolve_dtype(config.dtype, dev)

    original = target.model.eval()
    variants: list[tuple[Row, Any]] = []  # (row, how to build its model)
    if artifact is not None:
        art = read_artifact(artifact)
        fixed = apply(copy.deepcopy(original), art).eval()  # validates base identity before any timing
        fm, candidates, selection = art.feature_map, art.candidates, art.selection
        frac = len(selection) / len(candidates) if candidates else 0.0
        student = teacher_guidance.updated(student=guidance_from_manifest(art.manifest).student)
        sampler = art.sampler  # a distilled artifact samples in its own steps
        label = (f"artifact ({len(selection)}/{len(candidates)} linear, {student.student}"
                 + (f", {sampler.steps}-step sampler)" if sampler else ")"))
        variants.append((Row(label, frac, len(selection), len(candidates), selection,
                             forwards_per_step=student.forwards_per_step), ("artifact", (fixed, sampler))))
        selection_source = f"artifact {artifact}"
    else:
        say("finding attention sites")
        state = FindAttention().run(State(target=target, model=original))
        if not state.candidates:
            raise LinCompressError("the model has no self- or joint-attention site to make linear; nothing to benchmark")
        fm = config.feature_map
        for t in target_values:
            if t == 0.0:
                continue  # the original row is the 0 % model
            chosen = heuristic_selection(state.candidates, t, config.select)
            variants.append((Row(f"linear {t:g}", t, len(chosen), len(state.candidates), chosen,
                                 forwards_per_step=teacher_guidance.forwards_per_step), ("in_place", (state.sites, chosen))))
        candidates = [s.name for s in state.candidates]
        selection_source = f"heuristic ({config.select})"

    settings: dict[str, Any] = {
        "steps": config.steps, "batch_size": config.batch_size, "dtype": str(dt).replace("torch.", ""),
        "device": str(dev), "compile": config.compile, "warmup": config.warmup, "reps": config.reps,
        "sampling_reps": config.sampling_reps, "targets": target_values, "feature_map": fm,
        "selection": selection_source,
        "guidance_scale": teacher_guidance.scale,
        "resolution": target.resolution.to_dict() if target.resolution is not None else None,
    }
    kwargs = move_inputs(target.inputs(config.batch_size), dev, dt, keep_dtype=(target.timestep_key,))
    uncond = None
    if teacher_guidance.guided and config.steps > 0:  # CFG's unconditional branch: the negative conditions
        uncond = {**kwargs, **move_inputs(target.negative_conditions(config.batch_size), dev, dt)}
    cast_model(original, dev, dt)

    base = Row("original", 0.0, 0, len(candidates), [], forwards_per_step=teacher_guidance.forwards_per_step)
    say(f"measuring the original on {device_name(dev)}")
    _measure(base, original, kwargs, target, dev, config, uncond)
    rows = [base]
    for row, (kind, payload) in variants:
        say(f"measuring {row.variant}")
        if kind == "artifact":
            original.to("cpu")
            release_memory(dev)
            fixed, sampler = payload
            cast_model(fixed, dev, dt)
            _measure(row, fixed, kwargs, target, dev, config, uncond, sampler)
        else:
            sites, chosen = payload
            with fixed_in_place(original, sites, chosen, fm):
                _measure(row, original, kwargs, target, dev, config, uncond)
        rows.append(row)
        release_memory(dev)
    fill_speedups(rows)
    noisy = spread_warnings(rows)
    for line in noisy:
        warnings.warn(LinCompressWarning(line), stacklevel=2)
    if config.steps > 0:
        _, settings["sampler"] = make_sampler(original, kwargs, target.latent_key, target.timestep_key,
                                              target.scheduler, config.steps)
    return {
        "format": REPORT_FORMAT,
        "model": target.name,
        "model_py": model_py or target.extras.get("source"),
        "environment": environment(dev),
        "settings": settings,
        "rows": [r.to_dict() for r in rows],
        "warnings": noisy,
    }
