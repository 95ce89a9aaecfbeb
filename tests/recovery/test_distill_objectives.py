"""Few-step distillation objectives: an analytic case, exact resume with a fake-score network, the NaN guard."""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from test_adm_analytic import DIM, GaussianFlow, _target
from tiny_targets import hybrid_state
from lincompress.attention import iter_sites
from lincompress.errors import LinCompressError
from lincompress.recovery.checkpoint import latest_step, load_checkpoint, save_checkpoint
from lincompress.recovery.distill import DMD2, FewStepADM, step_output
from lincompress.recovery.objectives import Context
from lincompress.recovery.sampling import ConditionSource, ModelCaller, euler_sample, few_step_grid
from lincompress.recovery.trainer import NonFiniteError, RecoveryConfig, Trainer, TrainingInterrupted


def test_few_step_grid_spaces_the_unshifted_time_equally():
    torch.testing.assert_close(few_step_grid(3.0, 4), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    torch.testing.assert_close(few_step_grid(1.0, 2), torch.tensor([1.0, 0.5, 0.0]))


# --------------------------------------------------------------------------- analytic case


class FewStepGaussian(nn.Module):
    """A 4-step generator of Gaussians: at grid step k the velocity is a_k x + b_k, so every step's output is affine."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("grid", sigmas[:-1].clone())
        self.a = nn.Parameter(torch.zeros(len(self.grid)))  # v = 0: the untrained student returns its noise
        self.b = nn.Parameter(torch.zeros(len(self.grid), DIM))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep / 1000.0).view(-1, 1)
        k = (t - self.grid.view(1, -1)).abs().argmin(1)  # the nearest grid step's map
        return self.a[k].view(-1, 1) * hidden_states + self.b[k]


def _context(student: nn.Module, teacher: nn.Module, sigmas: torch.Tensor) -> Context:
    target = _target(teacher)
    return Context(student=student, teacher=teacher, caller=ModelCaller(target, target.scheduler),
                   conditions=ConditionSource(target), latent_shape=(DIM,), shift=1.0, student_sigmas=sigmas,
                   generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))


def _gap_to_teacher(student: nn.Module, sigmas: torch.Tensor) -> float:
    """W2 distance of the student's 4-step samples (as a Gaussian) to the teacher's data N(1.5, 0.5^2)."""
    with torch.no_grad():
        noise = torch.randn(4000, DIM, generator=torch.Generator().manual_seed(5))
        x = euler_sample(lambda x, s: student(x, s * 1000), noise, sigmas)
    return math.hypot(x.mean().item() - 1.5, x.std().item() - 0.5)


@pytest.mark.parametrize(("objective", "shrink"), [
    (lambda: DMD2(sampler_steps=4, fake_updates=5, fake_lr=0.05, regression=0.0), 0.25),
    (lambda: FewStepADM(sampler_steps=4, regression=0.0), 0.5),
])
def test_a_four_step_student_moves_its_marginal_to_the_teachers(objective, shrink):
    torch.manual_seed(0)
    sigmas = few_step_grid(1.0, 4)
    student, teacher = FewStepGaussian(sigmas), GaussianFlow(1.5, 0.5)
    ctx = _context(student, teacher, sigmas)
    obj = objective()
    obj.setup(ctx)
    before = _gap_to_teacher(student, sigmas)
    opt = torch.optim.Adam(student.parameters(), lr=0.02)
    for _ in range(300):
        obj.before_step(ctx, 64, lambda what, value: None)
        opt.zero_grad()
        obj.loss(ctx, 64)[0].backward()
        opt.step()
    after = _gap_to_teacher(student, sigmas)
    assert before > 1.4 and after < shrink * before, (before, after)


def test_dmd2_trains_its_fake_score_on_the_students_outputs_not_the_teacher():
    sigmas = few_step_grid(1.0, 2)
    student, teacher = FewStepGaussian(sigmas), GaussianFlow(1.5, 0.5)
    ctx = _context(student, teacher, sigmas)
    obj = DMD2(sampler_steps=2, fake_updates=50, fake_lr=0.05, regression=0.0)
    obj.setup(ctx)
    fake = obj.modules()["fake_score"]
    assert fake is not teacher and torch.equal(fake.mu, teacher.mu)  # starts as the teacher
    logs = obj.before_step(ctx, 64, lambda what, value: None)
    assert logs["fake_score"] > 0
    assert fake.mu.abs().max() < 0.5 * teacher.mu.abs().max()  # the student still returns N(0, 1) noise
    assert torch.equal(teacher.mu, torch.full((DIM,), 1.5))  # the teacher itself is untouched
    x0, k, _ = step_output(ctx, 8, grad_steps=1)
    assert x0.shape == (8, DIM) and 0 <= k < 2


def test_dmd2_state_round_trips_through_a_checkpoint(tmp_path):
    """The fake score and its AdamW state go through the trainer's named-state checkpoint (DCP) unchanged."""
    sigmas = few_step_grid(1.0, 2)
    student, teacher = FewStepGaussian(sigmas), GaussianFlow(1.5, 0.5)
    trained = DMD2(sampler_steps=2, fake_updates=3, fake_lr=0.05, regression=0.0)
    trained.setup(_context(student, teacher, sigmas))
    trained.before_step(_context(student, teacher, sigmas), 8, lambda what, value: None)
    save_checkpoint(tmp_path, 1, {"objective": trained})
    fresh = DMD2(sampler_steps=2, fake_updates=3, fake_lr=0.05, regression=0.0)
    fresh.setup(_context(student, teacher, sigmas))
    assert not torch.equal(fresh.modules()["fake_score"].mu, trained.modules()["fake_score"].mu)
    load_checkpoint(tmp_path, {"objective": fresh})
    assert torch.equal(fresh.modules()["fake_score"].mu, trained.modules()["fake_score"].mu)
    before, after = trained._optimizer.state_dict(), fresh._optimizer.state_dict()
    assert after["state"].keys() == before["state"].keys() and after["state"]
    for key, value in before["state"].items():
        assert all(torch.equal(value[k], after["state"][key][k]) for k in value)
    assert after["param_groups"][0]["betas"] == (0.9, 0.999)


# --------------------------------------------------------------------------- the trainer: resume, Ctrl-C, NaN

STEPS = 6


@dataclass
class FaultyDMD2(DMD2):
    """DMD2 that misbehaves on its ``at``-th fake update or loss call."""

    at: int = -1
    fault: str = "sigint"
    calls: int = 0

    def loss(self, ctx, batch):
        out = super().loss(ctx, batch)
        self.calls += 1
        if self.calls - 1 == self.at:
            if self.fault == "sigint":
                signal.raise_signal(signal.SIGINT)  # the first Ctrl-C: saved between steps
            if self.fault == "interrupt":
                raise KeyboardInterrupt  # a second Ctrl-C: inside the step, after the fake updates
        return out

    def before_step(self, ctx, batch, check):
        if self.fault == "nan" and self.calls == self.at:
            check("fake-score loss", float("nan"))
        return super().before_step(ctx, batch, check)


def _objective(**kwargs) -> DMD2:
    return FaultyDMD2(sampler_steps=2, sampler_sigmas=few_step_grid(2.0, 2).tolist(), fake_updates=2, fake_lr=1e-3,
                      **kwargs)


def _trainer(work_dir, objective) -> Trainer:
    state = hybrid_state(depth=3)
    config = RecoveryConfig(objective="dmd2", steps=STEPS, batch_size=2, samples=2, teacher_steps=2, checkpoint_every=2,
                            lr=1e-3, compare_without_recovery=False)
    first = [n for n, _ in iter_sites(state.model)][:1]
    return Trainer(state.target, state.model, config, work_dir, selection=first, objective=objective, progress=False,
                   stage="distill")


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    student = {f"student.{k}": v.clone() for k, v in trainer.student.state_dict().items()}
    fake = {f"fake.{k}": v.clone() for k, v in trainer.objective.modules()["fake_score"].state_dict().items()}
    return student | fake


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = _trainer(tmp_path_factory.mktemp("full"), _objective())
        result = trainer.run()
    finally:
        torch.set_num_threads(threads)
    return _weights(trainer), result


@pytest.mark.parametrize(("fault", "kept", "message"), [
    ("sigint", 4, "stopped by SIGINT at step 4; checkpoint of step 4 saved"),  # flag checked before step 5
    ("interrupt", 2, "stopped by SIGINT at step 3; the checkpoint of step 2 in .* is kept"),  # inside step 4
])
def test_distillation_resumes_bit_exactly_with_its_fake_score(uninterrupted, tmp_path, fault, kept, message):
    weights, result = uninterrupted
    with pytest.raises(TrainingInterrupted, match=message):
        _trainer(tmp_path, _objective(at=3, fault=fault)).run()
    assert latest_step(tmp_path / "checkpoints") == kept
    resumed = _trainer(tmp_path, _objective())
    again = resumed.run(resume=True)
    assert again.metrics["resumed_from"] == kept
    got = _weights(resumed)
    assert got.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(got[name], value), name  # student and fake score: same RNG streams, same updates
    assert [r["loss"] for r in again.records] == [r["loss"] for r in result.records]
    assert all("fake_score" in r and "dmd" in r for r in again.records)


def test_a_checkpoint_of_another_student_step_count_is_refused(uninterrupted, tmp_path):
    _trainer(tmp_path, _objective()).run()
    other = FaultyDMD2(sampler_steps=1, sampler_sigmas=[1.0, 0.0], fake_updates=2)
    with pytest.raises(LinCompressError, match="trained a 2-step student; resume with --student-steps 2"):
        _trainer(tmp_path, other).run(resume=True)


def test_a_nan_in_the_fake_score_update_stops_the_run(tmp_path):
    with pytest.raises(NonFiniteError, match=r"fake-score loss became nan at step 4.*last good checkpoint \(step 2\)"):
        _trainer(tmp_path, _objective(at=3, fault="nan")).run()


def test_few_step_adm_reuses_adm_with_only_its_distribution_matching_term():
    adm = FewStepADM(sampler_steps=3, grad_steps=2)._adm
    assert (adm.sampler_steps, adm.grad_steps, adm.onpolicy, adm.regression, adm.dm_weight) == (3, 2, 0.0, 0.0, 1.0)
    with pytest.raises(LinCompressError, match="1 <= grad_steps <= sampler_steps"):
        DMD2(sampler_steps=2, grad_steps=3)
    with pytest.raises(LinCompressError, match="needs 3 sigmas"):
        FewStepADM(sampler_steps=2, sampler_sigmas=[1.0, 0.0])


@pytest.mark.parametrize("objective", ["dmd2", "adm"])
@pytest.mark.parametrize("mode", ["cfg", "distilled"])
def test_the_student_learns_the_guided_teacher(tmp_path, mode, objective):
    from tiny_targets import guided_hybrid_state

    from lincompress import Pipeline, passes

    state = guided_hybrid_state(depth=2, scale=3.0)
    calls: list[tuple[nn.Module, int]] = []

    def hook(module, args, kwargs):
        calls.append((module, kwargs["hidden_states"].shape[0]))

    teacher, student = state.target.model, state.model
    for module in (teacher, student):  # a fake score copied from the teacher carries the hook too: told apart below
        module.register_forward_pre_hook(hook, with_kwargs=True)
    state = Pipeline([passes.HeuristicSelect(0.5), passes.Distill(
        student_steps=2, distill_objective=objective, distill_steps=2, samples=1, teacher_steps=2, batch_size=2,
        fake_updates=1, student_guidance=mode, work_dir=tmp_path, progress=False, compare_without_recovery=False,
    )]).run(state)
    sampler = state.recipe[-1].metadata["sampler"]
    assert sampler["guidance"]["scale"] == 3.0 and sampler["guidance"]["student"] == mode
    teacher_batches = {b for m, b in calls if m is teacher}
    student_batches = {b for m, b in calls if m is student}
    assert teacher_batches <= {2, 4} and 4 in teacher_batches  # the guided teacher: both branches as one 2B forward
    if mode == "cfg":
        assert 4 in student_batches  # its sampler combines two branches
    else:
        assert student_batches <= {1, 2} and 4 not in student_batches  # one conditional forward per step
    if objective == "dmd2":
        fake = {b for m, b in calls if m is not teacher and m is not student}
        assert fake and fake <= {2}  # the fake score models the student's conditional distribution
