"""lincompress.compress / recover / bench: the standard recipe and its options from Python."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

import lincompress
from lincompress import Pipeline, passes
from lincompress.attention import iter_sites
from lincompress.errors import LinCompressError
from zoo import ZOO

sys.path.insert(0, str(Path(__file__).resolve().parent / "recovery"))
from tiny_targets import recovery_target  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compress_runs_the_standard_recipe_without_touching_the_original(tmp_path):
    target = ZOO["handwritten"].build()
    before = copy.deepcopy(target.model.state_dict())
    state = lincompress.compress(target, target_linear=0.7, steps=0, feature_map="relu", out_dir=tmp_path / "art")
    assert [h["pass"] for h in state.history] == ["find-attention", "hybridize", "select", "fix", "save", "report"]
    assert state.fixed and state.selection_method == "uniform" and len(state.selection) == 2
    assert state.feature_map == "relu" and not iter_sites(target.model)
    assert all(torch.equal(before[k], v) for k, v in target.model.state_dict().items())
    manifest = json.loads((tmp_path / "art" / "lincompress.json").read_text())
    assert manifest["selection"] == state.selection and manifest["recipe"][0]["config"]["feature_map"] == "relu"
    with pytest.raises(LinCompressError, match="already holds an artifact; pass overwrite=True or choose another out_dir"):
        lincompress.compress(target, steps=0, out_dir=tmp_path / "art")
    again = lincompress.compress(target, steps=0, select=["blocks.2.attn#0"], out_dir=tmp_path / "art", overwrite=True)
    assert again.selection == ["blocks.2.attn#0"] and again.selection_method == "sites"


def test_compress_learns_the_selection_when_it_trains(tmp_path):
    target = recovery_target(depth=4)
    state = lincompress.compress(target, target_linear=0.5, steps=3, samples=1, teacher_steps=2, batch_size=2,
                                 objective="mse", objective_options={}, progress=False, out_dir=tmp_path / "art")
    assert state.selection_method == "selective_transfer" and len(state.selection) == 2
    assert [s.name for s in state.recipe] == ["hybridize", "selective-transfer", "recover", "fix"]
    assert state.recipe[2].config["objective"] == "mse" and state.recipe[2].config["steps"] == 3
    assert (tmp_path / "art" / "report.md").is_file()
    assert not (tmp_path / "art" / ".lincompress-work").exists()  # checkpoints + caches go after success ...
    lincompress.compress(recovery_target(depth=4), target_linear=0.5, steps=2, samples=1, teacher_steps=2,
                         objective="mse", progress=False, out_dir=tmp_path / "kept", keep_work=True)
    assert (tmp_path / "kept" / ".lincompress-work" / "checkpoints" / "latest.json").is_file()  # ... unless kept


@pytest.mark.parametrize(("options", "message"), [
    ({"stesp": 3}, r"unknown option stesp \(did you mean steps\?\)"),
    ({"steps": 0, "lr": 1e-3}, r"lr=0.001 configures recovery, which this run does not do \(select='uniform', steps=0\)"),
    ({"steps": 5, "select": "uniform", "harden_at": 0.5},
     r"harden_at=0.5 configures learned selection \(select='learned'\), which this run does not do"),
    ({"steps": 0, "select": "learned"}, "select='learned' trains the selection; give steps > 0"),
    ({"select": "middle"}, "select='middle' is unknown; choose one of learned, first, last, uniform, greedy"),
    ({"strategy": "first"}, "strategy is not an option of compress; choose the selection with select"),
    ({"steps": -1}, "steps=-1 must be >= 0"),
    ({"heigth": 32}, r"unknown option heigth \(did you mean height\?\)"),
    ({"steps": 0, "guidance_scale": -2}, r"guidance_scale=-2.0 must be > 0"),
    ({"steps": 0, "prompts": ["a cat"], "prompts_file": "p.txt"}, "give either prompts or prompts_file, not both"),
])
def test_compress_option_errors_come_before_any_work(options, message):
    with pytest.raises(LinCompressError, match=message):
        lincompress.compress("does/not/exist/model.py", **options)  # never loaded: the options fail first


def test_recover_trains_a_hybrid_made_elsewhere(tmp_path):
    target = recovery_target(depth=4)
    hybrid = Pipeline([passes.FindAttention(), passes.Hybridize()]).run(target).model
    state = lincompress.recover(hybrid, target, select="first", target_linear=0.5, steps=2, samples=1, teacher_steps=2,
                                objective="mse", work_dir=tmp_path, progress=False)
    assert state.model is hybrid and state.selection == ["blocks.0.attn#0", "blocks.1.attn#0"]
    assert [s.name for s in state.recipe] == ["select", "recover"] and state.metrics["recovery"]["steps"] == 2
    with pytest.raises(LinCompressError, match="recover trains a hybridized copy against the original"):
        lincompress.recover(target.model, target, steps=1)
    with pytest.raises(LinCompressError, match="carries no lincompress sites"):
        lincompress.recover(copy.deepcopy(target.model), target, steps=1, progress=False)
    with pytest.raises(LinCompressError, match=r"feature_map='relu' configures hybridization"):
        lincompress.recover(hybrid, target, steps=1, feature_map="relu")
    with pytest.raises(LinCompressError, match=r"frames=9 applies to diffusers pipelines"):
        lincompress.recover(hybrid, target, steps=1, frames=9)  # a target option, refused for a hand-written Target


def test_bench_from_python(repo):
    report = lincompress.bench(repo / "examples/tiny_wan/model.py", targets=[1.0], steps=0, warmup=0, reps=1,
                               device="cpu", feature_map="relu")
    assert [r["variant"] for r in report["rows"]] == ["original", "linear 1"] and report["rows"][1]["num_linear"] == 6
    assert report["settings"]["targets"] == [1.0] and report["rows"][1]["forward_ms"] > 0
    with pytest.raises(LinCompressError, match="artifact and targets are exclusive"):
        lincompress.bench(repo / "examples/tiny_wan/model.py", artifact="somewhere", targets=[0.5])
    with pytest.raises(LinCompressError, match=r"compile=True needs warmup >= 1"):
        lincompress.bench(repo / "examples/tiny_wan/model.py", compile=True, warmup=0)
