"""Classifier-free guidance in recovery: the guided teacher velocity, guided trajectories, cfg vs distilled students."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pipelines import ForwardCounter
from tiny_targets import guided_hybrid_state, guided_target
from lincompress.errors import LinCompressError
from lincompress.recovery.objectives import ADM, OBJECTIVES
from lincompress.recovery.sampling import Guidance, ModelCaller, sigma_grid
from lincompress.recovery.teacher_data import MANIFEST, build_teacher_cache, load_teacher_cache
from lincompress.recovery.trainer import RecoveryConfig, Trainer


def _inputs(target, batch: int = 3):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, *target.latent_shape, generator=g)
    sigma = torch.tensor([0.9, 0.5, 0.2])[:batch]
    return x, sigma, target.conditions(batch, g)


@pytest.mark.parametrize("batched", [True, False])
def test_guided_teacher_velocity_is_v_uncond_plus_scale_times_the_difference(batched):
    target = guided_target(scale=3.5)
    caller = ModelCaller(target, target.scheduler)
    x, sigma, cond = _inputs(target)
    counter = ForwardCounter(target.model)
    guidance = Guidance(target, batched=batched)
    with torch.no_grad():
        guided = guidance.teacher(caller, target.model, x, sigma, cond)
        calls, samples = counter.calls, counter.samples
        v_c = caller(target.model, x, sigma, cond)
        v_u = caller(target.model, x, sigma, target.negative_conditions(3))
    counter.remove()
    assert (calls, samples) == ((1, 6) if batched else (2, 6))  # one forward of 2B, or two of B
    torch.testing.assert_close(guided, v_u + 3.5 * (v_c - v_u), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(guided, v_c, atol=1e-3)  # guidance changes the velocity


def test_guidance_is_inactive_at_scale_one_and_without_an_unconditional_input():
    import dataclasses

    target = guided_target(scale=1.0)
    assert not Guidance(target).active
    assert not Guidance(dataclasses.replace(target, negative_conditions=None)).active
    with pytest.raises(LinCompressError, match="unknown student_guidance 'half'"):
        Guidance(target, student="half")


def test_guided_trajectories_integrate_the_guided_velocity_and_keep_both_branches(tmp_path):
    target = guided_target(depth=1, scale=2.5)
    build_teacher_cache(target, target.model, tmp_path, samples=3, steps=3, shard_size=2)
    data = load_teacher_cache(tmp_path)
    assert data.guided and data.v_cond.shape == data.v.shape == data.x.shape
    torch.testing.assert_close(data.v, data.v_uncond + 2.5 * (data.v_cond - data.v_uncond), rtol=1e-5, atol=1e-6)
    d = data.sigmas[1] - data.sigmas[0]
    torch.testing.assert_close(data.x[:, 1], data.x[:, 0] + d * data.v[:, 0])  # Euler steps follow the guided v
    caller = ModelCaller(target, target.scheduler)
    with torch.no_grad():
        v_c = caller(target.model, data.x[:, 1], data.sigmas[1].expand(3), data.cond)
    torch.testing.assert_close(v_c, data.v_cond[:, 1], rtol=1e-5, atol=1e-6)
    settings = json.loads((tmp_path / MANIFEST).read_text())["settings"]
    assert settings["guidance_scale"] == 2.5

    build_teacher_cache(guided_target(depth=1, scale=4.0), target.model, tmp_path, samples=3, steps=3, shard_size=2)
    assert json.loads((tmp_path / MANIFEST).read_text())["settings"]["guidance_scale"] == 4.0  # not reused: rebuilt
    assert not torch.allclose(load_teacher_cache(tmp_path).v, data.v)


@pytest.mark.parametrize(("mode", "per_step"), [("distilled", 1), ("cfg", 2)])
def test_the_students_sampler_runs_one_forward_per_step_when_distilled(tmp_path, mode, per_step):
    state = guided_hybrid_state(depth=1)
    config = RecoveryConfig(objective="adm", steps=1, samples=0, student_guidance=mode, checkpoint_every=1000)
    trainer = Trainer(state.target, state.model, config, tmp_path, selection=[], progress=False)
    ctx = trainer._context(None)
    objective = ADM(sampler_steps=4, regression=0.0)
    ctx.generator.manual_seed(3)
    counter = ForwardCounter(state.model)
    with torch.no_grad():
        x, t, _ = objective.student_sample(ctx, batch=2)
    stop = next(i for i, s in enumerate(ctx.student_sigmas) if torch.isclose(s, t[0])) if float(t[0]) < 1 else None
    counter.remove()
    assert counter.calls >= 1 and counter.samples == counter.calls * 2 * per_step  # batch 2, x2 with CFG
    if stop is not None:
        assert counter.calls == stop  # one (batched) forward per sampler step


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("mode", ["cfg", "distilled"])
def test_every_objective_trains_in_both_modes(tmp_path, name, mode):
    state = guided_hybrid_state(depth=1)
    selection = [s.name for s in state.candidates]
    config = RecoveryConfig(objective=name, steps=1, batch_size=2, samples=2, teacher_steps=2, student_guidance=mode,
                            checkpoint_every=1000, lr=1e-3)
    trainer = Trainer(state.target, state.model, config, tmp_path, selection=selection, progress=False)
    data = trainer._teacher_data()
    assert data.guided
    ctx = trainer._context(data)
    loss, logs = trainer.objective.loss(ctx, 2)
    assert torch.isfinite(loss) and loss.requires_grad and logs
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in state.model.parameters())


def _gaps(trainer, ctx, data):
    """(distilled gap, cfg branch gap): student single forward vs guided teacher; student branches vs teacher's."""
    x, sigma, v, cond = data.eval_points(8)
    with torch.no_grad():
        single = torch.nn.functional.mse_loss(ctx.velocity(ctx.student, x, sigma, cond), v).item()
        s_c, s_u = ctx.student_branches(x, sigma, cond)
        t_c, t_u = ctx.teacher_branches(x, sigma, cond)
        branches = 0.5 * (torch.nn.functional.mse_loss(s_c, t_c) + torch.nn.functional.mse_loss(s_u, t_u)).item()
    return single, branches


@pytest.mark.parametrize("mode", ["distilled", "cfg"])
def test_mse_learns_the_guided_teacher_in_one_forward_or_both_branches(tmp_path, mode):
    state = guided_hybrid_state(depth=2, scale=4.0)
    selection = [s.name for s in state.candidates]
    config = RecoveryConfig(objective="mse", steps=40, batch_size=4, samples=4, teacher_steps=4, lr=3e-4,
                            lr_feature_maps=3e-3, student_guidance=mode, checkpoint_every=1000)
    trainer = Trainer(state.target, state.model, config, tmp_path, selection=selection, progress=False)
    data = trainer._teacher_data()
    ctx = trainer._context(data)
    before = _gaps(trainer, ctx, data)
    for step in range(config.steps):
        trainer._train_step(ctx, step)
    after = _gaps(trainer, ctx, data)
    index = 0 if mode == "distilled" else 1
    assert after[index] < 0.7 * before[index], (mode, before, after)


def test_sigma_grid_leaves_the_users_scheduler_alone():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(7)
    before = (scheduler.timesteps.clone(), scheduler.sigmas.clone(), scheduler.num_inference_steps)
    sigmas = sigma_grid(scheduler, 3)
    assert sigmas.shape == (4,)
    assert scheduler.num_inference_steps == before[2] == 7
    assert torch.equal(scheduler.timesteps, before[0]) and torch.equal(scheduler.sigmas, before[1])
    fresh = FlowMatchEulerDiscreteScheduler(shift=3.0)
    initial = fresh.timesteps.clone()
    sigma_grid(fresh, 2)
    assert getattr(fresh, "num_inference_steps", None) is None and torch.equal(fresh.timesteps, initial)


def test_resume_refuses_a_checkpoint_of_the_other_student_mode(tmp_path):
    state = guided_hybrid_state(depth=1)
    selection = [s.name for s in state.candidates]
    config = RecoveryConfig(objective="mse", steps=1, batch_size=1, samples=1, teacher_steps=2, checkpoint_every=1)
    Trainer(state.target, state.model, config, tmp_path, selection=selection, progress=False).run()
    state = guided_hybrid_state(depth=1)
    distilled = RecoveryConfig(objective="mse", steps=2, batch_size=1, samples=1, teacher_steps=2, checkpoint_every=1,
                               student_guidance="distilled")
    with pytest.raises(LinCompressError, match="trained a 'cfg' student; resume with the same student guidance"):
        Trainer(state.target, state.model, distilled, tmp_path, selection=selection, progress=False).run(resume=True)
