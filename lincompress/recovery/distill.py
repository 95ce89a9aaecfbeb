"""Few-step distillation objectives: the student samples in N Euler steps on its own grid and learns the teacher's distribution.

The generator is the student's own sampler: Euler flow matching from noise over its
recorded sigma grid (``ctx.student_sigmas``, ``sampling.few_step_grid``). After ``k`` of
its N steps it is at ``x_k``, and one more step straight to sigma 0 is its *output at step
k*, the clean-sample prediction ``x0_k = x_k - sigma_k v_S(x_k)`` (the last step's output
is the sample the deployed student returns). Both objectives train every step's output to
follow the teacher's distribution, data-free, drawing ``k`` per update and reaching
``x_k`` with the student's own steps ("backward simulation", DMD2 sec. 4.5); gradient flows
through the last ``grad_steps`` steps (1: the step being trained).

* ``dmd2`` (DMD2, Yin et al. 2024, GAN-free): distribution matching with a *fake-score*
  network that models the student's output distribution. The fake network is a copy of
  the teacher (DMD2 initialises both score networks from the teacher) trained online with
  the flow-matching loss on re-noised student outputs, ``fake_updates`` updates per student
  update (DMD2's two time-scale update rule: 5). The student's update is DMD's gradient
  ``(x0_fake - x0_real) / mean|x0 - x0_real|`` at ``x_t = (1 - t) x0 + t eps``, with the real
  score the guided teacher (CFG at the target's scale) and the fake one conditional, as in
  DMD2; t is the training-time shifted uniform, clamped to [0.02, 0.98] (DMD2's range).
* ``adm`` (ours): ADM's score difference with the student as its own score estimate, no
  auxiliary network: ``lincompress.recovery.objectives.ADM`` on the few-step grid with only
  its distribution-matching term (its on-policy and velocity-regression terms pull the
  student toward the teacher's *instantaneous* velocity, which a 4-step sampler must not
  follow).

Both add DMD's regression term on cached teacher pairs: the student's N-step sample from a
cached noise against the teacher's sample from the same noise (MSE in latent space; DMD
used LPIPS on images). DMD2 itself dropped it for a GAN term on real data; data-free and
GAN-free, the pairs are what anchors mode coverage, so it is on by default with a teacher
cache (weight 0.25, DMD's) and ``regression=0`` gives the paper's GAN-free DMD2 alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lincompress.errors import LinCompressError
from lincompress.recovery.checkpoint import OptimizerState
from lincompress.recovery.objectives import ADM, Check, Context, Objective, rollout
from lincompress.recovery.sampling import expand_sigma, sample_sigmas
from lincompress.recovery.teacher_data import TeacherData

REGRESSION_WEIGHT = 0.25  # DMD's lambda_reg


def _check_common(steps: int, grad_steps: int, regression: float | None, sigmas: list[float] | None) -> None:
    if steps < 1 or not 1 <= grad_steps <= steps:
        raise LinCompressError(f"distillation needs sampler_steps >= 1 and 1 <= grad_steps <= sampler_steps, "
                               f"got {steps}, {grad_steps}")
    if regression is not None and regression < 0:
        raise LinCompressError(f"the regression weight must be >= 0, got {regression}")
    if sigmas is not None and len(sigmas) != steps + 1:
        raise LinCompressError(f"a {steps}-step student needs {steps + 1} sigmas, got {len(sigmas)}")


def regression_weight(regression: float | None, ctx: Context) -> float:
    if regression is None:
        return REGRESSION_WEIGHT if ctx.data is not None else 0.0
    return float(regression)


def step_output(ctx: Context, batch: int, grad_steps: int) -> tuple[Tensor, int, dict[str, Tensor]]:
    """(x0_k, k, cond): the student's output at a random step k of its own sampler, from fresh noise."""
    sigmas = ctx.student_sigmas.to(ctx.device)
    n = sigmas.numel() - 1
    cond = ctx.sample_conditions(batch)
    noise = ctx.randn(batch)
    k = int(torch.randint(n, (1,), generator=ctx.generator))
    grid = torch.cat([sigmas[: k + 1], sigmas.new_zeros(1)])  # k steps on the grid, then one straight to sigma 0

    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        return ctx.student_velocity(x, sigma, cond)  # guided for a CFG student, one forward when distilled

    return rollout(velocity, noise, grid, k + 1, grad_steps), k, cond


def pair_regression(ctx: Context, data: TeacherData, batch: int, grad_steps: int) -> Tensor:
    """MSE of the student's N-step sample from cached teacher noise to the teacher's sample from that noise."""
    index = torch.randint(data.num_samples, (batch,), generator=ctx.generator)
    noise, target = data.noise[index].to(ctx.device), data.sample[index].to(ctx.device)
    cond = {k: v.to(ctx.device) for k, v in data.cond_at(index).items()}
    sigmas = ctx.student_sigmas.to(ctx.device)

    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        return ctx.student_velocity(x, sigma, cond)

    return F.mse_loss(rollout(velocity, noise, sigmas, sigmas.numel() - 1, grad_steps), target)


def _add_regression(loss: Tensor, logs: dict[str, float], weight: float, ctx: Context, batch: int,
                    grad_steps: int) -> Tensor:
    if weight <= 0:
        return loss
    if ctx.data is None:
        raise LinCompressError("the distillation regression term trains on cached teacher pairs; give --samples >= 1 "
                               "(or --distill-regression 0)")
    reg = pair_regression(ctx, ctx.data, batch, grad_steps)
    logs["regression"] = reg.item()
    return loss + weight * reg


def _dm_times(ctx: Context, batch: int, t_min: float, t_max: float) -> Tensor:
    return sample_sigmas(batch, ctx.shift, ctx.generator).clamp(t_min, t_max).to(ctx.device)


@dataclass
class DMD2(Objective):
    """DMD2-style distribution matching with an online fake-score network (GAN-free) + the pair regression.

    sampler_steps: the student's sampler steps N (its grid is ``ctx.student_sigmas``).
    sampler_sigmas: the grid the trainer puts into the context (None: the scheduler's).
    grad_steps: student sampler steps with gradient (1: backward simulation).
    regression: weight of the regression on cached teacher pairs (None: 0.25 with a cache, else 0).
    fake_updates: fake-score updates per student update (two time-scale update rule).
    fake_lr: the fake-score network's learning rate (AdamW, betas 0.9/0.999).
    fake_train: "all" (DMD2) or "attention" (the attention modules only: less optimizer memory).
    """

    name: ClassVar[str] = "dmd2"
    sampler_steps: int = 4
    sampler_sigmas: list[float] | None = None
    grad_steps: int = 1
    regression: float | None = None
    fake_updates: int = 5
    fake_lr: float = 1e-5
    fake_train: str = "all"
    fake_weight_decay: float = 0.0
    fake_grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    t_min: float = 0.02
    t_max: float = 0.98
    _fake: nn.Module | None = field(default=None, repr=False)
    _optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    _trained: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        _check_common(self.sampler_steps, self.grad_steps, self.regression, self.sampler_sigmas)
        if self.fake_updates < 1:
            raise LinCompressError(f"DMD2 needs fake_updates >= 1, got {self.fake_updates}")
        if self.fake_train not in ("all", "attention"):
            raise LinCompressError(f"unknown fake_train {self.fake_train!r}; choose all or attention")
        if not 0.0 < self.t_min < self.t_max < 1.0:
            raise LinCompressError(f"DMD2 needs 0 < t_min < t_max < 1, got {self.t_min}, {self.t_max}")

    @property
    def needs_teacher_data(self) -> bool:  # type: ignore[override]
        return self.regression is not None and self.regression > 0

    # -- the fake-score network ----------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        if self._fake is not None:
            return
        from lincompress.attention import iter_sites

        fake = copy.deepcopy(ctx.teacher).to(ctx.device).eval()  # the fake score starts as the teacher (DMD2)
        owners = {name.rsplit("#", 1)[0] for name, _ in iter_sites(ctx.student)}
        self._trained = []
        for name, param in fake.named_parameters():
            train = self.fake_train == "all" or any(name.startswith(f"{o}.") for o in owners if o) or "" in owners
            param.requires_grad_(train)
            if train:
                self._trained.append(name)
        if not self._trained:
            raise LinCompressError("DMD2's fake-score network has no parameter to train; use fake_train='all'")
        if self.gradient_checkpointing and hasattr(fake, "enable_gradient_checkpointing"):
            fake.enable_gradient_checkpointing()
        self._fake = fake
        params = dict(fake.named_parameters())
        self._optimizer = torch.optim.AdamW([params[n] for n in self._trained], lr=self.fake_lr, betas=(0.9, 0.999),
                                            weight_decay=self.fake_weight_decay)

    def modules(self) -> dict[str, nn.Module]:
        return {"fake_score": self._fake} if self._fake is not None else {}

    def _require_setup(self) -> nn.Module:
        if self._fake is None:
            raise LinCompressError("DMD2.setup(ctx) must run before training (the trainer calls it)")
        return self._fake

    def before_step(self, ctx: Context, batch: int, check: Check) -> dict[str, float]:
        """``fake_updates`` flow-matching updates of the fake score on fresh (detached) student outputs."""
        fake = self._require_setup()
        params = [p for p in fake.parameters() if p.requires_grad]
        total = 0.0
        for _ in range(self.fake_updates):
            with torch.no_grad():
                x0, _, cond = step_output(ctx, batch, self.grad_steps)
            t = _dm_times(ctx, batch, self.t_min, self.t_max)
            eps = ctx.randn(batch)
            s = expand_sigma(t, x0)
            x_t = (1 - s) * x0 + s * eps
            loss = F.mse_loss(ctx.velocity(fake, x_t, t, cond), eps - x0)
            check("fake-score loss", loss.item())
            self._optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, self.fake_grad_clip if self.fake_grad_clip > 0 else float("inf"))
            check("fake-score gradient norm", float(norm))
            self._optimizer.step()
            total += loss.item()
        self._optimizer.zero_grad(set_to_none=True)
        return {"fake_score": total / self.fake_updates}

    # -- the student's loss ----------------------------------------------------------------
    def loss(self, ctx: Context, batch: int) -> tuple[Tensor, dict[str, float]]:
        fake = self._require_setup()
        x0, k, cond = step_output(ctx, batch, self.grad_steps)
        t = _dm_times(ctx, batch, self.t_min, self.t_max)
        eps = ctx.randn(batch)
        s = expand_sigma(t, x0)
        with torch.no_grad():
            x_t = (1 - s) * x0 + s * eps
            x0_real = x_t - s * ctx.teacher_velocity(x_t, t, cond)  # guided teacher: the real score
            x0_fake = x_t - s * ctx.velocity(fake, x_t, t, cond)  # the student's distribution
            dims = tuple(range(1, x0.dim()))
            scale = (x0 - x0_real).abs().mean(dim=dims, keepdim=True).clamp(min=1e-6)
            grad = torch.nan_to_num((x0_fake - x0_real) / scale)
        dm = 0.5 * F.mse_loss(x0, (x0 - grad).detach())
        logs = {"dmd": dm.item(), "score_gap": grad.pow(2).mean().item(), "k": float(k), "t": float(t.mean())}
        loss = _add_regression(dm, logs, regression_weight(self.regression, ctx), ctx, batch, self.grad_steps)
        return loss, logs

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The trained fake-score tensors (live: a checkpoint loads into them) and its optimizer, keyed by name."""
        fake = self._require_setup()
        params = dict(fake.named_parameters())
        return {"sampler_steps": self.sampler_steps, "fake_train": self.fake_train,
                "fake": {n: params[n].detach() for n in self._trained},
                "optimizer": OptimizerState(fake, self._optimizer).state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fake = self._require_setup()
        _check_steps(state, self.sampler_steps)
        if state.get("fake_train") != self.fake_train:
            raise LinCompressError(f"the checkpoint trained the fake score with fake_train={state.get('fake_train')!r}; "
                                   f"resume with --fake-train {state.get('fake_train')} or delete the checkpoints")
        saved = state.get("fake") or {}
        missing = sorted(set(self._trained) - set(saved))
        if missing:
            raise LinCompressError(f"the checkpoint lacks the fake-score parameter {missing[0]}; delete it to start over")
        params = dict(fake.named_parameters())
        with torch.no_grad():
            for name in self._trained:
                params[name].copy_(saved[name].to(params[name].device))
        OptimizerState(fake, self._optimizer).load_state_dict(state["optimizer"])
        for group in self._optimizer.param_groups:  # a changed --fake-lr applies on resume
            group["lr"] = self.fake_lr

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out["fake_score_trained_parameters"] = sum(p.numel() for p in self._fake.parameters() if p.requires_grad) \
            if self._fake is not None else None
        return out


def _check_steps(state: dict[str, Any], steps: int) -> None:
    saved = state.get("sampler_steps")
    if saved != steps:
        raise LinCompressError(f"the checkpoint trained a {saved}-step student; resume with --student-steps {saved} "
                               "or delete its checkpoints to start over")


@dataclass
class FewStepADM(Objective):
    """ADM's distribution-matching term on the few-step grid (student = its own score estimate) + the pair regression.

    sampler_steps, sampler_sigmas, grad_steps, regression: as for ``DMD2``.
    normalize: ADM's per-sample normalisation of the score difference.
    """

    name: ClassVar[str] = "adm"
    sampler_steps: int = 4
    sampler_sigmas: list[float] | None = None
    grad_steps: int = 1
    regression: float | None = None
    normalize: bool = True
    _adm: ADM | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_common(self.sampler_steps, self.grad_steps, self.regression, self.sampler_sigmas)
        self._adm = ADM(sampler_steps=self.sampler_steps, grad_steps=self.grad_steps, renoise=True,
                        normalize=self.normalize, regression=0.0, onpolicy=0.0, dm_weight=1.0)

    @property
    def needs_teacher_data(self) -> bool:  # type: ignore[override]
        return self.regression is not None and self.regression > 0

    def loss(self, ctx: Context, batch: int) -> tuple[Tensor, dict[str, float]]:
        loss, logs = self._adm.loss(ctx, batch)
        loss = _add_regression(loss, logs, regression_weight(self.regression, ctx), ctx, batch, self.grad_steps)
        return loss, logs

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_steps": self.sampler_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_steps(state, self.sampler_steps)


DISTILL_OBJECTIVES: dict[str, type[Objective]] = {"dmd2": DMD2, "adm": FewStepADM}


def distill_objective(config: Any, sigmas: list[float]) -> Objective:
    """The objective a ``DistillConfig`` asks for, on the student grid ``sigmas``."""
    common = {"sampler_steps": config.student_steps, "sampler_sigmas": list(sigmas),
              "grad_steps": config.distill_grad_steps, "regression": config.distill_regression}
    if config.distill_objective == "dmd2":
        lr = config.distill_lr if config.distill_lr is not None else config.lr
        return DMD2(**common, fake_updates=config.fake_updates, fake_lr=config.fake_lr if config.fake_lr is not None else lr,
                    fake_train=config.fake_train, fake_weight_decay=config.weight_decay, fake_grad_clip=config.grad_clip,
                    gradient_checkpointing=config.gradient_checkpointing)
    if config.distill_objective == "adm":
        return FewStepADM(**common)
    raise LinCompressError(f"unknown distillation objective {config.distill_objective!r}; "
                           f"choose one of {', '.join(DISTILL_OBJECTIVES)}")
