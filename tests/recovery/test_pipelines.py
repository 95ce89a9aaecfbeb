"""Recovery on complete diffusers pipelines: prompts + CFG at a small resolution, then the fixed model in the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines import PIPELINES, ForwardCounter
from lincompress import Pipeline, passes
from lincompress.guidance import GuidanceConfig, run_pipeline
from lincompress.target import target_from_pipeline

PROMPTS = ["a red fox running through fresh snow", "waves rolling onto a black sand beach",
           "a chef tossing vegetables in a flaming wok", "a hot air balloon rising over a valley at sunrise"]
CASES = [("wan", "cfg"), ("wan", "distilled"), ("cogvideox", "cfg"), ("hunyuan_video", "distilled"), ("ltx_video", "cfg")]
SCALE = 4.0
STEPS = 3  # pipeline sampling steps after recovery


@pytest.mark.parametrize(("family", "mode"), CASES)
def test_recovery_with_prompts_and_guidance_then_the_fixed_model_runs_in_the_pipeline(tmp_path, family, mode):
    case = PIPELINES[family]()
    original = case.pipe.transformer
    target = target_from_pipeline(case.pipe, family, prompts=PROMPTS, guidance_scale=SCALE,
                                  prompt_options=case.prompt_options, **case.resolution)
    work = tmp_path / "work"
    state = Pipeline([
        passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5),
        passes.Recover("adm", 2, work_dir=work, progress=False, samples=2, teacher_steps=2, student_guidance=mode),
        passes.Fix(),
    ]).run(target)
    rec = state.metrics["recovery"]
    assert rec["steps"] == 2 and rec["velocity_error_after"] is not None
    recover = next(step for step in state.recipe if step.name == "recover")
    assert recover.config["student_guidance"] == mode

    manifest = json.loads((work / "teacher" / "manifest.json").read_text())
    assert manifest["settings"]["guidance_scale"] == SCALE  # guided trajectories
    prompt_cache = [p for p in (work / "prompts").iterdir() if p.is_dir()]
    sizes = sorted(json.loads((p / "manifest.json").read_text())["num_prompts"] for p in prompt_cache)
    assert sizes == [1, len(PROMPTS)]  # the negative prompt and the prompt set, each encoded once

    case.pipe.transformer = state.model  # the fixed model, in the user's pipeline, with real prompts
    counter = ForwardCounter(state.model)
    out = run_pipeline(case.pipe, PROMPTS[:2], GuidanceConfig(SCALE, "", mode), num_inference_steps=STEPS,
                       output_type="pt" if family == "wan" else "latent",  # (the other VAEs decode slowly on CPU)
                       generator=torch.Generator().manual_seed(0), **case.call_kwargs())
    counter.remove()
    case.pipe.transformer = original
    assert torch.isfinite(out.frames).all() and out.frames.shape[0] == 2
    per_step = 1 if mode == "distilled" else 2
    assert counter.samples == STEPS * 2 * per_step  # batch 2; CFG doubles it
    if mode == "distilled":
        assert counter.calls == STEPS  # one transformer forward per step
