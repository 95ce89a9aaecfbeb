"""ADM on a case with closed-form scores: Gaussian data, exact flow-matching velocities.

For x_0 ~ N(mu, s^2 I) and x_t = (1 - t) x_0 + t eps, x_t ~ N((1 - t) mu, ((1 - t)^2 s^2 + t^2) I), so the
score and the optimal velocity v = E[eps - x_0 | x_t] are known exactly. A "student" with learnable
(mu, log s) samples from N(mu_S, s_S^2) through its own ODE; ADM must move it to the teacher's.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from lincompress import Target
from lincompress.errors import LinCompressError
from lincompress.recovery.objectives import ADM, Context, score_difference
from lincompress.recovery.sampling import ConditionSource, ModelCaller, sigma_grid

DIM = 2


class GaussianFlow(nn.Module):
    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.full((DIM,), mu))
        self.log_s = nn.Parameter(torch.tensor(float(s)).log())

    def stats(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = 1 - t
        return a * self.mu, a**2 * torch.exp(2 * self.log_s) + t**2  # mean, variance of x_t

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mean, var = self.stats(t.view(-1, 1))
        return -(x - mean) / var

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep / 1000.0).view(-1, 1)
        mean, var = self.stats(t)
        r = hidden_states - mean
        e_eps = t / var * r
        e_x0 = self.mu + (1 - t) * torch.exp(2 * self.log_s) / var * r
        return e_eps - e_x0


def _target(model: nn.Module) -> Target:
    return Target(model=model, example_inputs=lambda b: {"hidden_states": torch.zeros(b, DIM), "timestep": torch.zeros(b)},
                  scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), latent_shape=(DIM,))


def test_score_difference_matches_closed_form_scores():
    student, teacher = GaussianFlow(0.3, 1.2), GaussianFlow(-0.5, 0.6)
    x, t = torch.randn(16, DIM), torch.rand(16) * 0.9 + 0.05
    with torch.no_grad():
        diff = score_difference(student(x, t * 1000), teacher(x, t * 1000), t)
        torch.testing.assert_close(diff, student.score(x, t) - teacher.score(x, t))


def test_adm_moves_the_students_marginal_to_the_teachers():
    torch.manual_seed(0)
    student, teacher = GaussianFlow(0.0, 1.0), GaussianFlow(1.5, 0.5)
    target = _target(teacher)
    ctx = Context(student=student, teacher=teacher, caller=ModelCaller(target, target.scheduler),
                  conditions=ConditionSource(target), latent_shape=(DIM,), shift=1.0,
                  student_sigmas=sigma_grid(target.scheduler, 8), generator=torch.Generator().manual_seed(0),
                  device=torch.device("cpu"))
    objective = ADM(sampler_steps=8, grad_steps=1, onpolicy=0.0)  # the distribution-matching term alone
    opt = torch.optim.Adam(student.parameters(), lr=0.02)
    mu_gap0 = (student.mu - teacher.mu).abs().mean().item()
    s_gap0 = (student.log_s - teacher.log_s).abs().item()
    for _ in range(200):
        opt.zero_grad()
        loss, _ = objective.loss(ctx, 64)
        loss.backward()
        opt.step()
    mu_gap = (student.mu - teacher.mu).abs().mean().item()
    s_gap = (student.log_s - teacher.log_s).abs().item()
    assert mu_gap < 0.05 * mu_gap0, (mu_gap0, mu_gap)
    assert s_gap < 0.1 * s_gap0, (s_gap0, s_gap)
    # and the student's own few-step samples now look like teacher data (std: 8 Euler steps bias it low)
    with torch.no_grad():
        x = ctx.randn(4000)
        for i in range(8):
            sig = ctx.student_sigmas
            x = x + (sig[i + 1] - sig[i]) * student(x, sig[i].expand(4000) * 1000)
    assert (x.mean(0) - 1.5).abs().max() < 0.2 and abs(x.std() - 0.5) < 0.15


def _context(student: nn.Module, teacher: nn.Module, steps: int = 8) -> Context:
    target = _target(teacher)
    return Context(student=student, teacher=teacher, caller=ModelCaller(target, target.scheduler),
                   conditions=ConditionSource(target), latent_shape=(DIM,), shift=1.0,
                   student_sigmas=sigma_grid(target.scheduler, steps), generator=torch.Generator().manual_seed(0),
                   device=torch.device("cpu"))


def test_onpolicy_term_matches_velocities_on_the_students_own_trajectory():
    """With the distribution-matching term off, the on-policy term alone is velocity regression at student x_t."""
    torch.manual_seed(0)
    student, teacher = GaussianFlow(0.0, 1.0), GaussianFlow(1.5, 0.5)
    ctx = _context(student, teacher)
    objective = ADM(sampler_steps=8, onpolicy=1.0, dm_weight=0.0)
    loss, logs = objective.loss(ctx, 256)
    assert torch.isclose(loss.detach(), torch.tensor(logs["velocity_gap"]), rtol=1e-5)  # it is the velocity MSE
    loss.backward()
    assert student.mu.grad.abs().sum() > 0 and student.log_s.grad.abs() > 0
    opt = torch.optim.Adam(student.parameters(), lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        objective.loss(ctx, 64)[0].backward()
        opt.step()
    assert (student.mu - teacher.mu).abs().max() < 0.1 and (student.log_s - teacher.log_s).abs() < 0.1


def test_adm_defaults_and_bad_weights():
    objective = ADM(sampler_steps=6)
    assert objective.grad_steps == 6 and objective.onpolicy == 1.0  # gradient through every sampler step
    assert ADM(sampler_steps=6, grad_steps=2).grad_steps == 2
    with pytest.raises(LinCompressError, match="must be >= 0"):
        ADM(onpolicy=-1.0)
    with pytest.raises(LinCompressError, match="grad_steps"):
        ADM(sampler_steps=2, grad_steps=3)
