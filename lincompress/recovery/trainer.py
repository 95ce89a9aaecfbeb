"""The recovery training loop: objective + optional selective transfer, robust to interruption.

Determinism is what makes ``resume`` exact: every random draw of training comes from
one ``torch.Generator`` (on CPU, so it does not depend on the device), whose state --
with torch / CUDA / python / numpy streams -- is captured at the *start* of each step
and saved with the parameters and optimizer. A resumed run therefore replays the
remaining steps exactly as the uninterrupted run would have (bit-exactly on the same
device with the same thread count; float reductions depend on both), and reports the
same numbers: the velocity error before training, the weights "without recovery" is
measured with and the elapsed training time are in the checkpoint too, and so is the
objective's own trained state (DMD2's fake-score network and its optimizer: the named
state ``objective``, loaded after ``objective.setup``).

Checkpoints (``lincompress.recovery.checkpoint``, on torch.distributed.checkpoint) are
written every ``checkpoint_every`` steps (default: a tenth of the run), whenever
``checkpoint_minutes`` passed since the last one, and at the end. SIGINT (Ctrl-C),
SIGTERM (what ``timeout`` and job schedulers send) and SIGHUP set a flag: the current step
finishes, a checkpoint is written and the run stops with ``TrainingInterrupted`` (exit
status 128 + the signal's number). A second signal stops at once, keeping the last
checkpoint -- or, when the step had not yet changed any state (never for an objective
with state of its own, which its ``before_step`` updates), checkpointing the last completed
step. A non-finite loss or gradient stops the run with ``NonFiniteError``
without saving, so the last good checkpoint stays.

Several processes (an initialised process group: ``lincompress optimize --nproc N``,
``torchrun``, or the caller's own): ``DataParallel`` (``recovery/data_parallel.py``) is
consulted at a few points -- where modules are placed (FSDP2-sharded training copies of
student, teacher and an objective's ``distributed_modules()``), each micro-batch's random
stream and gradient sync, the replicated scores' gradient average and the global gradient
clip, the split of teacher shards and eval points, rank-0-only files and output, and the
copy of the trained values back into the caller's model. Stop signals and time-based
checkpoints are agreed by all ranks before anyone acts on them; a second signal stops
without a checkpoint (saving is a collective).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress.attention import SITES_ATTR, HybridAttention, iter_sites
from lincompress.config import Arg, ArgumentError, literal
from lincompress.devices import resolve_device
from lincompress.distributed import sharding
from lincompress.errors import LinCompressError
from lincompress.fingerprint import model_fingerprint
from lincompress.recovery.checkpoint import (
    LATEST, OptimizerState, ParameterState, latest_step, load_checkpoint, read_checkpoint_info, save_checkpoint,
)
from lincompress.recovery.data_parallel import DataParallel, MicroBatchStreams
from lincompress.recovery.objectives import Context, Objective, make_objective
from lincompress.recovery.progress import MetricsLog, TrainingProgress
from lincompress.recovery.report import METRICS_JSONL, write_report
from lincompress.recovery.sampling import (
    ConditionSource, Guidance, ModelCaller, check_flow_scheduler, latent_shape, sigma_grid, timestep_shift,
)
from lincompress.recovery.selective import SelectiveRegularizer
from lincompress.recovery.teacher_data import TeacherData, build_teacher_cache, load_teacher_cache, shared_cache_dir
from lincompress.regional_compile import compiled_blocks
from lincompress.recovery_config import TRAINABLE, RecoveryConfig, SelectiveConfig
from lincompress.target import Target, prepare_conditions

__all__ = ["RESUME", "TRAINABLE", "NonFiniteError", "RecoveryConfig", "RecoveryResult", "Trainer",
           "TrainingInterrupted", "check_resume", "resolve_device"]

RESUME = (False, True, "auto")  # start (refusing to discard a checkpoint), continue one (it must exist), either
# RecoveryConfig fields a resumed run may change: how long, how fast and where it trains (a changed
# --lr applies from the resumed step). Every other recorded setting -- what the run learns from and
# toward: objective and its options, seed, batch, teacher trajectories, eval points, guidance,
# selection -- must be the checkpoint's, or the resumed run would silently train another run.
RESUME_MAY_CHANGE = frozenset({
    "steps", "lr", "lr_feature_maps", "lr_score", "weight_decay", "grad_clip", "grad_accum", "checkpoint_every",
    "checkpoint_minutes", "log_scores_every", "gradient_checkpointing", "compile", "compile_backend", "autocast",
    "device", "nproc", "cache_dir", "cfg_batched", "compare_without_recovery",
})
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def check_resume(resume: Any) -> bool | str:
    if not (resume is True or resume is False or (isinstance(resume, str) and resume == "auto")):
        raise ArgumentError("{} must be False, True or 'auto' (resume when there is a checkpoint)", Arg("resume", resume))
    return resume


class _Abort(BaseException):
    """Raised by the signal handler to stop now: on a second signal, or on the first outside the training steps.

    A BaseException, so that model code catching ``Exception`` does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class NonFiniteError(ArgumentError):
    """Loss or gradients became NaN/inf."""


class TrainingInterrupted(ArgumentError):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP): the run checkpointed (or kept its last checkpoint) and stopped.

    ``exit_code`` is the shell's convention for death by that signal (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, template: str, *arguments: Arg, signum: int = signal.SIGINT) -> None:
        super().__init__(template, *arguments)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


@dataclass
class RecoveryResult:
    selection: list[str] | None
    metrics: dict[str, Any]
    modified_parameters: set[str]
    records: list[dict[str, Any]]
    report: Path | None


class InitialWeights:
    """The trained tensors as they were before step 1, for "velocity error without recovery".

    Tensors equal to the teacher's parameter of the same name (every base parameter of a
    hybridized copy) are recorded by name only; the rest (site parameters, anything a
    previous pass changed) are kept as CPU copies. Small, so every checkpoint carries it.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.from_teacher: list[str] = []

    @torch.no_grad()
    def capture(self, params: dict[str, nn.Parameter], teacher: dict[str, nn.Parameter],
                parallel: DataParallel | None = None) -> None:
        """Sharded parameters (several processes) compare shard by shard and copy whole: one copy on every rank."""
        self.tensors, self.from_teacher = {}, []
        ctx = parallel.ctx if parallel is not None else None
        names = list(params)
        same = [teacher.get(n) is not None and sharding.equal_locally(teacher[n], params[n]) for n in names]
        if ctx is not None and ctx.active:  # equal on every rank
            same = [votes == ctx.world_size for votes in ctx.sum([float(x) for x in same])]
        for name, equal in zip(names, same):
            if equal:
                self.from_teacher.append(name)
            else:
                self.tensors[name] = sharding.full(params[name])

    @torch.no_grad()
    def load_into(self, params: dict[str, nn.Parameter], teacher: dict[str, nn.Parameter]) -> None:
        for name in self.from_teacher:
            sharding.local(params[name]).copy_(sharding.local(teacher[name]))
        for name, value in self.tensors.items():
            sharding.copy_full_(params[name], value)

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": dict(self.tensors), "from_teacher": list(self.from_teacher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tensors, self.from_teacher = dict(state.get("tensors", {})), list(state["from_teacher"])


class _Stateful:
    """Adapts a JSON state (``get()`` / ``put(state)``) to the checkpoint's named-state protocol."""

    def __init__(self, get: Any, put: Any) -> None:
        self.state_dict, self.load_state_dict = get, put


class Trainer:
    """One recovery run over ``student`` (the hybrid) against ``target.model`` (the teacher).

    ``work_dir`` holds checkpoints, metrics.jsonl and the report. The teacher/prompt caches
    live in ``config.cache_dir`` when it names a directory shared between runs (one
    subdirectory per teacher and settings), else in ``cache_dir`` (default ``work_dir``; a
    later stage passes the earlier stage's, so they are built once). ``stage`` labels the
    progress bar.
    """

    # what continues an interrupted run, for its messages (a temporary work dir adds work_dir=...)
    resume_with: tuple[Arg, ...] = (Arg("resume", True),)

    def __init__(
        self, target: Target, student: nn.Module, config: RecoveryConfig, work_dir: str | Path,
        selective: SelectiveConfig | None = None, selection: list[str] | None = None,
        objective: Objective | None = None, progress: bool = True, cache_dir: str | Path | None = None,
        stage: str = "recover",
    ) -> None:
        check_flow_scheduler(target.scheduler)
        if student is target.model:
            raise LinCompressError("recovery needs the original model as teacher; run passes.Hybridize(copy=True)")
        self.parallel = DataParallel.create(config.device, config.nproc)  # the process group, checked against nproc
        self.target, self.config = target, config
        self.original_student = student  # trained in place; with several processes through a sharded copy
        self.student = student = self.parallel.training_copy(student)
        self.work_dir = Path(work_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.work_dir  # caches without config.cache_dir
        self.stage = stage  # "recover" | "distill": the progress bar's label
        self.device = self.parallel.device
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
        self.teacher = self.parallel.training_copy(target.model)
        self.rng = MicroBatchStreams(config.seed, config.grad_accum, self.parallel.ctx)  # a stream per micro-batch
        self.generator = self.rng.generators[0]  # (one process, no accumulation: the seed's generator itself)
        self.initial = InitialWeights()
        self.step = 0
        self._stop_signal: int | None = None
        # What a signal may interrupt at once: "interruptible" (no training state at risk), "compute" (only
        # gradients changed so far), "update" (never), "idle" / "save" (only a second signal).
        self._phase = "interruptible"
        self._saved_step: int | None = None
        self._error_before: float | None = None
        self._elapsed = 0.0  # training seconds up to the last checkpoint (previous sessions included)
        self._setup_model()
        self.log = MetricsLog(self.work_dir / METRICS_JSONL, write=self.parallel.is_main)

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

    @property
    def checkpoint_every(self) -> int:
        """Steps between checkpoints: the config's, else a tenth of the run (so a kill loses at most 10 %)."""
        return self.config.checkpoint_every or max(1, self.config.steps // 10)

    def _setup_model(self) -> None:
        cfg = self.config
        self.student.eval()  # eval: no dropout noise in a distillation target
        self._teacher_grad = {n: p.requires_grad for n, p in self.teacher.named_parameters()}
        self.teacher.eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable = getattr(self.student, "enable_gradient_checkpointing", None)
            if enable is not None:
                enable()
            elif not sharding.checkpoint_blocks(self.student):
                raise ArgumentError(
                    f"{{}} needs a diffusers ModelMixin (enable_gradient_checkpointing) or repeated transformer blocks "
                    f"(an nn.ModuleList of one block class); {literal(type(self.student).__name__)} has neither",
                    Arg("gradient_checkpointing", True))
        owners = {name.rsplit("#", 1)[0] for name, _ in self.sites}
        groups: dict[str, list[str]] = {"score": [], "feature_maps": [], "base": []}
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
                groups[group].append(name)
                self.param_names.append(name)
        self.parallel.place(self._modules_to_place(), mixed_precision=self.autocast)
        self._params = dict(self.student.named_parameters())  # (sharded: FSDP2 replaced them)
        lrs = {"score": self.score_lr, "feature_maps": cfg.lr_feature_maps, "base": cfg.lr}
        param_groups = [{"params": [self._params[n] for n in names], "lr": lrs[g], "name": g,
                         "weight_decay": 0.0 if g == "score" else cfg.weight_decay}
                        for g, names in groups.items() if names]
        self.optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.999))

    def _modules_to_place(self) -> dict[str, tuple[nn.Module, str]]:
        """Every module the run trains or runs, with its role: the single place they are collected.

        An objective that owns trainable networks (a fake-score model) names them in
        ``distributed_modules() -> {name: module}``: they are placed like the student (moved to the
        device, or sharded with FSDP2 over the processes -- which replaces their parameters, so the
        objective builds their optimizer afterwards, e.g. on its first ``loss`` call).
        """
        modules: dict[str, tuple[nn.Module, str]] = {"student": (self.student, "trained"),
                                                      "teacher": (self.teacher, "frozen")}
        hook = getattr(self.objective, "distributed_modules", None)
        own = hook() if callable(hook) else {}
        for name, module in own.items():
            modules[f"objective.{name}"] = (module, "auxiliary")
        named = {id(m) for m in own.values()}
        hidden = [k for k, v in vars(self.objective).items() if isinstance(v, nn.Module) and id(v) not in named
                  and any(p.requires_grad for p in v.parameters())]
        if hidden and self.parallel.active:  # it would train apart on every rank
            raise LinCompressError(
                f"objective {self.objective.name!r} trains its own network {hidden[0]!r}, which must be data-parallel "
                "over the processes: return it from the objective's distributed_modules() -> {name: module}")
        return modules

    def _cache_root(self) -> Path:
        """Where teacher trajectories / prompt embeddings live: the shared ``config.cache_dir``, else ``cache_dir``."""
        return Path(self.config.cache_dir) if self.config.cache_dir is not None else self.cache_dir

    def _console(self) -> Any:
        if not self.show_progress or not self.parallel.is_main:
            return None
        from rich.console import Console

        return Console(stderr=True)

    def _teacher_data(self) -> TeacherData | None:
        cfg = self.config
        needs = self.objective.needs_teacher_data or (getattr(self.objective, "regression", None) or 0) > 0
        if cfg.samples == 0:
            if needs:
                raise ArgumentError(f"objective {literal(repr(self.objective.name))} trains on teacher trajectories; "
                                    "give {} >= 1", Arg("samples"))
            return None
        fingerprint = model_fingerprint(self.target.model)  # the unsharded original's (the copy may be sharded)
        cache = (shared_cache_dir(self._cache_root(), self.target, self.teacher, cfg.teacher_steps, cfg.shard_size,
                                  cfg.seed, self.guidance, fingerprint)
                 if cfg.cache_dir is not None else self.cache_dir / "teacher")
        console = self._console()

        def report(done: int, total: int) -> None:
            if console is not None:
                console.print(f"teacher trajectories: shard {done}/{total}")

        build_teacher_cache(self.target, self.teacher, cache, cfg.samples, cfg.teacher_steps, cfg.shard_size,
                            cfg.seed, self.device, self.autocast, progress=report, guidance=self.guidance,
                            parallel=self.parallel.ctx, fingerprint=fingerprint)
        self.teacher_cache = cache
        return load_teacher_cache(cache, cfg.samples)

    @property
    def guidance(self) -> Guidance:
        """The target's CFG (scale, negative conditions) with this run's student mode; prompts encoded once, cached."""
        if getattr(self, "_guidance", None) is None:
            console = self._console()

            def report(done: int, total: int) -> None:
                if console is not None and total > 1:
                    console.print(f"encoding prompts: chunk {done}/{total}")

            with self.parallel.ctx.main_first():  # rank 0 encodes and caches, the others read the cache
                prepare_conditions(self.target, self._cache_root() / "prompts", progress=report)
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

    def states(self) -> dict[str, Any]:
        """Everything a checkpoint holds, by name (see ``lincompress.recovery.checkpoint``)."""
        states: dict[str, Any] = {
            "model": ParameterState({n: self._params[n] for n in self.param_names}),
            "optimizer": OptimizerState(self.student, self.optimizer),
            "rng": self.rng,
            "initial": self.initial,
            "objective": self.objective,  # its own trained state (DMD2: the fake score + its optimizer), {} for most
        }
        if self.regularizer is not None:
            states["regularizer"] = _Stateful(self.regularizer.state_dict, self.regularizer.load_state_dict)
        return states

    def save(self, step: int) -> None:
        """Checkpoint ``step`` with the RNG streams captured at the start of step ``step + 1``."""
        phase, self._phase = self._phase, "save"
        try:
            extra = {"config": asdict(self.config), "objective": self.objective.name, "trained": list(self.param_names),
                     **self._trains_toward(),
                     "velocity_error_before": self._error_before, "elapsed": self._elapsed_now(),
                     "processes": self.parallel.ctx.world_size, "micro_batches": self.rng.slots}
            self.parallel.check_replicated(self._params)  # (several processes: the scores agree on every rank)
            save_checkpoint(self.checkpoint_dir, step, self.states(), extra)
            self._saved_step = step
            self._last_save = time.perf_counter()
        finally:
            self._phase = phase

    def _trains_toward(self) -> dict[str, Any]:
        """What this run learns toward besides its config, as JSON: selection, latent shape, teacher guidance."""
        reg = self.regularizer
        return {"selective": reg.config.to_dict() if reg is not None else None,
                "selection": sorted(self.selection) if reg is None else None,
                "latent_shape": list(latent_shape(self.target)),
                "guidance": {"scale": self.guidance.scale if self.guidance.active else 1.0,
                             "negative": self.guidance.active}}

    def _check_compatible(self, extra: dict[str, Any]) -> None:
        """A checkpoint resumes only into the run that wrote it: same objective, student mode, trained set, and
        every recorded setting outside ``RESUME_MAY_CHANGE``; the first difference is one line naming it."""
        where = literal(self.checkpoint_dir)
        if extra.get("objective") != self.objective.name:
            raise ArgumentError(f"the checkpoint in {where} was trained with {{}}; resume with the same {{}} or start "
                                "over with {}", Arg("objective", extra.get("objective")), Arg("objective"),
                                Arg("overwrite", True))
        trained_for = (extra.get("config") or {}).get("student_guidance", "cfg")
        if trained_for != self.config.student_guidance:
            raise ArgumentError(f"the checkpoint in {where} trained a {literal(repr(trained_for))} student; resume with "
                                "the same student guidance ({}) or start over with {}",
                                Arg("student_guidance", trained_for), Arg("overwrite", True))
        slots, world = extra.get("micro_batches", 1), self.parallel.ctx.world_size
        if slots != self.rng.slots:  # the global batch: nproc x grad_accum micro-batches, each its own random stream
            was = f"{_processes(extra.get('processes', 1))} x {{}}"
            how = (f"here {{}} on {_processes(world)}" if slots % world == 0 else
                   f"on a number of processes that divides {slots}")
            raise ArgumentError(
                f"the checkpoint in {where} was trained with {slots} micro-batches per step ({was}); resume with "
                f"nproc x grad_accum = {slots}, {how}, or start over with {{}}",
                Arg("grad_accum", (extra.get("config") or {}).get("grad_accum", 1)),
                *([Arg("grad_accum", slots // world)] if slots % world == 0 else []), Arg("overwrite", True))
        trained = extra.get("trained")
        if trained is not None and sorted(trained) != sorted(self.param_names):
            was = (extra.get("config") or {}).get("train", "?")
            raise ArgumentError(f"the checkpoint in {where} trained other parameters ({{}}); resume with the same "
                                "setting and model or start over with {}", Arg("train", was), Arg("overwrite", True))
        self._check_same_settings(extra, where)

    def _check_same_settings(self, extra: dict[str, Any], where: str) -> None:
        def differs(saved: Any, now: Any) -> bool:  # the checkpoint's values went through JSON
            return json.loads(json.dumps(now, default=str)) != saved

        def same_fields(saved: dict[str, Any], now: dict[str, Any], may_change: frozenset[str] = frozenset()) -> None:
            """Every field the checkpoint recorded (a field it predates is not compared) has its value here."""
            for key, value in saved.items():
                if key not in may_change and key in now and differs(value, now[key]):
                    raise ArgumentError(f"the checkpoint in {where} was trained with {{}} (this run: "
                                        f"{literal(repr(now[key]))}); resume with the same setting or start over "
                                        "with {}", Arg(key, value), Arg("overwrite", True))

        same_fields(extra.get("config") or {}, asdict(self.config), RESUME_MAY_CHANGE)
        now = self._trains_toward()
        if "selective" in extra:
            saved, current = extra["selective"], now["selective"]
            if (saved is None) != (current is None):
                how = "with" if current is None else "without"
                raise ArgumentError(f"the checkpoint in {where} was trained {how} selective transfer; resume with the "
                                    "same passes or start over with {}", Arg("overwrite", True))
            if saved is not None:
                same_fields(saved, current)
        for key, what in (("selection", "another selection of linear sites"),
                          ("latent_shape", f"latents of shape {literal(extra.get('latent_shape'))} (this run: "
                                           f"{literal(now['latent_shape'])}; height, width, frames)"),
                          ("guidance", f"teacher guidance {literal(extra.get('guidance'))} (this run: "
                                       f"{literal(now['guidance'])}; guidance scale, negative prompt)")):
            if key in extra and differs(extra[key], now[key]):
                raise ArgumentError(f"the checkpoint in {where} was trained on {what}; resume with the same settings "
                                    "or start over with {}", Arg("overwrite", True))

    def resume(self) -> int | None:
        """Load the latest checkpoint, if any; returns the step training continues from (None without one)."""
        info = load_checkpoint(self.checkpoint_dir, self.states(), check=lambda found: self._check_compatible(found.extra))
        if info is None:
            return None
        self.parallel.parameters_changed()
        for group in self.optimizer.param_groups:  # a changed --lr applies on resume
            group["lr"] = {"score": self.score_lr, "feature_maps": self.config.lr_feature_maps}.get(
                group.get("name"), self.config.lr)
        self._error_before = info.extra.get("velocity_error_before")
        self._elapsed = float(info.extra.get("elapsed", 0.0))
        self.step = self._saved_step = info.step
        return info.step

    def _start(self, resume: bool | str, overwrite: bool) -> bool:
        """Start or resume? True: resume (the checkpoint loads once the objective is set up).

        Decided before any teacher data is built, refusing to silently discard or fake either:
        an earlier run's checkpoint without ``resume``/``overwrite``, ``resume=True`` with
        nothing to resume, and a checkpoint of other settings are one-line errors here.
        """
        where = literal(self.checkpoint_dir)
        if overwrite:
            if self.parallel.is_main:
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            self.parallel.ctx.barrier()
            return False
        if resume is False:
            if (self.checkpoint_dir / LATEST).exists():
                step = latest_step(self.checkpoint_dir)
                at = f" (step {step})" if step is not None else ""
                raise ArgumentError(f"{where} holds the checkpoint of an earlier run{at}; pass {{}} to continue it or "
                                    "{} to start over", Arg("resume", True), Arg("overwrite", True))
            return False
        found = read_checkpoint_info(self.checkpoint_dir, verify_files=False)
        if found is None:
            if resume is True:
                raise ArgumentError(f"nothing to resume: {where} holds no checkpoint (the earlier run stopped before "
                                    "its first one, or never ran there); run without {} to start", Arg("resume", True))
            return False
        self._check_compatible(found.extra)
        return True

    # -- training --------------------------------------------------------------------------
    @torch.no_grad()
    def velocity_error(self, data: TeacherData | None, ctx: Context) -> float | None:
        """Mean squared velocity error to the teacher on fixed cached points (None without a cache).

        Several processes: each evaluates its block of the points (as many forwards on every rank).
        """
        if data is None:
            return None
        x, sigma, v_t, cond = data.eval_points(self.config.eval_points)
        rows, real = self.parallel.ctx.rows(x.shape[0])
        x, sigma, v_t, cond = x[rows], sigma[rows], v_t[rows], {k: c[rows] for k, c in cond.items()}
        total, count = 0.0, 0
        for start in range(0, x.shape[0], self.config.batch_size):
            sl = slice(start, start + self.config.batch_size)
            v_s = ctx.student_velocity(x[sl].to(self.device), sigma[sl], {k: c[sl].to(self.device) for k, c in cond.items()})
            error = ((v_s - v_t[sl].to(self.device)) ** 2)[: max(0, real - start)]  # padding rows count nothing
            total += float(error.sum())
            count += error.numel()
        total, count = self.parallel.ctx.sum([total, count])
        return total / count

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM / SIGHUP: finish the step, checkpoint, stop (a second one: stop now)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            first = self._stop_signal is None
            if first:
                self._stop_signal = signum
            if self._phase == "interruptible" or (not first and self._phase != "update"):
                raise _Abort(signum)

        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _train_step(self, ctx: Context, step: int) -> dict[str, float]:
        cfg = self.config
        self._phase = "compute"  # nothing but gradients (and a stateful objective's own state) changes until backward
        self.optimizer.zero_grad(set_to_none=True)

        def check(what: str, value: float) -> None:
            if not math.isfinite(value):
                raise self._nonfinite(step, what, value)

        logs: dict[str, float] = dict(self.objective.before_step(ctx, cfg.batch_size, check))  # DMD2: fake-score updates
        total = 0.0
        streams = self.rng.generators  # micro-batch m draws from its own stream (data_parallel.py)
        for m, generator in enumerate(streams):
            ctx.generator, ctx.step_generator = generator, self.rng.shared(step)
            self.parallel.sync_gradients(self.student, m == len(streams) - 1)  # reduce once, after the last
            loss, obj_logs = self.objective.loss(ctx, cfg.batch_size)
            total += loss.item() / cfg.grad_accum
            for k, v in obj_logs.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
            (loss / cfg.grad_accum).backward()
        ctx.generator, ctx.step_generator = self.generator, None
        logs["objective"] = total
        logs = self.parallel.ctx.mean_logs(logs)  # every rank logs (and checks) the mean over all micro-batches
        total = logs["objective"]
        check("loss", total)
        self._phase = "update"
        self.parallel.reduce_replicated_grads()  # the selection scores: the same averaged gradient on every rank
        if self.regularizer is not None:
            self.regularizer.normalize_objective_grads()
            penalty, reg_logs = self.regularizer.penalty(step)
            logs.update(reg_logs)
            if penalty is not None:
                value = penalty.item()
                check("selection penalty", value)
                total += value
                penalty.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = self.parallel.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        check("gradient norm", float(norm))
        self.optimizer.step()
        logs["loss"] = total
        logs["grad_norm"] = float(norm)
        return logs

    def _nonfinite(self, step: int, what: str, value: float) -> NonFiniteError:
        self.optimizer.zero_grad(set_to_none=True)
        good = latest_step(self.checkpoint_dir)
        kept = (f"the last good checkpoint (step {good}) is kept in {literal(self.checkpoint_dir)}" if good is not None
                else "no checkpoint was written yet")
        return NonFiniteError(f"{what} became {value} at step {step + 1}; training stopped, {kept}; lower {{}} "
                              f"(or {{}}) and re-run with {self._resume_text}", Arg("lr"), Arg("grad_clip"),
                              *self.resume_with)

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

    def _elapsed_now(self) -> float:
        session = getattr(self, "_session", None)
        return self._elapsed + (time.perf_counter() - session if session is not None else 0.0)

    def _checkpoint_due(self, step: int) -> bool:
        minutes = self.config.checkpoint_minutes
        if step % self.checkpoint_every == 0 or step == self.config.steps:
            return True
        # clocks are per rank: when one rank's time is up, every rank saves
        return minutes > 0 and self.parallel.ctx.any(time.perf_counter() - self._last_save >= minutes * 60)

    def run(self, resume: bool | str = False, name: str = "model", overwrite: bool = False) -> RecoveryResult:
        """Train for ``config.steps`` steps and measure the result.

        resume: ``False`` starts (refusing to discard an earlier run's checkpoint unless
        ``overwrite``), ``True`` continues the checkpoint in ``work_dir`` (an error without one),
        ``"auto"`` continues one if there is one, else starts.
        """
        resume = check_resume(resume)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._stop_signal, self._phase = None, "interruptible"
        try:
            with self._signals(), self._compiled():
                return self._run(resume, name, overwrite)
        except _Abort as stop:
            raise self._interrupted(stop.signum, saved=False) from None
        finally:
            for n, p in self.teacher.named_parameters():
                p.requires_grad_(self._teacher_grad.get(n, True))

    def _compiled(self) -> AbstractContextManager[Any]:
        """Every module the run executes compiled per block (``config.compile``), eager again afterwards."""
        if not self.config.compile:
            return nullcontext()
        modules = [module for module, _ in self._modules_to_place().values()]
        return compiled_blocks(modules, backend=self.config.compile_backend)

    def _run(self, resume: bool | str, name: str, overwrite: bool) -> RecoveryResult:
        cfg = self.config
        load = self._start(resume, overwrite)
        data = self._teacher_data()
        ctx = self._context(data)
        self.objective.setup(ctx)  # auxiliary networks (DMD2's fake score), before a resume loads their state
        resumed = self.resume() if load else None  # every random stream as the checkpointed step left it
        start = resumed or 0
        if resumed is not None:
            self.log.resume_at(start)
            self.log.records = self.parallel.ctx.broadcast(self.log.records)  # rank 0 owns the file
        else:
            self.log.start()
            self._error_before = self.velocity_error(data, ctx)
            self.initial.capture({n: self._params[n] for n in self.param_names}, dict(self.teacher.named_parameters()),
                                 self.parallel)
        k = self.regularizer.k if self.regularizer else len(self.selection or [])
        self._session = self._last_save = time.perf_counter()
        self._phase = "idle"
        show = self.show_progress and self.parallel.is_main
        with TrainingProgress(cfg.steps, len(self.sites), k, enabled=show, start=start, label=self.stage) as bar:
            step = start
            while step < cfg.steps:
                self.rng.capture()  # the state this step starts from
                agreed = self.parallel.ctx.max(self._stop_signal or 0)  # a signal any rank got stops every rank here
                if agreed:
                    self._stop_signal = agreed
                    if self._saved_step != step:
                        self.save(step)
                    raise self._interrupted(self._stop_signal, saved=True)
                t0 = time.perf_counter()
                try:
                    logs = self._train_step(ctx, step)
                except (KeyboardInterrupt, _Abort) as stop:
                    signum = stop.signum if isinstance(stop, _Abort) else signal.SIGINT
                    untouched = (self._phase == "compute" and not self.objective.stateful
                                 and not self.parallel.active)  # several processes: saving is collective, stop now
                    self.optimizer.zero_grad(set_to_none=True)
                    if untouched and self._saved_step != step:
                        self._phase = "save"
                        self.save(step)  # parameters, optimizer, regularizer: all still as after step ``step``
                    raise self._interrupted(signum, saved=untouched) from None
                step += 1
                self.step = step
                if self.regularizer is not None:
                    self.regularizer.after_step(step)
                record = self._record(step, logs, time.perf_counter() - t0)
                self._phase = "idle"
                bar.update(step, record["objective"], record["num_linear"])
                if self._checkpoint_due(step):
                    self.rng.capture()
                    self.save(step)
        self._elapsed = self._elapsed_now()
        self._session = None
        self._phase = "interruptible"  # the last step is checkpointed: a signal now loses only the measurements
        return self._finish(start, name, data, ctx)

    def _finish(self, start: int, name: str, data: TeacherData | None, ctx: Context) -> RecoveryResult:
        cfg = self.config
        if self.regularizer is not None:
            if not self.regularizer.hardened:
                self.regularizer.harden(cfg.steps)
            self.selection = self.regularizer.final_selection()
        metrics: dict[str, Any] = {
            "objective": self.objective.name, "steps": cfg.steps, "resumed_from": start or None,
            "seconds": round(self._elapsed, 2),
            "final_loss": self.log.records[-1]["loss"] if self.log.records else None,
            "velocity_error_before": self._error_before, "velocity_error_after": self.velocity_error(data, ctx),
        }
        if data is not None and cfg.compare_without_recovery:  # same final selection, weights as before training
            trained = self._snapshot()
            self.initial.load_into(self._params, dict(self.teacher.named_parameters()))
            self.parallel.parameters_changed()
            metrics["velocity_error_without_recovery"] = self.velocity_error(data, ctx)
            self._load(trained)
            self.parallel.parameters_changed()
        self.parallel.check_replicated(self._params)
        self.parallel.copy_back(self.original_student, self.student, self.param_names)
        report = self._write_report(name, metrics) if self.parallel.is_main else self.work_dir / "report.md"
        return RecoveryResult(self.selection, metrics, set(self.base_trained), self.log.records, report)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        """This rank's values of the trained tensors (its shards, with several processes), on CPU."""
        return {n: sharding.local(self._params[n]).detach().to("cpu", copy=True) for n in self.param_names}

    @torch.no_grad()
    def _load(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            sharding.local(self._params[name]).copy_(value)

    def _interrupted(self, signum: int, saved: bool) -> TrainingInterrupted:
        what = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else f"signal {signum}"
        where = literal(self.checkpoint_dir)
        if saved:
            kept = f"checkpoint of step {self._saved_step} saved in {where}"
        elif self._saved_step is not None:
            kept = f"the checkpoint of step {self._saved_step} in {where} is kept"
        else:
            kept = "no checkpoint was written yet (finished teacher trajectories are kept)"
        return TrainingInterrupted(f"stopped by {what} at step {self.step}; {kept}; run the same command with "
                                   f"{self._resume_text} to continue", *self.resume_with, signum=signum)

    @property
    def _resume_text(self) -> str:
        return " and ".join("{}" for _ in self.resume_with)

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
