"""Flow-matching plumbing shared by teacher data and the objectives.

Convention (diffusers flow matching): ``x_t = (1 - t) * x_0 + t * eps`` with t = sigma in
[0, 1] (t = 1 is noise) and the model predicting the velocity ``v = eps - x_0``. The
model is called with ``timestep = sigma * num_train_timesteps``.

The target's scheduler supplies the *noise schedule* (its sigma grid, including the
timestep shift); sampling integrates the flow ODE with Euler steps on that grid,
whatever solver the scheduler itself implements. That keeps teacher and student on
one deterministic, differentiable sampler, which ADM needs to back-propagate
through the student's last step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lincompress.errors import TargetError
from lincompress.target import Target

_ADD_SCHEDULER = (
    "add a flow-matching scheduler to the Target in model.py, e.g. "
    "`Target(..., scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))`"
)


def check_flow_scheduler(scheduler: Any) -> None:
    """Recovery needs a flow-matching scheduler; one-line error saying what to add otherwise."""
    if scheduler is None:
        raise TargetError(f"recovery needs the model's scheduler: {_ADD_SCHEDULER}")
    config = getattr(scheduler, "config", None)
    name = type(scheduler).__name__
    is_flow = "FlowMatch" in name or (
        config is not None
        and (getattr(config, "prediction_type", None) == "flow_prediction" or getattr(config, "use_flow_sigmas", False))
    )
    if not is_flow or not hasattr(scheduler, "set_timesteps"):
        raise TargetError(f"recovery needs a flow-matching scheduler, got {name}; {_ADD_SCHEDULER}")


def _config(scheduler: Any, key: str, default: Any) -> Any:
    config = getattr(scheduler, "config", None)
    value = getattr(config, key, None) if config is not None else None
    return default if value is None else value


def num_train_timesteps(scheduler: Any) -> float:
    return float(_config(scheduler, "num_train_timesteps", 1000))


def timestep_shift(scheduler: Any) -> float:
    """The scheduler's static shift (``shift`` or ``flow_shift``); dynamic shifting uses exp(mu) at mid resolution."""
    if _config(scheduler, "use_dynamic_shifting", False):
        return math.exp(0.5 * (float(_config(scheduler, "base_shift", 0.5)) + float(_config(scheduler, "max_shift", 1.15))))
    return float(_config(scheduler, "shift", _config(scheduler, "flow_shift", 1.0)))


def sigma_grid(scheduler: Any, steps: int) -> Tensor:
    """``steps + 1`` decreasing sigmas from the scheduler (last one 0), as float32 on CPU.

    Works on a copy: ``set_timesteps`` changes a scheduler's state, and the scheduler is the user's.
    """
    check_flow_scheduler(scheduler)
    if steps < 1:
        raise ValueError(f"a sampler needs at least one step, got {steps}")
    scheduler = copy.deepcopy(scheduler)
    try:
        scheduler.set_timesteps(steps)
    except ValueError as exc:  # dynamic shifting (Flux-style) needs mu
        if "mu" not in str(exc):
            raise
        scheduler.set_timesteps(steps, mu=math.log(timestep_shift(scheduler)))
    sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float32).flatten().cpu()
    if sigmas.numel() == steps:  # schedulers that omit the terminal sigma
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas[: steps + 1].clone()


def few_step_grid(shift: float, steps: int) -> Tensor:
    """A few-step student's own ``steps + 1`` sigmas: equal steps of the unshifted time from 1 to 0, then the shift.

    Not the scheduler's N-step grid: that one ends at ``sigma_min`` (1/1000 before the shift),
    so at 4 steps its last step barely moves (0.009 -> 0 at shift 3) and one of four forwards
    is wasted. DMD2 samples its 4-step students at equally spaced timesteps (999, 749, 499,
    249) the same way; with shift 3 this is 1, 0.9, 0.75, 0.5, 0.
    """
    if steps < 1:
        raise ValueError(f"a sampler needs at least one step, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    sigmas = shift * u / (1 + (shift - 1) * u)
    sigmas[-1] = 0.0
    return sigmas.float()


def sample_sigmas(batch: int, shift: float, generator: torch.Generator) -> Tensor:
    """Training-time t: uniform u mapped through the timestep shift (SD3 / Wan), kept inside (0, 1)."""
    u = torch.rand(batch, generator=generator).clamp(1e-3, 1 - 1e-3)
    return shift * u / (1 + (shift - 1) * u)


def latent_shape(target: Target) -> tuple[int, ...]:
    """Per-sample latent shape: ``target.latent_shape``, else the example latent's shape."""
    if target.latent_shape is not None:
        return tuple(int(s) for s in target.latent_shape)
    example = target.inputs(1).get(target.latent_key)
    if isinstance(example, Tensor) and example.dim() >= 2:
        return tuple(example.shape[1:])
    raise TargetError(
        f"recovery needs the latent shape: add `latent_shape=(C, F, H, W)` to the Target in model.py "
        f"(example_inputs has no tensor {target.latent_key!r} to take it from)"
    )


class ConditionSource:
    """Conditions for the data-free samplers: ``target.conditions(batch, generator)``, else the example's.

    The fallback takes every tensor of ``target.inputs(batch)`` other than latent and
    timestep, so an unconditional model (or one whose example conditions are all we
    have) still works; its conditions are then fixed rather than sampled.
    """

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def sampled(self) -> bool:
        return self.target.conditions is not None

    def __call__(self, batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        if self.target.conditions is not None:
            cond = self.target.conditions(batch, generator)
            if not isinstance(cond, dict):
                raise TargetError(
                    f"Target.conditions returned {type(cond).__name__}; return a dict of conditioning model kwargs, "
                    "e.g. {'encoder_hidden_states': tensor}"
                )
        else:
            skip = {self.target.latent_key, self.target.timestep_key}
            cond = {k: v for k, v in self.target.inputs(batch).items() if k not in skip and isinstance(v, Tensor)}
        bad = [k for k, v in cond.items() if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != batch]
        if bad:
            raise TargetError(
                f"condition {bad[0]!r} is not a batch-first tensor of batch size {batch}; "
                "Target.conditions(batch, generator) must return tensors with batch as their first dimension"
            )
        return cond


class ModelCaller:
    """``velocity = caller(model, x, sigma, cond)``: builds the kwargs the target's model expects.

    Non-condition kwargs (``return_dict=False``, attention kwargs, ...) come from the
    example inputs; the latent, the timestep and the conditions are replaced.
    """

    def __init__(self, target: Target, scheduler: Any) -> None:
        self.target = target
        self.scale = num_train_timesteps(scheduler)
        self._static: dict[int, dict[str, Any]] = {}

    def _static_kwargs(self, batch: int) -> dict[str, Any]:
        if batch not in self._static:
            self._static[batch] = dict(self.target.inputs(batch))
        return self._static[batch]

    def __call__(self, model: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        batch = x.shape[0]
        kwargs = dict(self._static_kwargs(batch))
        for key, value in kwargs.items():  # leftover example tensors follow the latent's device
            if isinstance(value, Tensor) and value.device != x.device:
                kwargs[key] = value.to(x.device)
        sigma = sigma.to(device=x.device, dtype=torch.float32).reshape(-1).expand(batch)
        kwargs[self.target.latent_key] = x
        kwargs[self.target.timestep_key] = sigma * self.scale
        kwargs.update({k: v.to(x.device) for k, v in cond.items()})
        out = model(**kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif not isinstance(out, Tensor) and hasattr(out, "sample"):
            out = out.sample
        return out


Velocity = Callable[[nn.Module, Tensor, Tensor, dict[str, Tensor]], Tensor]


class Guidance:
    """Classifier-free guidance as the target's pipeline samples: ``v = v_u + S (v_c - v_u)``.

    The one place guided velocities are computed, for the teacher (trajectories, every
    objective, eval) and for a student that keeps CFG. ``scale`` is the target's
    ``guidance_scale`` and the unconditional inputs are ``target.negative_conditions``
    (merged over the conditional ones, so keys it does not name are shared). The two
    branches run as one forward of batch 2B when their inputs stack (``batched``), else
    as two forwards. With scale 1 or no unconditional input, guidance is inactive and
    every method is a single conditional forward.

    student: ``"cfg"`` (the student's sampler is guided too) or ``"distilled"`` (the
    student's single conditional forward stands for the guided velocity).
    """

    def __init__(self, target: Target, student: str = "cfg", batched: bool = True) -> None:
        from lincompress.guidance import check_student_guidance

        self.scale = float(target.teacher_guidance_scale)
        self.negative = target.negative_conditions
        self.student = check_student_guidance(student)
        self.batched = batched

    @property
    def active(self) -> bool:
        return self.scale != 1.0 and self.negative is not None

    @property
    def student_guided(self) -> bool:
        """Does the student's own sampler combine two branches?"""
        return self.active and self.student == "cfg"

    def uncond(self, cond: dict[str, Tensor], batch: int, device: torch.device) -> dict[str, Tensor]:
        negative = self.negative(batch) if self.negative is not None else {}
        if not isinstance(negative, dict):
            raise TargetError(f"Target.negative_conditions returned {type(negative).__name__}; return a dict of model kwargs")
        bad = [k for k, v in negative.items() if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != batch]
        if bad:
            raise TargetError(f"negative condition {bad[0]!r} is not a batch-first tensor of batch size {batch}")
        return {**cond, **{k: v.to(device) for k, v in negative.items()}}

    def combine(self, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        return v_uncond + self.scale * (v_cond - v_uncond)

    def branches(self, velocity: Velocity, model: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]
                 ) -> tuple[Tensor, Tensor]:
        """(v_cond, v_uncond) of ``model`` at x: one forward of 2B when the inputs stack, else two."""
        batch = x.shape[0]
        uncond = self.uncond(cond, batch, x.device)
        sigma = sigma.reshape(-1).expand(batch) if sigma.numel() in (1, batch) else sigma
        stackable = self.batched and all(
            cond[k].shape[1:] == uncond[k].shape[1:] and cond[k].dtype == uncond[k].dtype for k in cond)
        if stackable and set(uncond) == set(cond):
            both = {k: torch.cat([cond[k].to(x.device), uncond[k].to(x.device)]) for k in cond}
            v = velocity(model, torch.cat([x, x]), torch.cat([sigma, sigma]), both)
            return v[:batch], v[batch:]
        return velocity(model, x, sigma, cond), velocity(model, x, sigma, uncond)

    def teacher(self, velocity: Velocity, model: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """The guided velocity (the plain conditional one when guidance is inactive)."""
        if not self.active:
            return velocity(model, x, sigma, cond)
        return self.combine(*self.branches(velocity, model, x, sigma, cond))

    def student_velocity(self, velocity: Velocity, model: nn.Module, x: Tensor, sigma: Tensor,
                         cond: dict[str, Tensor]) -> Tensor:
        """What the student's sampler integrates: guided for ``cfg``, one conditional forward for ``distilled``."""
        if self.student_guided:
            return self.combine(*self.branches(velocity, model, x, sigma, cond))
        return velocity(model, x, sigma, cond)

    @property
    def forwards_per_step(self) -> int:
        return 2 if self.student_guided else 1

    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale, "active": self.active, "student": self.student, "batched": self.batched}


def expand_sigma(sigma: Tensor, like: Tensor) -> Tensor:
    """[B] sigmas broadcastable against a [B, ...] latent."""
    return sigma.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def euler_sample(
    velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, sigmas: Tensor, stop: int | None = None,
    on_step: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Integrate ``dx/dsigma = v`` from ``sigmas[0]`` down ``stop`` steps (all by default).

    ``on_step(i, x_i, sigma_i, v_i)`` sees every evaluated point (teacher caching).
    """
    stop = len(sigmas) - 1 if stop is None else stop
    x = noise
    for i in range(stop):
        sigma = sigmas[i].expand(x.shape[0])
        v = velocity(x, sigma)
        if on_step is not None:
            on_step(i, x, sigma, v)
        x = x + (sigmas[i + 1] - sigmas[i]).to(x.device, torch.float32) * v.float()
    return x
