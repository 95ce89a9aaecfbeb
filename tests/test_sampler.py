"""The recorded few-step sampler: the record, its diffusers scheduler, and real pipelines run with exactly that sampler."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lincompress.errors import ArtifactError, LinCompressError
from lincompress.guidance import GuidanceConfig
from lincompress.recovery.sampling import euler_sample
from lincompress.sampler import (SamplerConfig, SamplerError, read_sampler, run_sampler, sampler_call_kwargs,
                                 sampler_from_manifest, sampler_pipeline)
from pipelines import PIPELINES

SIGMAS = (1.0, 0.9, 0.75, 0.5, 0.0)


def _sampler(student: str = "distilled", scale: float = 1.0) -> SamplerConfig:
    return SamplerConfig(4, SIGMAS, GuidanceConfig(scale=scale, negative_prompt="", student=student))


def test_the_record_round_trips_and_refuses_malformed_grids():
    sampler = _sampler(scale=5.0)
    record = json.loads(json.dumps(sampler.to_dict()))
    assert record["timesteps"] == [1000.0, 900.0, 750.0, 500.0] and record["guidance"]["student"] == "distilled"
    assert SamplerConfig.from_dict(record) == sampler
    assert sampler.forwards == 4 and _sampler("cfg", 5.0).forwards == 8
    for bad, match in [({"steps": 0, "sigmas": [1.0]}, "steps >= 1"),
                       ({"steps": 2, "sigmas": [1.0, 0.0]}, "needs 3 sigmas"),
                       ({"steps": 2, "sigmas": [1.0, 0.5, 0.1]}, "down to 0"),
                       ({"steps": 2, "sigmas": [1.0, 1.0, 0.0]}, "strictly decreasing"),
                       ({"steps": 1, "sigmas": [1.0, 0.0], "solver": "heun"}, "unknown sampler solver"),
                       ({"steps": 1, "sigmas": [1.0, 0.0], "shift": 3}, "unknown sampler setting 'shift'"),
                       ({"steps": 1, "sigmas": [1.0, 0.0], "num_train_timesteps": None}, "positive number"),
                       ({"steps": 1, "sigmas": [1.0, 0.0], "num_train_timesteps": [1000]}, "positive number"),
                       ({"sigmas": [1.0, 0.0]}, "lacks 'steps'")]:
        with pytest.raises(SamplerError, match=match) as err:
            SamplerConfig.from_dict(bad)
        assert len(str(err.value).splitlines()) == 1


def test_the_scheduler_samples_the_recorded_grid_whatever_the_pipeline_asks():
    sampler = _sampler()
    scheduler = sampler.scheduler()
    scheduler.set_timesteps(4)
    torch.testing.assert_close(scheduler.sigmas, torch.tensor(SIGMAS))
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 900.0, 750.0, 500.0]))
    scheduler.set_timesteps(sigmas=[1.0, 0.7, 0.3, 0.1], mu=0.5)  # a pipeline's own default grid is overridden
    torch.testing.assert_close(scheduler.sigmas, torch.tensor(SIGMAS))
    with pytest.raises(SamplerError, match="samples in 4 steps on its recorded sigma grid, not 50; .*num_inference_steps=4"):
        scheduler.set_timesteps(50)
    clone = type(scheduler).from_config(scheduler.config)
    clone.set_timesteps(4)
    torch.testing.assert_close(clone.sigmas, scheduler.sigmas)
    # its step loop is lincompress's Euler sampler
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))

    def velocity(x, sigma):
        return x @ weight + sigma.view(-1, 1)

    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(velocity(x, (t / 1000).expand(2)), t, x, return_dict=False)[0]
    torch.testing.assert_close(x, euler_sample(velocity, noise, torch.tensor(SIGMAS)))


class TimestepSpy:
    def __init__(self, module: torch.nn.Module) -> None:
        self.timesteps: list[float] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        self.timesteps += [float(t) for t in kwargs["timestep"].reshape(-1)[:1]]


@pytest.mark.parametrize("family", ["wan", "hunyuan_video", "ltx_video"])
def test_a_pipeline_runs_exactly_the_recorded_sampler_and_stays_as_it_was(family, one_thread):
    case = PIPELINES[family]()
    pipe = case.pipe
    scheduler, config = pipe.scheduler, dict(pipe.scheduler.config)
    sampler = _sampler()
    spy = TimestepSpy(pipe.transformer)
    out = run_sampler(pipe, "a red fox", sampler, **case.call_kwargs(), output_type="latent",
                      generator=torch.Generator().manual_seed(0))
    spy.handle.remove()
    assert out is not None
    assert spy.timesteps == pytest.approx(list(sampler.timesteps), rel=1e-5)  # 4 forwards, one per recorded step
    assert pipe.scheduler is scheduler and dict(pipe.scheduler.config) == config  # the user's pipeline is untouched
    kwargs = sampler_call_kwargs(pipe, sampler)
    assert kwargs["num_inference_steps"] == 4 and ("sigmas" in kwargs) == (family == "hunyuan_video")
    student = sampler_pipeline(pipe, sampler)
    assert student is not pipe and student.transformer is pipe.transformer and student.scheduler is not scheduler


def test_a_cfg_student_runs_two_branches_and_contradicting_kwargs_are_refused(one_thread):
    case = PIPELINES["wan"]()
    spy = TimestepSpy(case.pipe.transformer)
    run_sampler(case.pipe, "a red fox", _sampler("cfg", 3.0), **case.call_kwargs(), output_type="latent")
    assert len(spy.timesteps) == 8  # CFG: a conditional and an unconditional forward per step
    with pytest.raises(SamplerError, match="sets 'num_inference_steps' from the recorded sampler"):
        run_sampler(case.pipe, "x", _sampler(), num_inference_steps=50)
    spy.timesteps.clear()
    run_sampler(case.pipe, "a red fox", None, **case.call_kwargs(), num_inference_steps=3, guidance_scale=1.0,
                output_type="latent")
    assert len(spy.timesteps) == 3  # no sampler: the pipeline as it is


def test_reading_the_sampler_from_an_artifact(tmp_path):
    assert sampler_from_manifest({"recipe": []}) is None  # no distillation: the teacher's sampler
    record = _sampler().to_dict()
    assert sampler_from_manifest({"recipe": [{"pass": "distill", "metadata": {"sampler": record}}]}) == _sampler()
    (tmp_path / "lincompress.json").write_text(json.dumps({"sampler": record}))
    assert read_sampler(tmp_path) == _sampler()
    (tmp_path / "lincompress.json").write_text(json.dumps({"sampler": {**record, "steps": 3}}))
    with pytest.raises(ArtifactError, match="a 3-step sampler needs 4 sigmas"):
        read_sampler(tmp_path)
    with pytest.raises(LinCompressError, match="not a lincompress artifact"):
        read_sampler(tmp_path / "missing")


def test_sampler_pipeline_keeps_the_pipelines_optional_settings():
    from diffusers import WanPipeline

    pipe = WanPipeline(**PIPELINES["wan"]().pipe.components, expand_timesteps=True)
    student = sampler_pipeline(pipe, _sampler())
    assert student.config.expand_timesteps is True and type(student.scheduler).__name__ == "RecordedGridScheduler"


def test_sampler_pipeline_needs_a_diffusers_pipeline():
    with pytest.raises(SamplerError, match="not a diffusers pipeline"):
        sampler_pipeline(copy.copy(object()), _sampler())
