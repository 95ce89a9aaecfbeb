"""Flow-matching plumbing and the data-free teacher cache (sharded, atomic, resumable)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler

from tiny_targets import LATENT, recovery_target
from lincompress.errors import TargetError
from lincompress.recovery.sampling import ModelCaller, check_flow_scheduler, latent_shape, sigma_grid
from lincompress.recovery.teacher_data import MANIFEST, build_teacher_cache, load_teacher_cache


def test_missing_scheduler_says_what_to_add():
    with pytest.raises(TargetError, match=r"scheduler=diffusers\.FlowMatchEulerDiscreteScheduler"):
        check_flow_scheduler(recovery_target(scheduler=False).scheduler)


def test_non_flow_scheduler_is_refused():
    with pytest.raises(TargetError, match="flow-matching scheduler, got DDIMScheduler"):
        check_flow_scheduler(DDIMScheduler())


def test_latent_shape_falls_back_to_the_example_latent():
    target = recovery_target()
    target.latent_shape = None
    assert latent_shape(target) == LATENT


def test_sigma_grid_is_the_schedulers_and_ends_at_zero():
    sigmas = sigma_grid(recovery_target().scheduler, 4)
    assert sigmas.shape == (5,) and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


class CountingModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, **kwargs):
        self.calls += 1
        return self.inner(**kwargs)


def test_cache_is_euler_trajectories_and_resumes_without_recomputing(tmp_path):
    target = recovery_target(depth=1)
    teacher = CountingModel(target.model)
    build_teacher_cache(target, teacher, tmp_path, samples=5, steps=3, shard_size=2)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert teacher.calls == 3 * 3  # 3 shards x 3 steps

    data = load_teacher_cache(tmp_path)
    assert data.x.shape == (5, 3, *LATENT) and data.v.shape == data.x.shape and data.cond["encoder_hidden_states"].shape[0] == 5
    torch.testing.assert_close(data.x[:, 0], data.noise)  # the trajectory starts at the noise
    d = data.sigmas[1] - data.sigmas[0]
    torch.testing.assert_close(data.x[:, 1], data.x[:, 0] + d * data.v[:, 0])  # Euler on the scheduler's grid
    caller = ModelCaller(target, target.scheduler)
    with torch.no_grad():  # cached velocities are the teacher's
        v = caller(target.model, data.x[:2, 2], data.sigmas[2].expand(2), {k: c[:2] for k, c in data.cond.items()})
    torch.testing.assert_close(v, data.v[:2, 2])

    (tmp_path / manifest["shards"][1]["file"]).unlink()  # an interrupted run: one shard missing
    teacher.calls = 0
    build_teacher_cache(target, teacher, tmp_path, samples=5, steps=3, shard_size=2)
    assert teacher.calls == 3  # only the missing shard was regenerated...
    torch.testing.assert_close(load_teacher_cache(tmp_path).x, data.x)  # ...identically (seed + shard index)

    build_teacher_cache(target, teacher, tmp_path, samples=5, steps=2, shard_size=2)  # other settings: start over
    assert load_teacher_cache(tmp_path).x.shape[1] == 2
