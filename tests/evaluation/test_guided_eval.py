"""Evaluation with classifier-free guidance: the teacher samples guided, the student as its guidance mode says."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lincompress import Pipeline, Target, passes
from lincompress.evaluation import evaluate
from lincompress.guidance import GuidanceConfig
from zoo import HandWrittenDiT


def _guided_target(scale: float) -> Target:
    torch.manual_seed(0)
    model = HandWrittenDiT(channels=4, dim=16, heads=2, depth=2, context_dim=8).eval()
    null = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(9))

    def conditions(batch, generator):
        return {"encoder_hidden_states": torch.randn(batch, 3, 8, generator=generator)}

    def example_inputs(batch):
        g = torch.Generator().manual_seed(1)
        return {"hidden_states": torch.randn(batch, 4, 4, 4, generator=g), "timestep": torch.full((batch,), 500.0),
                **conditions(batch, g)}

    return Target(model=model, example_inputs=example_inputs, conditions=conditions, latent_shape=(4, 4, 4),
                  scheduler=FlowMatchEulerDiscreteScheduler(shift=2.0), guidance_scale=scale,
                  negative_conditions=lambda b: {"encoder_hidden_states": null.expand(b, -1, -1).clone()})


@pytest.fixture(scope="module")
def unchanged_artifact(tmp_path_factory):
    """A 'compressed' model with no linear site: the teacher's own weights."""
    out = tmp_path_factory.mktemp("art") / "lin0"
    Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.0), passes.Fix(),
              passes.Save(out)]).run(_guided_target(3.0))
    return out


def test_a_cfg_student_equal_to_the_teacher_matches_the_guided_teacher_exactly(unchanged_artifact, tmp_path):
    data = evaluate(_guided_target(3.0), unchanged_artifact, samples=2, steps=3, out_dir=tmp_path, pictures=False,
                    guidance=GuidanceConfig(student="cfg"))
    assert data["settings"]["guidance"] == {"scale": 3.0, "student": "cfg", "teacher_forwards_per_step": 2,
                                            "student_forwards_per_step": 2}
    assert data["fidelity"]["velocity_rel_mse"] < 1e-10 and data["fidelity"]["final_latent_rel_mse"] < 1e-10


def test_a_distilled_student_samples_with_one_conditional_forward(unchanged_artifact, tmp_path):
    data = evaluate(_guided_target(3.0), unchanged_artifact, samples=2, steps=3, out_dir=tmp_path, pictures=False,
                    guidance=GuidanceConfig(student="distilled"))
    assert data["settings"]["guidance"]["student_forwards_per_step"] == 1
    # the teacher's conditional velocity is not its guided one: an untrained "distilled" student differs
    assert data["fidelity"]["velocity_rel_mse"] > 1e-4
    unguided = evaluate(_guided_target(1.0), unchanged_artifact, samples=2, steps=3, out_dir=tmp_path, pictures=False,
                        guidance=GuidanceConfig(student="distilled"))
    assert unguided["fidelity"]["velocity_rel_mse"] < 1e-10  # without guidance both are the same single forward
    assert "No classifier-free guidance" in (tmp_path / "eval.md").read_text()
