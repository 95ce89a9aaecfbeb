"""``lincompress eval`` end to end on the shipped shapes teacher (CPU, a few samples and steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from lincompress.cli import main

MODEL = Path(__file__).resolve().parents[2] / "examples" / "shapes" / "model.py"


def _optimize(out: Path, target_linear: float) -> None:
    args = ["optimize", str(MODEL), "--target-linear", str(target_linear), "--out", str(out), "--select", "uniform",
            "--steps", "0", "--quiet"]  # heuristic selection, no recovery training: fast on CPU
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def _eval(artifact: Path, out: Path, samples: int = 2, steps: int = 3) -> dict:
    result = CliRunner().invoke(main, ["eval", str(MODEL), "--artifact", str(artifact), "--samples", str(samples),
                                       "--steps", str(steps), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "eval.json").read_text())


@pytest.fixture(scope="module")
def half_linear(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "lin50"
    _optimize(out, 0.5)
    return out


def test_eval_writes_json_markdown_and_pictures(half_linear, tmp_path):
    data = _eval(half_linear, tmp_path / "eval", samples=2, steps=3)
    assert data["num_linear"] == 4 and data["num_candidates"] == 8
    assert [p["step"] for p in data["per_timestep"]] == [0, 1, 2]
    assert data["per_timestep"][0]["sigma"] == pytest.approx(1.0)
    fid = data["fidelity"]
    # half the attention replaced by untrained linear attention: outputs differ, but are not garbage numbers
    assert 0 < fid["velocity_rel_mse"] < 10 and math.isfinite(fid["psnr_db"]) and 0 < fid["psnr_db"] < 80
    assert -1 <= fid["ssim"] < 1
    world = data["world"]
    assert set(world["teacher"]) == set(world["compressed"]) >= {"colour_correct", "class_correct", "direction_correct"}
    assert len(world["conditions"]) == 2 and world["conditions"][0].startswith("a ")
    out = tmp_path / "eval"
    assert (out / "eval_grid.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "eval.gif").read_bytes()[:6] == b"GIF89a"
    md = (out / "eval.md").read_text()
    assert "PSNR" in md and "colour_correct" in md


def test_eval_defaults_to_the_artifact_dir(half_linear):
    data = _eval(half_linear, half_linear, samples=1, steps=2)
    assert (half_linear / "eval.json").is_file() and len(data["per_timestep"]) == 2


def test_all_softmax_artifact_reproduces_the_teacher(tmp_path):
    _optimize(tmp_path / "lin0", 0.0)
    data = _eval(tmp_path / "lin0", tmp_path / "eval", samples=2, steps=3)
    fid = data["fidelity"]
    assert fid["velocity_rel_mse"] < 1e-10
    assert fid["psnr_db"] > 80 and fid["ssim"] == pytest.approx(1.0, abs=1e-6)
    teacher, compressed = data["world"]["teacher"], data["world"]["compressed"]
    assert compressed == pytest.approx(teacher, abs=1e-4)  # same up to float rounding (softmax via the hybrid module)


def test_eval_reports_a_missing_artifact_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["eval", str(MODEL), "--artifact", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "not a lincompress artifact" in result.output


@pytest.mark.parametrize("flag, value", [("--samples", "0"), ("--steps", "-2"), ("--batch-size", "0")])
def test_eval_names_a_bad_count_by_its_flag_before_any_work(half_linear, tmp_path, flag, value):
    out = tmp_path / "never"
    args = ["eval", str(MODEL), "--artifact", str(half_linear), "--out", str(out), "--device", "cpu", flag, value]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert f"error: {flag} {value} must be a whole number of at least 1" in result.output, result.output
    assert not out.exists()  # checked before the output directory is made


def test_evaluate_speaks_python_argument_names(half_linear):
    from lincompress.config import ArgumentError
    from lincompress.evaluation.runner import evaluate

    with pytest.raises(ArgumentError, match=r"^batch_size=0 must be a whole number of at least 1$"):
        evaluate(None, half_linear, batch_size=0)  # type: ignore[arg-type]
