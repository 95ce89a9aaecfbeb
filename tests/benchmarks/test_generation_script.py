"""benchmarks/e2e.py --generation end to end at toy sizes (its GPU run at Wan scale is the lead's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def test_generation_mode_measures_teacher_and_few_step_students_in_one_run(tmp_path):
    out = tmp_path / "gen.json"
    results = e2e.main(["--generation", "--tiny", "--no-compile", "--compile-backend", "eager", "--targets", "0.5",
                        "--json", str(out)])
    assert json.loads(out.read_text())["table_md"] == results["table_md"]
    (config,) = results["configs"]
    teacher, student = config["rows"]
    assert "error" not in teacher and "error" not in student, (teacher.get("error"), student.get("error"))
    # the teacher: CFG, 2 forwards and 2 text-encoder calls per generation; the student: 4 steps, guidance distilled
    t, s = teacher["measured_eager_vae"], student["measured_eager_vae"]
    assert (t["forwards"], t["text_calls"]) == (2 * results["settings"]["teacher_steps"], 2)
    assert (s["forwards"], s["text_calls"]) == (4, 1) and student["sampler_sigmas"] == [1.0, 0.9, 0.75, 0.5, 0.0]
    assert t["output_finite"] and s["output_finite"] and s["vae_s"] > 0 and t["denoise_s"] > 0
    assert set(config["vae_decode_s"]) == {"eager", "compiled"} and "measured_compiled_vae" in student
    # the compiled VAE: one graph at warm-up, then nothing compiled in the timed decodes or the generation
    vae = config["vae_compile"]
    assert vae["warmup"]["graphs"] == 1 and "warnings" not in vae, vae
    assert vae["timed_decodes"]["compiles"] == vae["generation"]["compiles"] == 0
    assert "1 graph(s) at warm-up, 0 compile(s) after it" in results["table_md"]
    assert "composition_error_eager_vae" in teacher and teacher["speedup_eager_vae"] == 1.0
    assert student["speedup_eager_vae_kind"] == "measured" and "composed_compiled_vae" in teacher
    assert results["bar"]["wanted"] == 16.0 and "student 0.5 linear" in results["table_md"]


def test_a_full_step_distilled_student_runs_the_pipelines_scheduler_with_one_forward_per_step(tmp_path):
    results = e2e.main(["--generation", "--tiny", "--no-compile", "--no-compile-vae", "--targets", "",
                        "--full-step-students", "0.5", "--json", str(tmp_path / "gen.json")])
    teacher, student = results["configs"][0]["rows"]
    steps = results["settings"]["teacher_steps"]
    assert "error" not in student, student.get("error")
    assert not student["cfg"] and student["steps"] == steps and student["num_linear"] > 0
    m = student["measured_eager_vae"]
    assert (m["forwards"], m["text_calls"]) == (steps, 1) and m["output_finite"]
    assert teacher["measured_eager_vae"]["forwards"] == 2 * steps and student["speedup_eager_vae_kind"] == "measured"
    assert f"student 0.5 linear ({steps} steps, distilled guidance)" in results["table_md"]
