"""The CLI on a model.py returning a complete diffusers pipeline: prompts, guidance and resolution as flags.

One artifact is made as a user would (`optimize --prompts FILE --guidance-scale 3 --height --width --frames
--student-guidance distilled`); the tests check what it records, that it runs in a fresh pipeline with real
prompts at one forward per step, and that inspect / eval / bench read and honour the same settings.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import lincompress
from lincompress.cli import main
from lincompress.guidance import GuidanceConfig
from lincompress.target import ResolutionWarning
from pipelines import TEXT_LEN, ForwardCounter, wan

PROMPTS = ["a red fox running through fresh snow", "waves rolling onto a black sand beach",
           "a chef tossing vegetables in a flaming wok"]
SIZE = ["--height", "32", "--width", "32", "--frames", "5", "--max-sequence-length", str(TEXT_LEN)]
FAST = ["--samples", "1", "--teacher-steps", "2", "--eval-points", "2", "--no-compare-without-recovery",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def model_py():
    return Path(__file__).resolve().parents[1] / "fixtures" / "wan_pipeline" / "model.py"


@pytest.fixture(scope="module")
def made(model_py, tmp_path_factory):
    """``optimize`` with prompts, CFG scale 3, a small resolution and a guidance-distilled student."""
    root = tmp_path_factory.mktemp("pipeline_cli")
    prompts = root / "prompts.txt"
    prompts.write_text("# the prompt set\n" + "\n".join(PROMPTS) + "\n")
    out = root / "distilled"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(main, ["optimize", str(model_py), "--prompts", str(prompts), "--guidance-scale", "3",
                                           *SIZE, "--student-guidance", "distilled", "--steps", "2",
                                           "--target-linear", "0.5", *FAST, "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_optimize_records_guidance_prompts_and_resolution(made):
    out, output = made
    manifest = json.loads((out / "lincompress.json").read_text())
    assert manifest["guidance"] == {"scale": 3.0, "negative_prompt": "", "student": "distilled"}
    assert manifest["resolution"] == {"height": 32, "width": 32, "frames": 5, "tokens": 8, "defaulted": []}
    assert manifest["prompts"]["size"] == 3 and manifest["prompts"]["file"] == "prompts.json"
    assert json.loads((out / "prompts.json").read_text()) == PROMPTS  # the stated set travels with the artifact
    assert manifest["target_options"] == {"negative_prompt": None, "guidance_scale": 3.0, "height": 32, "width": 32,
                                          "frames": 5, "max_sequence_length": TEXT_LEN}
    recover = next(step for step in manifest["recipe"] if step["pass"] == "recover")
    assert recover["config"]["student_guidance"] == "distilled"
    assert "student distilled (one forward per step" in " ".join(output.split())
    assert "warning" not in output  # the resolution was given
    assert lincompress.guidance_of(out) == GuidanceConfig(3.0, "", "distilled")


def test_the_artifact_runs_in_a_fresh_pipeline_with_real_prompts_one_forward_per_step(made, one_thread):
    out, _ = made
    case = wan()  # a fresh pipeline, as a user's deployment builds it
    case.pipe.transformer = lincompress.apply(case.pipe.transformer, out)
    counter = ForwardCounter(case.pipe.transformer)
    video = lincompress.run_pipeline(case.pipe, PROMPTS[:2], out, num_inference_steps=3, output_type="pt",
                                     generator=torch.Generator().manual_seed(0), **case.call_kwargs())
    counter.remove()
    assert video.frames.shape == (2, 5, 3, 32, 32) and torch.isfinite(video.frames).all()
    assert counter.calls == 3 and counter.samples == 3 * 2  # distilled: guidance scale 1, no unconditional branch


def test_open_artifact_rebuilds_the_target_at_the_recorded_resolution_and_prompts(made, one_thread):
    from lincompress.artifacts import open_artifact

    out, _ = made
    _, target = open_artifact(out)
    assert (target.resolution.height, target.resolution.width, target.resolution.frames) == (32, 32, 5)
    assert target.latent_shape == (4, 2, 4, 4) and target.prompts == PROMPTS and target.guidance_scale == 3.0
    assert target.inputs(1)["encoder_hidden_states"].shape == (1, TEXT_LEN, 16)
    _, bigger = open_artifact(out, height=64, guidance_scale=2.0)  # overrides replace the recorded options
    assert bigger.latent_shape == (4, 2, 8, 4) and bigger.guidance_scale == 2.0 and bigger.prompts == PROMPTS

    (out / "prompts.json").write_text(json.dumps(PROMPTS[:1]))
    try:
        with pytest.raises(lincompress.LinCompressError, match="does not match the prompt-set hash"):
            open_artifact(out)
    finally:
        (out / "prompts.json").write_text(json.dumps(PROMPTS, indent=0))


def test_inspect_shows_resolution_tokens_guidance_and_prompts(model_py, tmp_path, one_thread):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS))
    result = CliRunner().invoke(main, ["inspect", str(model_py), "--json", "--prompts", str(prompts),
                                       "--guidance-scale", "2.5", *SIZE])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)["target"]
    assert info["resolution"]["tokens"] == 8 and info["latent_shape"] == [4, 2, 4, 4]
    assert info["guidance_scale"] == 2.5 and info["prompts"]["size"] == 3 and info["resolution_warning"] is None

    result = CliRunner().invoke(main, ["inspect", str(model_py), "--height", "32", "--width", "32",
                                       "--max-sequence-length", str(TEXT_LEN)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: no --frames given" in text and "81 frames = 84 video tokens per sample" in text
    assert "resolution: 32x32, 81 frames, 84 video tokens per sample (frames from the pipeline's defaults)" in text
    assert "teacher guidance: classifier-free, scale 5" in text  # WanPipeline's default
    assert "prompt set: 339 prompts" in text  # the shipped default set


def test_compress_warns_in_python_when_the_resolution_is_defaulted(model_py, tmp_path, one_thread):
    with pytest.warns(ResolutionWarning, match=r"no frames= given: .* 84 video tokens"):
        state = lincompress.compress(model_py, height=32, width=32, max_sequence_length=TEXT_LEN, steps=0,
                                     target_linear=0.5)
    assert state.target.resolution.defaulted == ("frames",)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResolutionWarning)  # all three given: no warning
        lincompress.compress(model_py, height=32, width=32, frames=5, max_sequence_length=TEXT_LEN, steps=0,
                             target_linear=0.5)


def test_eval_honours_the_artifacts_guidance_and_its_overrides(made, model_py, tmp_path, one_thread):
    out, _ = made
    args = ["eval", str(model_py), "--artifact", str(out), "--samples", "1", "--steps", "2", "--device", "cpu",
            "--no-pictures"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "as_made")])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "as_made" / "eval.json").read_text())["settings"]
    assert settings["guidance"] == {"scale": 3.0, "student": "distilled", "teacher_forwards_per_step": 2,
                                    "student_forwards_per_step": 1}
    assert settings["resolution"]["tokens"] == 8 and settings["latent_shape"] == [4, 2, 4, 4]  # the recorded size
    assert "guidance-distilled (1 denoiser forward per step)" in " ".join(result.output.split())

    result = CliRunner().invoke(main, [*args, "--student-guidance", "cfg", "--guidance-scale", "2",
                                       "--out", str(tmp_path / "cfg")])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "cfg" / "eval.json").read_text())["settings"]
    assert settings["guidance"] == {"scale": 2.0, "student": "cfg", "teacher_forwards_per_step": 2,
                                    "student_forwards_per_step": 2}


def test_bench_counts_the_forwards_of_a_denoising_step(made, model_py, tmp_path, one_thread):
    out, _ = made
    report_path = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(model_py), "--artifact", str(out), "--steps", "1", "--reps", "1",
                                       "--warmup", "0", "--sampling-reps", "1", "--device", "cpu",
                                       "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    original, student = report["rows"]
    assert original["forwards_per_step"] == 2 and student["forwards_per_step"] == 1  # guided teacher, distilled student
    for row in (original, student):
        assert row["step_ms"] == pytest.approx(row["forward_ms"] * row["forwards_per_step"])
    assert student["speedup_step"] == pytest.approx(original["step_ms"] / student["step_ms"])
    assert report["settings"]["guidance_scale"] == 3.0 and report["settings"]["resolution"]["tokens"] == 8


def test_the_bench_sampling_loop_runs_both_cfg_branches_per_step():
    from lincompress.benchmarking import make_sampler

    calls = []

    def model(hidden_states, timestep, cond):
        calls.append(float(cond))
        return hidden_states * 0 + cond

    x = torch.zeros(1, 2)
    guided, description = make_sampler(model, {"hidden_states": x, "timestep": torch.ones(1), "cond": 1.0},
                                       "hidden_states", "timestep", None, 4, uncond={"cond": 0.0}, guidance_scale=3.0)
    final = guided()
    assert calls == [1.0, 0.0] * 4 and "2 forwards per step" in description
    torch.testing.assert_close(final, torch.full((1, 2), -3.0))  # v = 0 + 3 (1 - 0) = 3 over t: 1 -> 0
