"""The recovery training loop: objective + optional selective transfer, robust to interruption.

Determinism is what makes ``resume`` exact: every random draw of training comes from
one ``torch.Generator`` (on CPU, so it does not depend on the device), whose state --
with torch / CUDA / python / numpy streams -- is captured at the *start* of each step
and saved with the parameters and optimizer. A resumed run therefore replays the
remaining steps exactly as the uninterrupted run would have (bit-exactly on the same
device with the same thread count; float reductions depend on both).

Ctrl-C sets a flag the loop checks between steps (a second Ctrl-C aborts at once);
a KeyboardInterrupt raised inside a step is caught too: both save the last completed
step and stop with ``TrainingInterrupted``. A non-finite loss or gradient stops the
run with ``NonFiniteError`` without saving, so the last good checkpoint stays.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress.attention import SITES_ATTR, HybridAttention, iter_sites
from lincompress.devices import resolve_device
from lincompress.errors import LinCompressError
from lincompress.recovery.checkpoint import capture_rng, latest_step, load_checkpoint, restore_rng, save_checkpoint
from lincompress.recovery.objective_state import flatten_state, unflatten_state
from lincompress.recovery.objectives import Context, Objective, make_objective
from lincompress.recovery.progress import MetricsLog, TrainingProgress
from lincompress.recovery.report import write_report
from lincompress.recovery.sampling import (
    ConditionSource, Guidance, ModelCaller, check_flow_scheduler, latent_shape, sigma_grid, timestep_shift,
)
from lincompress.recovery.selective import SelectiveRegularizer
from lincompress.recovery.teacher_data import TeacherData, build_teacher_cache, load_teacher_cache
from lincompress.recovery_config import TRAINABLE, RecoveryConfig, SelectiveConfig
from lincompress.target import Target, prepare_conditions

__all__ = ["TRAINABLE", "NonFiniteError", "RecoveryConfig", "RecoveryResult", "Trainer", "TrainingInterrupted",
           "resolve_device"]


OBJECTIVE_PREFIX = "@objective."  # checkpoint tensors of the objective's own state (no module path starts with "@")


class NonFiniteError(LinCompressError):
    """Loss or gradients became NaN/inf."""


class TrainingInterrupted(LinCompressError):
    """Ctrl-C: the run saved a checkpoint and stopped."""


@dataclass
class RecoveryResult:
    selection: list[str] | None
    metrics: dict[str, Any]
    modified_parameters: set[str]
    records: list[dict[str, Any]]
    report: Path | None


class Trainer:
    """One recovery run over ``student`` (the hybrid) against ``target.model`` (the teacher)."""

    def __init__(
        self, target: Target, student: nn.Module, config: RecoveryConfig, work_dir: str | Path,
        selective: SelectiveConfig | None = None, selection: list[str] | None = None,
        objective: Objective | None = None, progress: bool = True, cache_dir: str | Path | None = None,
        stage: str = "recover",
    ) -> None:
        check_flow_scheduler(target.scheduler)
        if student is target.model:
            raise LinCompressError("recovery needs the original model as teacher; run passes.Hybridize(copy=True)")
        self.target, self.student, self.config = target, student, config
        self.work_dir = Path(work_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.work_dir  # teacher + prompt caches
        self.stage = stage  # "recover" | "distill": the progress bar's label
        self.device = resolve_device(config.device)
        self.autocast = self.device.type == "cuda" if config.autocast is None else bool(config.autocast)
        self.objective = objective or make_objective(config.objective, **config.objective_options)
        self.show_progress = progress
        self.sites: list[tuple[str, HybridAttention]] = iter_sites(student)
        if not self.sites:
            raise LinCompressError("recovery needs a hybridized model; run passes.Hybridize() before passes.Recover()")
        self.regularizer = SelectiveRegularizer(self.sites, selective, config.steps) if selective else None
        if self.regularizer is None:
            if selection is None:
                raise LinCompressError(
                    "Recover needs a selection: put passes.SelectiveTransfer(...) or passes.HeuristicSelect(...) before it"
                )
            self._apply_selection(selection)
        self.selection = selection
        self.teacher = target.model
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self._stop_requested = False
        self._error_before: float | None = None
        self._setup_model()
        self.log = MetricsLog(self.work_dir / "metrics.jsonl")

    # -- setup ---------------------------------------------------------------------
    def _apply_selection(self, selection: list[str]) -> None:
        names = {n for n, _ in self.sites}
        unknown = sorted(set(selection) - names)
        if unknown:
            raise LinCompressError(f"selection names sites the model does not have: {', '.join(unknown[:3])}")
        for name, site in self.sites:
            site.set_mode("linear" if name in selection else "softmax")
            site.score_logit.requires_grad_(False)

    @property
    def score_lr(self) -> float:
        """Scores must first travel to the constraint (~2-3 logit units) and then binarise within the run."""
        if self.config.lr_score is not None:
            return self.config.lr_score
        return min(0.5, max(1e-3, 10.0 / max(1, self.config.steps)))

    def _setup_model(self) -> None:
        cfg = self.config
        self.student.to(self.device).eval()  # eval: no dropout noise in a distillation target
        self._teacher_grad = {n: p.requires_grad for n, p in self.teacher.named_parameters()}
        self.teacher.to(self.device).eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable = getattr(self.student, "enable_gradient_checkpointing", None)
            if enable is None:
                raise LinCompressError(
                    f"--gradient-checkpointing needs a diffusers ModelMixin (enable_gradient_checkpointing); "
                    f"{type(self.student).__name__} has none"
                )
            enable()
        owners = {name.rsplit("#", 1)[0] for name, _ in self.sites}
        groups: dict[str, list[nn.Parameter]] = {"score": [], "feature_maps": [], "base": []}
        self.param_names: list[str] = []
        self.base_trained: set[str] = set()
        for name, param in self.student.named_parameters():
            if f"{SITES_ATTR}." in name:
                group = "score" if name.endswith("score_logit") else "feature_maps"
                train = group == "feature_maps" or self.regularizer is not None
            else:
                group = "base"
                owner_hit = any(name.startswith(f"{o}.") for o in owners if o) or "" in owners
                train = cfg.train == "all" or (cfg.train == "attention" and owner_hit)
                if train:
                    self.base_trained.add(name)
            param.requires_grad_(train)
            if train:
                groups[group].append(param)
                self.param_names.append(name)
        lrs = {"score": self.score_lr, "feature_maps": cfg.lr_feature_maps, "base": cfg.lr}
        param_groups = [{"params": ps, "lr": lrs[g], "name": g, "weight_decay": 0.0 if g == "score" else cfg.weight_decay}
                        for g, ps in groups.items() if ps]
        self.optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.999))
        self._params = dict(self.student.named_parameters())

    def _teacher_data(self) -> TeacherData | None:
        cfg = self.config
        needs = self.objective.needs_teacher_data or (getattr(self.objective, "regression", None) or 0) > 0
        if cfg.samples == 0:
            if needs:
                raise LinCompressError(f"objective {self.objective.name!r} trains on teacher trajectories; give --samples >= 1")
            return None
        cache = self.cache_dir / "teacher"
        console = None
        if self.show_progress:
            from rich.console import Console

            console = Console(stderr=True)

        def report(done: int, total: int) -> None:
            if console is not None:
                console.print(f"teacher trajectories: shard {done}/{total}")

        build_teacher_cache(self.target, self.teacher, cache, cfg.samples, cfg.teacher_steps, cfg.shard_size,
                            cfg.seed, self.device, self.autocast, progress=report, guidance=self.guidance)
        return load_teacher_cache(cache, cfg.samples)

    @property
    def guidance(self) -> Guidance:
        """The target's CFG (scale, negative conditions) with this run's student mode; prompts encoded once, cached."""
        if getattr(self, "_guidance", None) is None:
            console = None
            if self.show_progress:
                from rich.console import Console

                console = Console(stderr=True)

            def report(done: int, total: int) -> None:
                if console is not None and total > 1:
                    console.print(f"encoding prompts: chunk {done}/{total}")

            prepare_conditions(self.target, self.cache_dir / "prompts", progress=report)
            self._guidance = Guidance(self.target, self.config.student_guidance, self.config.cfg_batched)
        return self._guidance

    def _context(self, data: TeacherData | None) -> Context:
        steps = getattr(self.objective, "sampler_steps", 4)
        grid = getattr(self.objective, "sampler_sigmas", None)  # a few-step student's own (recorded) grid
        sigmas = torch.tensor(grid, dtype=torch.float32) if grid is not None else sigma_grid(self.target.scheduler, steps)
        return Context(
            student=self.student, teacher=self.teacher, caller=ModelCaller(self.target, self.target.scheduler),
            conditions=ConditionSource(self.target), latent_shape=latent_shape(self.target),
            shift=timestep_shift(self.target.scheduler), student_sigmas=sigmas,
            generator=self.generator, device=self.device, autocast=self.autocast, data=data, guidance=self.guidance,
        )

    # -- checkpoints -----------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def save(self, step: int, rng: dict[str, Any]) -> None:
        extra = {"regularizer": self.regularizer.state_dict() if self.regularizer else None,
                 "config": asdict(self.config), "objective": self.objective.name,
                 "velocity_error_before": self._error_before}
        params = {n: self._params[n].detach() for n in self.param_names}
        objective_tensors, extra["objective_state"] = flatten_state(self.objective.state_dict())
        params.update({OBJECTIVE_PREFIX + k: v for k, v in objective_tensors.items()})
        save_checkpoint(self.checkpoint_dir, step, params, self.optimizer.state_dict(), rng, extra)

    def resume(self) -> int:
        """Load the latest checkpoint, if any; returns the step training continues from."""
        ckpt = load_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            return 0
        if ckpt.extra.get("objective") != self.objective.name:
            raise LinCompressError(
                f"the checkpoint in {self.checkpoint_dir} was trained with objective {ckpt.extra.get('objective')!r}; "
                f"resume with the same --objective or delete {self.checkpoint_dir}"
            )
        trained_for = (ckpt.extra.get("config") or {}).get("student_guidance", "cfg")
        if trained_for != self.config.student_guidance:
            raise LinCompressError(
                f"the checkpoint in {self.checkpoint_dir} trained a {trained_for!r} student; resume with the same "
                f"student guidance or delete {self.checkpoint_dir}"
            )
        objective_tensors = {k[len(OBJECTIVE_PREFIX):]: v for k, v in ckpt.params.items() if k.startswith(OBJECTIVE_PREFIX)}
        ckpt.params = {k: v for k, v in ckpt.params.items() if not k.startswith(OBJECTIVE_PREFIX)}
        if ckpt.extra.get("objective_state") is not None:
            self.objective.load_state_dict(unflatten_state(objective_tensors, ckpt.extra["objective_state"], self.device))
        elif self.objective.stateful:
            raise LinCompressError(f"the checkpoint in {self.checkpoint_dir} holds no state of objective "
                                   f"{self.objective.name!r}; delete {self.checkpoint_dir} to start over")
        missing = sorted(set(self.param_names) - set(ckpt.params))
        if missing:
            raise LinCompressError(f"checkpoint lacks trained parameter {missing[0]}; resume with the same --train setting")
        with torch.no_grad():
            for name, value in ckpt.params.items():
                self._params[name].copy_(value.to(self._params[name].device))
        if self.regularizer is not None and ckpt.extra.get("regularizer"):
            self.regularizer.load_state_dict(ckpt.extra["regularizer"])
        self.optimizer.load_state_dict(ckpt.optimizer)
        for group in self.optimizer.param_groups:  # a changed --lr applies on resume
            group["lr"] = {"score": self.score_lr, "feature_maps": self.config.lr_feature_maps}.get(
                group.get("name"), self.config.lr)
        restore_rng(ckpt.rng, self.generator)
        self._error_before = ckpt.extra.get("velocity_error_before")
        self.step = ckpt.step
        return ckpt.step

    # -- training --------------------------------------------------------------------------
    @torch.no_grad()
    def velocity_error(self, data: TeacherData | None, ctx: Context) -> float | None:
        """Mean squared velocity error to the teacher on fixed cached points (None without a cache)."""
        if data is None:
            return None
        x, sigma, v_t, cond = data.eval_points(self.config.eval_points)
        total, count = 0.0, 0
        for start in range(0, x.shape[0], self.config.batch_size):
            sl = slice(start, start + self.config.batch_size)
            v_s = ctx.student_velocity(x[sl].to(self.device), sigma[sl], {k: c[sl].to(self.device) for k, c in cond.items()})
            total += float(((v_s - v_t[sl].to(self.device)) ** 2).sum())
            count += v_s.numel()
        return total / count

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            self._stop_requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts now

        return signal.signal(signal.SIGINT, handler)

    def _train_step(self, ctx: Context, step: int) -> dict[str, float]:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        def check(what: str, value: float) -> None:
            if not torch.isfinite(torch.tensor(value)):
                raise self._nonfinite(step, what, value)

        logs: dict[str, float] = dict(self.objective.before_step(ctx, cfg.batch_size, check))  # DMD2: fake-score updates
        total = 0.0
        for _ in range(cfg.grad_accum):
            loss, obj_logs = self.objective.loss(ctx, cfg.batch_size)
            value = loss.item() / cfg.grad_accum
            if not torch.isfinite(torch.tensor(value)):
                raise self._nonfinite(step, "loss", value)
            total += value
            for k, v in obj_logs.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
            (loss / cfg.grad_accum).backward()
        logs["objective"] = total
        if self.regularizer is not None:
            self.regularizer.normalize_objective_grads()
            penalty, reg_logs = self.regularizer.penalty(step)
            logs.update(reg_logs)
            if penalty is not None:
                value = penalty.item()
                if not torch.isfinite(torch.tensor(value)):
                    raise self._nonfinite(step, "selection penalty", value)
                total += value
                penalty.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not torch.isfinite(norm):
            raise self._nonfinite(step, "gradient norm", float(norm))
        self.optimizer.step()
        logs["loss"] = total
        logs["grad_norm"] = float(norm)
        return logs

    def _nonfinite(self, step: int, what: str, value: float) -> NonFiniteError:
        self.optimizer.zero_grad(set_to_none=True)
        good = latest_step(self.checkpoint_dir)
        kept = f"the last good checkpoint (step {good}) is kept in {self.checkpoint_dir}" if good is not None else "no checkpoint was written yet"
        return NonFiniteError(
            f"{what} became {value} at step {step + 1}; training stopped, {kept}; lower --lr (or --grad-clip) and re-run with --resume"
        )

    def _record(self, step: int, logs: dict[str, float], seconds: float) -> dict[str, Any]:
        record: dict[str, Any] = {"step": step, **logs, "seconds": round(seconds, 4)}
        if self.regularizer is not None:
            record["num_linear"] = self.regularizer.num_linear_now()
            if step % self.config.log_scores_every == 0 or step == self.config.steps:
                record["scores"] = {n: round(v, 5) for n, v in self.regularizer.scores().items()}
        else:
            record["num_linear"] = len(self.selection or [])
        self.log.append(record)
        return record

    def run(self, resume: bool = False, name: str = "model") -> RecoveryResult:
        cfg = self.config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        data = self._teacher_data()
        ctx = self._context(data)
        self.objective.setup(ctx)  # auxiliary networks (DMD2's fake score), before a resume loads their state
        start = self.resume() if resume else 0
        if start:
            self.log.resume_at(start)
        else:
            self.log.start()
        if start == 0:
            self._error_before = self.velocity_error(data, ctx)
        initial = self._snapshot() if data is not None and cfg.compare_without_recovery else None
        previous = self._install_sigint()
        k = self.regularizer.k if self.regularizer else len(self.selection or [])
        started = time.perf_counter()
        try:
            with TrainingProgress(cfg.steps, len(self.sites), k, enabled=self.show_progress, start=start,
                                  label=self.stage) as bar:
                step = start
                while step < cfg.steps:
                    rng = capture_rng(self.generator)  # the state this step starts from
                    if self._stop_requested:
                        self.save(step, rng)
                        raise self._interrupted(step)
                    t0 = time.perf_counter()
                    try:
                        logs = self._train_step(ctx, step)
                    except KeyboardInterrupt:
                        self.optimizer.zero_grad(set_to_none=True)
                        if self.objective.stateful:  # its state moved inside this step: the step's start is gone
                            raise self._interrupted_unsaved(step) from None
                        self.save(step, rng)
                        raise self._interrupted(step) from None
                    step += 1
                    self.step = step
                    if self.regularizer is not None:
                        self.regularizer.after_step(step)
                    record = self._record(step, logs, time.perf_counter() - t0)
                    bar.update(step, record["objective"], record["num_linear"])
                    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                        self.save(step, capture_rng(self.generator))
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            for n, p in self.teacher.named_parameters():
                p.requires_grad_(self._teacher_grad.get(n, True))
        if self.regularizer is not None:
            if not self.regularizer.hardened:
                self.regularizer.harden(cfg.steps)
            self.selection = self.regularizer.final_selection()
        metrics: dict[str, Any] = {
            "objective": self.objective.name, "steps": cfg.steps, "resumed_from": start or None,
            "seconds": round(time.perf_counter() - started, 2),
            "final_loss": self.log.records[-1]["loss"] if self.log.records else None,
            "velocity_error_before": self._error_before, "velocity_error_after": self.velocity_error(data, ctx),
        }
        if initial is not None:  # same final selection, weights as they were before training
            trained = self._snapshot()
            self._load(initial)
            metrics["velocity_error_without_recovery"] = self.velocity_error(data, ctx)
            self._load(trained)
        return RecoveryResult(self.selection, metrics, set(self.base_trained), self.log.records,
                              self._write_report(name, metrics))

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: self._params[n].detach().to("cpu", copy=True) for n in self.param_names}

    @torch.no_grad()
    def _load(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self._params[name].copy_(value)

    def _interrupted_unsaved(self, step: int) -> TrainingInterrupted:
        good = latest_step(self.checkpoint_dir)
        kept = f"the last checkpoint (step {good}) is kept" if good is not None else "no checkpoint was written yet"
        return TrainingInterrupted(f"interrupted inside step {step + 1}; {kept} in {self.checkpoint_dir}; "
                                   "run again with --resume to continue")

    def _interrupted(self, step: int) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"interrupted at step {step}; checkpoint saved in {self.checkpoint_dir}; run again with --resume to continue"
        )

    def _write_report(self, name: str, metrics: dict[str, Any]) -> Path:
        reg = self.regularizer
        summary = {
            "name": name, "sites": [n for n, _ in self.sites], "selection": self.selection,
            "final_scores": reg.scores() if reg else {}, "frozen_at": dict(reg.frozen) if reg else {},
            "metrics": metrics,
            "settings": {**asdict(self.config), **({"selective_transfer": reg.config.to_dict()} if reg else {}),
                         "objective_settings": self.objective.settings(), "device": str(self.device),
                         "autocast_bf16": self.autocast},
        }
        return write_report(self.work_dir, summary, self.log.records)
