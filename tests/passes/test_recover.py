"""SelectiveTransfer + Recover (+ GreedySelect, Report) as pipeline passes, and `lincompress optimize` with training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recovery"))
from tiny_targets import recovery_target  # noqa: E402

import lincompress  # noqa: E402
from lincompress import Pipeline, passes  # noqa: E402
from lincompress.cli import main  # noqa: E402
from lincompress.errors import LinCompressError  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def test_selective_transfer_recover_fix_save_report(tmp_path):
    target = recovery_target(depth=4)
    out = tmp_path / "art"
    state = Pipeline([
        passes.FindAttention(), passes.Hybridize(), passes.SelectiveTransfer(target_linear=0.5),
        passes.Recover("adm", steps=10, work_dir=tmp_path / "work", samples=2, teacher_steps=2, batch_size=2,
                       progress=False),
        passes.Fix(), passes.Save(out), passes.Report(),
    ]).run(target)
    assert len(state.selection) == 2 and state.selection_method == "selective_transfer"
    manifest = json.loads((out / "lincompress.json").read_text())
    assert manifest["selection"] == state.selection and manifest["metrics"]["recovery"]["steps"] == 10
    assert manifest["modified_parameters"] == sorted(state.modified_parameters) and state.modified_parameters
    for name in ("report.md", "recovery_loss.png", "selection_scores.png", "metrics.jsonl"):
        assert (out / name).is_file(), name
    # the artifact rebuilds the trained model on the original weights
    fresh = recovery_target(depth=4).model
    lincompress.apply(fresh, out)
    kwargs = target.inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**kwargs), state.model(**kwargs))


def test_recover_trains_a_heuristic_selection_and_keeps_it(tmp_path):
    target = recovery_target(depth=4)
    state = Pipeline([
        passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5, "first"),
        passes.Recover("mse", steps=3, work_dir=tmp_path, samples=2, teacher_steps=2, train="attention",
                       progress=False),
    ]).run(target)
    assert state.selection == ["blocks.0.attn#0", "blocks.1.attn#0"]
    assert state.modified_parameters and all(".attn." in n for n in state.modified_parameters)


class _Spy:
    name = "spy"
    ran = False

    def run(self, state):
        self.ran = True
        return state


def test_report_into_the_artifact_checks_it_before_any_pass_runs(tmp_path):
    """Report() writes where the Save before it writes: a user's report.md there is refused before training."""
    out = tmp_path / "art"
    Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix(),
              passes.Save(out)]).run(recovery_target(depth=2))
    (out / "report.md").write_text("my notes\n")  # the user's file in our artifact directory
    spy = _Spy()
    with pytest.raises(LinCompressError, match=r"report.md was not written by lincompress .* would be overwritten"):
        Pipeline([spy, passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5),
                  passes.Recover("mse", steps=1, samples=1, teacher_steps=2, progress=False), passes.Fix(),
                  passes.Save(out, overwrite=True), passes.Report()]).run(recovery_target(depth=2))
    assert not spy.ran and (out / "report.md").read_text() == "my notes\n"


def test_greedy_select_pass_picks_k_sites():
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.GreedySelect(0.75, points=2)]).run(
        recovery_target(depth=4))
    assert len(state.selection) == 3 and state.selection_method == "greedy"
    assert len(state.metrics["greedy_rounds"]) == 3


def test_user_errors():
    with pytest.raises(LinCompressError, match=r"recover \(pass 4 of 4\) needs a selection.*Recover\(steps > 0\)"):
        Pipeline([passes.FindAttention(), passes.Hybridize(), passes.SelectiveTransfer(0.5),
                  passes.Recover(steps=0)]).run(recovery_target(depth=1))
    with pytest.raises(LinCompressError, match=r"recover \(pass 3 of 3\) needs a selection of linear sites or a "
                                               r"learned-selection setup; put passes.HeuristicSelect"):
        Pipeline([passes.FindAttention(), passes.Hybridize(), passes.Recover(steps=1, progress=False)]).run(
            recovery_target(depth=1))
    with pytest.raises(LinCompressError, match=r"Recover got an unknown argument stesp \(did you mean steps\?\)"):
        passes.Recover(stesp=3)
    with pytest.raises(LinCompressError, match="scheduler="):
        Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5),
                  passes.Recover(steps=1, progress=False)]).run(recovery_target(depth=1, scheduler=False))


def test_cli_optimize_with_recovery_and_resume(repo, tmp_path):
    out = tmp_path / "lin70"
    args = ["optimize", str(repo / "examples/tiny_wan/model.py"), "--target-linear", "0.7", "--out", str(out),
            "--steps", "4", "--samples", "1", "--teacher-steps", "2", "--checkpoint-every", "2", "--quiet"]
    result = CliRunner().invoke(main, [*args, "--keep-work"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "lincompress.json").read_text())
    assert manifest["num_linear"] == 4 and manifest["selection_method"] == "selective_transfer"
    assert (out / "report.md").is_file() and (out / ".lincompress-work" / "checkpoints" / "latest.json").is_file()
    again = CliRunner().invoke(main, args)  # an artifact is there: refused before any training
    assert again.exit_code == 2 and "--overwrite" in again.output
    resumed = CliRunner().invoke(main, [*args, "--resume"])  # finished run: resumes at the end, rewrites the artifact
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "lincompress.json").read_text())["metrics"]["recovery"]["resumed_from"] == 4
