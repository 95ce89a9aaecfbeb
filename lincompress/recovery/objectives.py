"""Recovery objectives: strategy objects with one interface, ``loss(ctx, batch) -> (loss, logs)``.

* ``adm`` (default): anytime distribution matching, data-free. x_t comes from the
  student's own few-step sampler (gradient through the last step(s)); the reverse-KL
  gradient E[(s_S - s_T)(x_t) . dx_t/dtheta] is produced by the stop-gradient surrogate
  ``0.5 * ||x_t - sg(x_t - w_t (s_S - s_T))||^2``. The student's own prediction is its
  score estimate (no fake-score network).
* ``mse``: match teacher velocities at cached teacher trajectory points.
* ``fm``: flow-matching loss on cached teacher samples (fresh noise and t).

Classifier-free guidance (``ctx.guidance``, the target's scale and negative conditions):
the teacher's velocity is always the guided one, ``ctx.teacher_velocity``. The student
either keeps CFG (``cfg``: its conditional and unconditional predictions are trained
against the teacher's, ``ctx.student_branches``) or is guidance-distilled
(``distilled``: its one conditional forward learns the guided teacher velocity). Without
guidance both modes are the plain single-forward objective.

Adding an objective is one class with ``name``, ``needs_teacher_data`` and ``loss``,
registered in ``OBJECTIVES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lincompress.config import Arg, ArgumentError, literal
from lincompress.errors import LinCompressError
from lincompress.recovery.sampling import ConditionSource, Guidance, ModelCaller, euler_sample, expand_sigma, sample_sigmas
from lincompress.recovery.teacher_data import TeacherData


@dataclass
class Context:
    """What an objective may use; the trainer builds it once."""

    student: nn.Module
    teacher: nn.Module
    caller: ModelCaller
    conditions: ConditionSource
    latent_shape: tuple[int, ...]
    shift: float  # training-time timestep shift
    student_sigmas: Tensor  # the student's few-step sampler grid, [n + 1]
    generator: torch.Generator  # every random draw of training comes from here (resume reproduces it)
    device: torch.device
    autocast: bool = False
    data: TeacherData | None = None
    guidance: Guidance | None = None  # None: unguided
    step_generator: torch.Generator | None = None  # see ``shared_generator``

    @property
    def shared_generator(self) -> torch.Generator:
        """For draws that decide how many forwards a micro-batch makes (ADM's stop index).

        The same draws for every micro-batch of an optimizer step on every process (FSDP2's
        all-gathers are collectives: every rank must call each block as often); it is
        ``generator`` itself when a step has a single micro-batch.
        """
        return self.step_generator if self.step_generator is not None else self.generator

    def velocity(self, model: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """One forward of ``model`` on the given inputs (no guidance)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.caller(model, x, sigma, cond).float()

    @property
    def guided(self) -> bool:
        """Does the teacher sample with CFG?"""
        return self.guidance is not None and self.guidance.active

    @property
    def student_cfg(self) -> bool:
        """Does the student keep CFG (two branches trained, a guided sampler)?"""
        return self.guidance is not None and self.guidance.student_guided

    def teacher_velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """The teacher's guided velocity ``v_u + S (v_c - v_u)`` (its conditional one without guidance)."""
        if not self.guided:
            return self.velocity(self.teacher, x, sigma, cond)
        return self.guidance.teacher(self.velocity, self.teacher, x, sigma, cond)

    def teacher_branches(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.guidance.branches(self.velocity, self.teacher, x, sigma, cond)

    def student_branches(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.guidance.branches(self.velocity, self.student, x, sigma, cond)

    def student_velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """What the student's sampler integrates at inference: guided for ``cfg``, one forward for ``distilled``."""
        if self.guidance is None:
            return self.velocity(self.student, x, sigma, cond)
        return self.guidance.student_velocity(self.velocity, self.student, x, sigma, cond)

    def combine(self, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        return self.guidance.combine(v_cond, v_uncond)

    def to_device(self, *tensors: Tensor) -> list[Tensor]:
        return [t.to(self.device) for t in tensors]

    def randn(self, batch: int) -> Tensor:
        return torch.randn(batch, *self.latent_shape, generator=self.generator).to(self.device)

    def sample_conditions(self, batch: int) -> dict[str, Tensor]:
        """Conditions for data-free draws: cached teacher conditions when there are any, else the source."""
        if self.data is not None and self.data.cond:
            index = torch.randint(self.data.num_samples, (batch,), generator=self.generator)
            return {k: v.to(self.device) for k, v in self.data.cond_at(index).items()}
        return {k: v.to(self.device) for k, v in self.conditions(batch, self.generator).items()}


Check = Callable[[str, float], None]  # check(what, value): the trainer's NaN guard (raises on a non-finite value)


class Objective:
    """The loss the student is trained with; optionally auxiliary state trained alongside it.

    The trainer calls ``setup(ctx)`` once (after the teacher data and the context exist, before a
    resume loads state), then per training step ``before_step(ctx, batch, check)`` (auxiliary
    updates, e.g. DMD2's fake-score network, inside the step's RNG capture and NaN guard) and
    ``loss(ctx, batch)`` (whose gradient trains the student). Auxiliary networks are listed by
    ``modules()``; ``state_dict()`` / ``load_state_dict()`` carry everything the objective trains
    (parameters, its optimizer) through the trainer's checkpoints as the named state
    ``"objective"`` (``lincompress.recovery.checkpoint``: string-keyed dicts whose leaves are
    tensors or JSON values; an optimizer goes through ``OptimizerState``, keyed by parameter
    name), so a resumed run continues bit-exactly.
    """

    name: ClassVar[str] = ""
    needs_teacher_data: ClassVar[bool] = False

    def setup(self, ctx: Context) -> None:
        """Build auxiliary state once the context exists (default: none)."""

    def before_step(self, ctx: Context, batch: int, check: Check) -> dict[str, float]:
        """Auxiliary updates before each student step; returns logs (default: nothing)."""
        return {}

    def loss(self, ctx: Context, batch: int) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """Auxiliary networks the objective trains (default: none)."""
        return {}

    @property
    def stateful(self) -> bool:
        """Does the objective carry trained state of its own (saved with every checkpoint)?"""
        return bool(self.modules())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise LinCompressError(f"objective {self.name!r} keeps no state, but the checkpoint holds some; "
                                   "resume with the objective it was trained with")

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _require_data(ctx: Context, who: str) -> TeacherData:
    if ctx.data is None:
        raise ArgumentError(f"objective {literal(repr(who))} trains on teacher trajectories; give {{}} >= 1", Arg("samples"))
    return ctx.data


@dataclass
class MSE(Objective):
    """Velocity regression on the teacher's own trajectory points."""

    name: ClassVar[str] = "mse"
    needs_teacher_data: ClassVar[bool] = True

    def loss(self, ctx: Context, batch: int) -> tuple[Tensor, dict[str, float]]:
        data = _require_data(ctx, self.name)
        if ctx.student_cfg:
            loss = branch_regression(ctx, data, batch)
            return loss, {"mse": loss.item()}
        x, sigma, v_t, cond = data.points(batch, ctx.generator)
        x, sigma, v_t = ctx.to_device(x, sigma, v_t)
        v_s = ctx.velocity(ctx.student, x, sigma, {k: c.to(ctx.device) for k, c in cond.items()})
        loss = F.mse_loss(v_s, v_t)
        return loss, {"mse": loss.item()}


def branch_regression(ctx: Context, data: TeacherData, batch: int) -> Tensor:
    """A CFG student's velocity regression: both branches against the teacher's cached ones (mean of the two MSEs)."""
    if not data.guided:
        raise LinCompressError("the teacher trajectories hold no CFG branches; rebuild them with guidance (delete the cache)")
    x, sigma, v_c, v_u, cond = data.branch_points(batch, ctx.generator)
    x, sigma, v_c, v_u = ctx.to_device(x, sigma, v_c, v_u)
    s_c, s_u = ctx.student_branches(x, sigma, {k: c.to(ctx.device) for k, c in cond.items()})
    return 0.5 * (F.mse_loss(s_c, v_c) + F.mse_loss(s_u, v_u))


@dataclass
class FlowMatching(Objective):
    """Denoising flow-matching loss on teacher-generated samples: v_S(x_t) -> eps - x_0."""

    name: ClassVar[str] = "fm"
    needs_teacher_data: ClassVar[bool] = True

    def loss(self, ctx: Context, batch: int) -> tuple[Tensor, dict[str, float]]:
        data = _require_data(ctx, self.name)
        index = torch.randint(data.num_samples, (batch,), generator=ctx.generator)
        x0 = data.sample[index].to(ctx.device)
        eps = ctx.randn(batch)
        sigma = sample_sigmas(batch, ctx.shift, ctx.generator).to(ctx.device)
        s = expand_sigma(sigma, x0)
        x_t = (1 - s) * x0 + s * eps
        cond = {k: c.to(ctx.device) for k, c in data.cond_at(index).items()}
        if ctx.student_cfg:
            # the guided combination learns the (guided) teacher samples; the unconditional branch is
            # anchored to the teacher's, which fixes how the combination splits into two branches
            s_c, s_u = ctx.student_branches(x_t, sigma, cond)
            with torch.no_grad():
                _, t_u = ctx.teacher_branches(x_t, sigma, cond)
            fm = F.mse_loss(ctx.combine(s_c, s_u), eps - x0)
            anchor = F.mse_loss(s_u, t_u)
            return fm + anchor, {"fm": fm.item(), "uncond": anchor.item()}
        v_s = ctx.velocity(ctx.student, x_t, sigma, cond)
        loss = F.mse_loss(v_s, eps - x0)
        return loss, {"fm": loss.item()}


def rollout(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, sigmas: Tensor, stop: int,
            grad_steps: int) -> Tensor:
    """``stop`` Euler steps of ``velocity`` from ``noise`` over ``sigmas``; only the last ``grad_steps`` carry gradient."""
    free = max(0, stop - grad_steps)
    with torch.no_grad():
        x = euler_sample(velocity, noise, sigmas, stop=free)
    return euler_sample(velocity, x, sigmas[free:], stop=stop - free)


def score_difference(v_student: Tensor, v_teacher: Tensor, sigma: Tensor) -> Tensor:
    """s_S - s_T = -((1 - t) / t) (v_S - v_T), from s(x_t, t) = -(x_t + (1 - t) v) / t."""
    t = expand_sigma(sigma, v_student)
    return -((1 - t) / t) * (v_student - v_teacher)


@dataclass
class ADM(Objective):
    """Anytime distribution matching on the student's own few-step trajectories.

    sampler_steps: steps of the student's Euler sampler (its sigma grid comes from the
        target's scheduler); a stop index k in 1..n is drawn per step ("anytime").
    grad_steps: how many of the last sampler steps carry gradient; None (default) = all of them.
        Activation memory grows with it: 1 (only the last step) is the frugal choice at video scale.
    renoise: at k = n (a finished sample, sigma 0) re-noise to a random t, DMD-style.
    normalize: w_t makes the per-sample update scale-free (DMD divides by the mean
        absolute distance to the teacher's denoised estimate; x_t - x0_T = t v_T, so on
        the velocity scale the analogue is mean|v_T|). Off: w_t = t / (1 - t), i.e. the
        raw velocity difference.
    regression: weight of an extra velocity-MSE term on cached teacher points. None (default):
        1.0 when teacher trajectories are cached, else off; 0 gives pure ADM.
    onpolicy: weight of a velocity-matching term at the same student-trajectory points x_t
        (gradient through v_S(x_t) directly, x_t held fixed). Data-free like the
        distribution-matching term: it trains the student where its own sampler goes.
    dm_weight: weight of the distribution-matching (reverse-KL) term itself; 0 leaves only
        the other terms (a diagnostic for ablations).

    Defaults (onpolicy 1, regression 1 with a cache, gradient through every sampler step)
    are the best of the variants measured on the shipped shapes teacher
    (benchmarks/results/ablation_adm_sweep.json, README "Quality"): pure ADM (regression 0,
    onpolicy 0) raised the velocity error there, while these terms make ADM the best or
    tied-best objective at every target.
    """

    name: ClassVar[str] = "adm"
    sampler_steps: int = 4
    grad_steps: int | None = None
    renoise: bool = True
    normalize: bool = True
    regression: float | None = None
    onpolicy: float = 1.0
    dm_weight: float = 1.0
    _eps: float = field(default=1e-6, repr=False)

    def __post_init__(self) -> None:
        if self.grad_steps is None:
            self.grad_steps = self.sampler_steps
        if self.sampler_steps < 1 or not 1 <= self.grad_steps <= self.sampler_steps:
            raise LinCompressError(
                f"ADM needs sampler_steps >= 1 and 1 <= grad_steps <= sampler_steps, got {self.sampler_steps}, {self.grad_steps}"
            )
        if self.onpolicy < 0 or self.dm_weight < 0 or (self.regression is not None and self.regression < 0):
            raise LinCompressError("ADM term weights (regression, onpolicy, dm_weight) must be >= 0")

    def student_sample(self, ctx: Context, batch: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """x_t on the student's own trajectory (with gradient through the last steps), its t, the conditions."""
        sigmas = ctx.student_sigmas.to(ctx.device)
        n = sigmas.numel() - 1
        cond = ctx.sample_conditions(batch)
        noise = ctx.randn(batch)
        last = n if self.renoise or float(sigmas[n]) > 0.0 else n - 1
        if last < 1:
            raise LinCompressError("ADM with renoise=False needs sampler_steps >= 2 (the last point is a clean sample)")
        stop = int(torch.randint(1, last + 1, (1,), generator=ctx.shared_generator))  # forwards: same on all ranks

        def velocity(x: Tensor, sigma: Tensor) -> Tensor:
            return ctx.student_velocity(x, sigma, cond)  # guided for a CFG student, one forward when distilled

        x = rollout(velocity, noise, sigmas, stop, self.grad_steps)
        t = sigmas[stop].expand(batch)
        if float(sigmas[stop]) <= 0.0:  # a clean sample has no score: re-noise it to a random t
            t = sample_sigmas(batch, ctx.shift, ctx.generator).to(ctx.device)
            s = expand_sigma(t, x)
            x = (1 - s) * x + s * ctx.randn(batch)
        return x, t, cond

    def regression_weight(self, ctx: Context) -> float:
        if self.regression is None:
            return 1.0 if ctx.data is not None else 0.0
        return float(self.regression)

    def update(self, v_s: Tensor, v_t: Tensor, t: Tensor) -> Tensor:
        """w_t * (s_S - s_T), computed in velocity form (finite at t -> 1)."""
        if self.normalize:
            dims = tuple(range(1, v_t.dim()))
            scale = v_t.abs().mean(dim=dims, keepdim=True) + self._eps
            # w_t = t / ((1 - t) * scale) turns s_S - s_T into -(v_S - v_T) / scale
            return -(v_s - v_t) / scale
        return -(v_s - v_t)  # w_t = t / (1 - t)

    def loss(self, ctx: Context, batch: int) -> tuple[Tensor, dict[str, float]]:
        x_t, t, cond = self.student_sample(ctx, batch)
        x_in = x_t.detach()
        cfg = ctx.student_cfg
        with torch.no_grad():
            if cfg:
                t_c, t_u = ctx.teacher_branches(x_in, t, cond)
                v_t = ctx.combine(t_c, t_u)
            else:
                v_t = ctx.teacher_velocity(x_in, t, cond)
        grad = self.onpolicy > 0  # one student forward (per branch) serves both terms
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if cfg:
                s_c, s_u = ctx.student_branches(x_in, t, cond)
                v_s_grad = ctx.combine(s_c, s_u)
            else:
                v_s_grad = ctx.velocity(ctx.student, x_in, t, cond)
        v_s = v_s_grad.detach()
        g = self.update(v_s, v_t, t)
        target = (x_t - g).detach()
        dm = 0.5 * F.mse_loss(x_t, target, reduction="sum") / batch / x_t[0].numel()
        logs = {"adm": dm.item(), "velocity_gap": F.mse_loss(v_s, v_t).item(), "t": float(t.float().mean())}
        loss = self.dm_weight * dm
        if self.onpolicy > 0:
            if cfg:  # each branch against the teacher's
                onpolicy = 0.5 * (F.mse_loss(s_c, t_c) + F.mse_loss(s_u, t_u))
            else:  # the (distilled) conditional forward against the guided teacher
                onpolicy = F.mse_loss(v_s_grad, v_t)
            loss = loss + self.onpolicy * onpolicy
        weight = self.regression_weight(ctx)
        if weight > 0:
            data = _require_data(ctx, "adm regression")
            if cfg:
                reg = branch_regression(ctx, data, batch)
            else:
                x, sigma, v_ref, c = data.points(batch, ctx.generator)
                x, sigma, v_ref = ctx.to_device(x, sigma, v_ref)
                reg = F.mse_loss(ctx.velocity(ctx.student, x, sigma, {k: v.to(ctx.device) for k, v in c.items()}), v_ref)
            loss = loss + weight * reg
            logs["regression"] = reg.item()
        return loss, logs


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (ADM, MSE, FlowMatching)}


def make_objective(name: str | Objective, **options: Any) -> Objective:
    if isinstance(name, Objective):
        return name
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise LinCompressError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None
    return cls(**options)
