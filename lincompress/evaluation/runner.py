"""``evaluate(target, artifact)``: the compressed model against the original, from the same noise.

1. Conditions and noise come from one seeded generator (the target's world, if it has
   one -- ``Target.extras["world"]`` -- else ``Target.conditions`` / the example inputs).
2. The teacher samples with the shared Euler flow-matching sampler over the target's
   scheduler sigmas (``lincompress.recovery.sampling``); at every point of its trajectory
   the compressed model's velocity is compared with the teacher's (per-timestep error).
3. The compressed model samples on its own from the same noise -- with the few-step
   sampler the artifact records (``"sampler"``: a distilled student's N steps on its own
   sigma grid), else on the teacher's grid -- and final samples are compared (PSNR / SSIM
   against the teacher at its full step count) and, with a world, scored analytically.

With classifier-free guidance (the target's ``guidance_scale`` and negative conditions)
the teacher samples with its guided velocity; the compressed model samples the way it
was trained (``GuidanceConfig.student``, read from the artifact unless given): ``cfg``
guided as well (two branches per step), ``distilled`` with one conditional forward.

A *world* is any object with ``sample_conditions(n, generator) -> list``,
``condition_inputs(conds) -> model kwargs``, ``to_frames(latents) -> (n, F, H, W, 3) in
[0, 1]`` and ``score(frames, conds) -> {metric: per-sample values}`` (optionally
``describe(cond) -> str`` and ``higher_is_better``); see ``examples/shapes/world.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lincompress import atomic
from lincompress.artifacts import apply, read_artifact
from lincompress.config import Arg, ArgumentError
from lincompress.errors import LinCompressError
from lincompress.evaluation.metrics import psnr, ssim, velocity_errors
from lincompress.evaluation.visual import comparison_gif, comparison_grid
from lincompress.guidance import GuidanceConfig, guidance_from_manifest
from lincompress.outputs import OutputDir
from lincompress.recovery.sampling import ConditionSource, Guidance, ModelCaller, euler_sample, latent_shape, sigma_grid
from lincompress.target import Target

RESULTS_JSON = "eval.json"
RESULTS_MD = "eval.md"
GRID_PNG = "eval_grid.png"
GRID_GIF = "eval.gif"
EVAL_FILES = (RESULTS_JSON, RESULTS_MD, GRID_PNG, GRID_GIF)


def check_eval_out(artifact: str | Path, out_dir: str | Path | None = None) -> OutputDir:
    """Where ``evaluate`` writes, checked before any work: our earlier results are replaced, nothing else is."""
    outputs = OutputDir(out_dir if out_dir is not None else artifact, "out_dir" if out_dir is not None else None)
    outputs.check(EVAL_FILES, replace=True, what="evaluation results")
    return outputs


@dataclass
class Samples:
    """What one model produced for the evaluation set."""

    final: Tensor  # (N, *latent)
    seconds: float


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("inf") if values else float("nan")
    return sum(finite) / len(finite)


def latents_to_frames(latents: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Generic latents (N, C, F, H, W) or (N, C, H, W) -> (N, F, H, W, 3) in [0, 1], scaled by per-sample lo/hi."""
    x = latents.detach().float()
    if x.dim() == 4:
        x = x[:, :, None]
    if x.dim() != 5:
        raise LinCompressError(f"cannot picture latents of shape {tuple(latents.shape)}; expected (N, C, F, H, W) or (N, C, H, W)")
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1, -1)
    shape = (-1, 1, 1, 1, 1)
    x = (x - lo.reshape(shape)) / (hi - lo).clamp(min=1e-8).reshape(shape)
    return x.clamp(0, 1).permute(0, 2, 3, 4, 1)


class _Evaluation:
    def __init__(self, target: Target, teacher: nn.Module, student: nn.Module, steps: int, device: torch.device,
                 guidance: Guidance | None = None, student_sigmas: Tensor | None = None) -> None:
        if target.scheduler is None:
            raise LinCompressError(
                "eval samples with the model's scheduler: add `scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=...)` "
                "to the Target in model.py"
            )
        self.target = target
        self.teacher = teacher
        self.student = student
        self.device = device
        scheduler = copy.deepcopy(target.scheduler)
        self.sigmas = sigma_grid(scheduler, steps)
        self.student_sigmas = self.sigmas if student_sigmas is None else student_sigmas  # a distilled student's own grid
        self.caller = ModelCaller(target, scheduler)
        self.guidance = guidance if guidance is not None else Guidance(target)

    def _forward(self, model: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return self.caller(model, x, sigma, cond).float()

    def velocity(self, model: nn.Module, cond: dict[str, Tensor]):
        """The sampler velocity: the teacher's guided one, the student's as its guidance mode says."""
        guided = self.guidance.teacher if model is self.teacher else self.guidance.student_velocity

        def fn(x: Tensor, sigma: Tensor) -> Tensor:
            return guided(self._forward, model, x, sigma, cond)

        return fn

    def clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.no_grad()
    def run(self, noise: Tensor, cond: dict[str, Tensor]) -> tuple[Samples, Samples, list[dict[str, Tensor]]]:
        noise = noise.to(self.device)
        cond = {k: v.to(self.device) for k, v in cond.items()}
        per_step: list[dict[str, Tensor]] = []
        student_v = self.velocity(self.student, cond)

        compare_seconds = 0.0

        def compare(i: int, x: Tensor, sigma: Tensor, v_teacher: Tensor) -> None:
            # the student's velocity at the teacher's trajectory point; its time is not the teacher's
            nonlocal compare_seconds
            t0 = self.clock()
            per_step.append(velocity_errors(student_v(x, sigma), v_teacher))
            compare_seconds += self.clock() - t0

        start = self.clock()
        teacher_final = euler_sample(self.velocity(self.teacher, cond), noise, self.sigmas, on_step=compare)
        teacher_seconds = self.clock() - start - compare_seconds
        start = self.clock()
        student_final = euler_sample(student_v, noise, self.student_sigmas)
        student_seconds = self.clock() - start
        return (Samples(teacher_final.cpu(), teacher_seconds), Samples(student_final.cpu(), student_seconds), per_step)


def evaluate(
    target: Target, artifact: str | Path, *, samples: int = 4, steps: int = 10, seed: int = 0,
    batch_size: int = 4, device: str | torch.device = "cpu", out_dir: str | Path | None = None,
    pictures: bool = True, guidance: GuidanceConfig | None = None,
) -> dict[str, Any]:
    """Evaluate ``artifact`` (applied to a copy of ``target.model``) against ``target.model``.

    ``guidance``: the CFG settings (scale: overrides the target's; student mode); default:
    what the artifact records. ``steps`` is the teacher's step count; the compressed model
    samples with the artifact's recorded few-step sampler when it has one (distillation),
    else on the same ``steps``-step grid. Writes ``eval.json``, ``eval.md``, ``eval_grid.png`` and
    ``eval.gif`` into ``out_dir`` (default: the artifact directory) and returns the results dict.
    """
    for name, value in (("samples", samples), ("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ArgumentError("{} must be a whole number of at least 1", Arg(name, value))
    artifact = Path(artifact)
    outputs = check_eval_out(artifact, out_dir)
    art = read_artifact(artifact)
    manifest, sampler = art.manifest, art.sampler
    if guidance is None:  # a distilled student's sampler records how it samples; else the artifact's guidance
        guidance = sampler.guidance if sampler is not None else guidance_from_manifest(manifest)
    if guidance.scale is not None and guidance.scale != target.teacher_guidance_scale:
        target = dataclasses.replace(target, guidance_scale=guidance.scale, extras=dict(target.extras))
    sampler_guidance = Guidance(target, guidance.student)
    device = torch.device(device)
    teacher = target.model.eval()
    student = apply(copy.deepcopy(teacher), artifact).eval()
    teacher.to(device)
    student.to(device)
    world = target.extras.get("world")
    shape = latent_shape(target)

    generator = torch.Generator().manual_seed(seed)
    if world is not None:
        conditions = world.sample_conditions(samples, generator)
        cond_all = world.condition_inputs(conditions)
    else:
        conditions = None
        cond_all = ConditionSource(target)(samples, generator)
    noise_all = torch.randn(samples, *shape, generator=generator)

    student_sigmas = torch.tensor(sampler.sigmas, dtype=torch.float32) if sampler is not None else None
    ev = _Evaluation(target, teacher, student, steps, device, sampler_guidance, student_sigmas)
    teacher_out, student_out, steps_err = [], [], []
    t_seconds = s_seconds = 0.0
    for lo in range(0, samples, batch_size):
        hi = min(samples, lo + batch_size)
        cond = {k: v[lo:hi] for k, v in cond_all.items()}
        t, s, per_step = ev.run(noise_all[lo:hi], cond)
        teacher_out.append(t.final)
        student_out.append(s.final)
        t_seconds += t.seconds
        s_seconds += s.seconds
        steps_err.append(per_step)
    teacher_final = torch.cat(teacher_out)
    student_final = torch.cat(student_out)

    # per-timestep velocity error, averaged over samples
    sigmas = ev.sigmas
    per_timestep = []
    for i in range(steps):
        rel = torch.cat([b[i]["rel_mse"] for b in steps_err])
        cos = torch.cat([b[i]["cosine"] for b in steps_err])
        per_timestep.append({"step": i, "sigma": round(float(sigmas[i]), 6), "rel_mse": float(rel.mean()),
                             "cosine": float(cos.mean())})

    # frames for PSNR / SSIM and pictures
    if world is not None:
        t_frames, s_frames = world.to_frames(teacher_final), world.to_frames(student_final)
    else:
        flat = teacher_final.flatten(1)
        lo_v, hi_v = flat.min(1).values, flat.max(1).values
        t_frames = latents_to_frames(teacher_final, lo_v, hi_v)
        s_frames = latents_to_frames(student_final, lo_v, hi_v)
    psnr_v = psnr(s_frames, t_frames)
    min_side = min(t_frames.shape[-3], t_frames.shape[-2])
    window = 11 if min_side >= 11 else (min_side if min_side % 2 else min_side - 1)
    ssim_v = ssim(s_frames, t_frames, window=max(window, 1)) if window >= 3 else None
    latent_rel_mse = ((student_final - teacher_final).pow(2).flatten(1).mean(1)
                      / teacher_final.pow(2).flatten(1).mean(1).clamp(min=1e-30))

    results: dict[str, Any] = {
        "model": target.name,
        "artifact": str(artifact),
        "selection": manifest.get("selection"),
        "num_linear": manifest.get("num_linear"),
        "num_candidates": manifest.get("num_candidates"),
        "settings": {"samples": samples, "steps": steps, "seed": seed, "batch_size": batch_size, "device": str(device),
                     "sampler": "euler flow matching over the target scheduler's sigmas",
                     "student_sampler": {"steps": len(ev.student_sigmas) - 1,
                                         "sigmas": [round(float(v), 6) for v in ev.student_sigmas],
                                         "recorded": sampler is not None},
                     "scheduler": type(target.scheduler).__name__,
                     "resolution": target.resolution.to_dict() if target.resolution is not None else None,
                     "latent_shape": list(shape),
                     "guidance": {"scale": sampler_guidance.scale if sampler_guidance.active else 1.0,
                                  "student": sampler_guidance.student,
                                  "teacher_forwards_per_step": 2 if sampler_guidance.active else 1,
                                  "student_forwards_per_step": sampler_guidance.forwards_per_step}},
        "fidelity": {
            "psnr_db": _mean(psnr_v.tolist()),
            "ssim": _mean(ssim_v.tolist()) if ssim_v is not None else None,
            "final_latent_rel_mse": float(latent_rel_mse.mean()),
            "velocity_rel_mse": _mean(p["rel_mse"] for p in per_timestep),
            "velocity_cosine": _mean(p["cosine"] for p in per_timestep),
        },
        "per_timestep": per_timestep,
        "per_sample": {"psnr_db": [float(v) for v in psnr_v],
                       "ssim": [float(v) for v in ssim_v] if ssim_v is not None else None},
        "timing": {"teacher_sampling_s": round(t_seconds, 3), "compressed_sampling_s": round(s_seconds, 3)},
    }
    if world is not None:
        t_scores = world.score(t_frames, conditions)
        s_scores = world.score(s_frames, conditions)
        results["world"] = {
            "name": getattr(world, "name", type(world).__name__),
            "teacher": {k: _mean(v) for k, v in t_scores.items()},
            "compressed": {k: _mean(v) for k, v in s_scores.items()},
            "higher_is_better": dict(getattr(world, "higher_is_better", {})),
            "conditions": [world.describe(c) if hasattr(world, "describe") else repr(c) for c in conditions],
        }
    out = Path(out_dir) if out_dir is not None else artifact
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": RESULTS_JSON, "markdown": RESULTS_MD}
    if pictures:
        captions = results["world"]["conditions"] if world is not None else None
        atomic.write_bytes(out / GRID_PNG, comparison_grid(t_frames, s_frames, captions))
        atomic.write_bytes(out / GRID_GIF, comparison_gif(t_frames, s_frames))
        files.update({"grid": GRID_PNG, "gif": GRID_GIF})
    results["files"] = files
    atomic.write_json(out / RESULTS_JSON, results)
    atomic.write_text(out / RESULTS_MD, markdown_report(results))
    outputs.add(files.values())
    outputs.forget(name for name in EVAL_FILES if name not in files.values())  # an earlier run's pictures
    return results


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def _sampler_line(sampler: dict[str, Any] | None) -> str:
    if not sampler or not sampler.get("recorded"):
        return "The compressed model samples on the teacher's grid (no distillation)."
    return (f"The compressed model samples with its recorded {sampler['steps']}-step sampler (sigmas "
            + ", ".join(f"{v:.3g}" for v in sampler["sigmas"]) + "); the teacher at its full step count.")


def guidance_line(g: dict[str, Any] | None) -> str:
    """One sentence on how teacher and compressed model were guided (``results["settings"]["guidance"]``)."""
    if not g or g.get("scale", 1.0) == 1.0:
        return "No classifier-free guidance (scale 1)."
    how = ("keeps CFG (2 denoiser forwards per step)" if g["student"] == "cfg"
           else "is guidance-distilled (1 denoiser forward per step)")
    return f"Teacher guided with CFG scale {g['scale']:g} (2 forwards per step); the compressed model {how}."


def markdown_report(results: dict[str, Any]) -> str:
    s = results["settings"]
    fid = results["fidelity"]
    lines = [
        f"# lincompress eval: {results['model']}",
        "",
        f"Artifact `{results['artifact']}`: {results['num_linear']} of {results['num_candidates']} candidate attention "
        f"sites linear ({', '.join(results['selection'] or []) or 'none'}).",
        f"{s['samples']} samples, {s['steps']} Euler flow-matching steps, seed {s['seed']}, device {s['device']}; "
        "teacher and compressed model start from the same noise and conditions.",
        _sampler_line(s.get("student_sampler")),
        guidance_line(s.get("guidance")),
        "",
        "## Fidelity to the teacher",
        "",
        "| metric | value |",
        "|---|---|",
        f"| PSNR of final samples (dB, higher is better) | {_fmt(fid['psnr_db'])} |",
        f"| SSIM of final samples (higher is better) | {_fmt(fid['ssim'])} |",
        f"| relative MSE of final latents | {_fmt(fid['final_latent_rel_mse'])} |",
        f"| velocity relative MSE, mean over timesteps | {_fmt(fid['velocity_rel_mse'])} |",
        f"| velocity cosine, mean over timesteps | {_fmt(fid['velocity_cosine'])} |",
        "",
        "Per timestep (student velocity at the teacher's trajectory points):",
        "",
        "| step | sigma | velocity rel. MSE | cosine |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p['step']} | {p['sigma']:.3f} | {_fmt(p['rel_mse'])} | {_fmt(p['cosine'])} |" for p in results["per_timestep"]]
    if "world" in results:
        w = results["world"]
        lines += ["", f"## World metrics ({w['name']}), computed from the frames", "",
                  "| metric | teacher | compressed | better |", "|---|---|---|---|"]
        for key, tv in w["teacher"].items():
            hib = w["higher_is_better"].get(key)
            lines.append(f"| {key} | {_fmt(tv)} | {_fmt(w['compressed'][key])} | "
                         f"{'higher' if hib else ('lower' if hib is False else '-')} |")
    t = results["timing"]
    lines += ["", f"Sampling time: teacher {t['teacher_sampling_s']:.2f} s, compressed {t['compressed_sampling_s']:.2f} s "
              f"({s['device']}; small models are dominated by overheads, see `lincompress bench` for speed).", ""]
    if "grid" in results.get("files", {}):
        lines += [f"![teacher vs compressed]({results['files']['grid']})", "",
                  f"Animated: [{results['files']['gif']}]({results['files']['gif']})", ""]
    return "\n".join(lines)
