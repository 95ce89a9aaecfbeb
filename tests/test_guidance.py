"""Guidance settings (what an artifact records) and running a diffusers pipeline the way a student was trained."""

from __future__ import annotations

import pytest

from pipelines import PIPELINES
from lincompress.errors import LinCompressError
from lincompress.guidance import GuidanceConfig, guidance_from_manifest, pipeline_call_kwargs, run_pipeline


def test_guidance_config_validates_and_round_trips():
    config = GuidanceConfig(scale=5, negative_prompt="blurry", student="distilled")
    assert config.scale == 5.0 and config.forwards_per_step == 1 and config.pipeline_scale() == 1.0
    assert GuidanceConfig.from_dict(config.to_dict()) == config
    assert GuidanceConfig(5.0).forwards_per_step == 2 and GuidanceConfig(1.0).forwards_per_step == 1
    with pytest.raises(LinCompressError, match="unknown student_guidance 'both'; choose one of cfg, distilled"):
        GuidanceConfig(student="both")
    with pytest.raises(LinCompressError, match="finite number > 0"):
        GuidanceConfig(scale=-1)
    with pytest.raises(LinCompressError, match="unknown guidance setting 'cfg'"):
        GuidanceConfig.from_dict({"cfg": 2})


def test_the_record_of_a_pipeline_target_is_its_scale_and_negative_prompt():
    from lincompress.target import target_from_pipeline

    case = PIPELINES["ltx_video"]()
    target = target_from_pipeline(case.pipe, "ltx", prompts=["a cat"], negative_prompt="blurry",
                                  prompt_options=case.prompt_options, **case.resolution)
    assert GuidanceConfig.from_target(target, "distilled") == GuidanceConfig(3.0, "blurry", "distilled")


def test_pipeline_kwargs_use_each_familys_cfg_argument():
    wan = PIPELINES["wan"]().pipe
    assert pipeline_call_kwargs(wan, GuidanceConfig(5.0, None, "cfg")) == {"guidance_scale": 5.0, "negative_prompt": ""}
    assert pipeline_call_kwargs(wan, GuidanceConfig(5.0, "low quality", "distilled")) == {"guidance_scale": 1.0}
    hunyuan = PIPELINES["hunyuan_video"]().pipe  # guidance_scale is Hunyuan's embedded input; CFG is true_cfg_scale
    assert pipeline_call_kwargs(hunyuan, GuidanceConfig(3.0, "", "cfg")) == {"true_cfg_scale": 3.0, "negative_prompt": ""}
    assert pipeline_call_kwargs(hunyuan, GuidanceConfig(3.0, "", "distilled")) == {"true_cfg_scale": 1.0}


def test_run_pipeline_refuses_settings_that_contradict_the_guidance():
    wan = PIPELINES["wan"]().pipe
    with pytest.raises(LinCompressError, match="sets 'guidance_scale' from the guidance settings"):
        run_pipeline(wan, "a cat", GuidanceConfig(5.0, "", "distilled"), guidance_scale=5.0)


def test_guidance_from_manifest_reads_the_record_or_the_recipe_or_the_format_1_settings():
    assert guidance_from_manifest({}) == GuidanceConfig()
    assert guidance_from_manifest({"settings": {"recovery": {"student_guidance": "distilled"}}}).student == "distilled"
    record = {"guidance": {"scale": 4.0, "negative_prompt": "", "student": "cfg"}}
    assert guidance_from_manifest(record) == GuidanceConfig(4.0, "", "cfg")
    recipe = [{"pass": "hybridize", "config": {}}, {"pass": "recover", "config": {"student_guidance": "distilled"}},
              {"pass": "fix", "config": {}}]
    assert guidance_from_manifest({"format_version": 2, "recipe": recipe}) == GuidanceConfig(student="distilled")
    assert guidance_from_manifest({"format_version": 2, "recipe": recipe[:1]}) == GuidanceConfig()  # no recovery: cfg


def test_an_artifact_without_guided_recovery_records_the_teacher_scale_and_a_cfg_student(tmp_path):
    from lincompress import Pipeline, passes
    from lincompress.guidance import guidance_of
    from lincompress.target import target_from_pipeline

    case = PIPELINES["wan"]()
    target = target_from_pipeline(case.pipe, "wan", prompts=["a cat"], guidance_scale=2.0,
                                  prompt_options=case.prompt_options, **case.resolution)
    Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix(),
              passes.Save(tmp_path / "art")]).run(target)
    assert guidance_of(tmp_path / "art") == GuidanceConfig(2.0, "", "cfg")
    assert not (tmp_path / "art" / "prompts.json").exists()  # prompts not stated as an option: model.py has them
