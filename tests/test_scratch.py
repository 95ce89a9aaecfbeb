"""Recover / Distill without work_dir: the temporary work directory goes after success, stays (named) after a failure."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "recovery"))
from tiny_targets import recovery_target  # noqa: E402

from lincompress import Pipeline, passes  # noqa: E402
from lincompress.recovery.trainer import Trainer, TrainingInterrupted  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """The system's temporary directory, for this test alone."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _steps(*extra) -> list:
    return [passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), *extra]


def _recover(**options) -> passes.Recover:
    return passes.Recover("mse", steps=3, samples=1, teacher_steps=2, checkpoint_every=1, progress=False, **options)


def _ours(root: Path) -> list[Path]:
    return sorted(root.glob("lincompress-*"))  # (torch keeps its own caches there too)


def _kept(root: Path) -> Path:
    [kept] = _ours(root)
    assert kept.name.startswith("lincompress-recover-")
    return kept


def test_success_removes_it_after_the_report_is_copied(tmp_root, tmp_path):
    out = tmp_path / "art"
    state = Pipeline(_steps(_recover(), passes.Fix(), passes.Save(out), passes.Report())).run(recovery_target(depth=2))
    assert _ours(tmp_root) == []  # checkpoints, teacher cache, metrics: all gone
    assert state.outputs["report"] == out / "report.md" and (out / "report.md").is_file()
    assert not {"recovery_dir", "cache_dir"} & set(state.outputs) and state.metrics["recovery"]["steps"] == 3


def test_an_interrupted_run_keeps_it_and_says_how_to_continue_from_it(tmp_root, monkeypatch):
    train_step = Trainer._train_step

    def ctrl_c_in_step_2(self, ctx, step):
        if step == 1:
            signal.raise_signal(signal.SIGINT)  # the step finishes, checkpoints, stops
        return train_step(self, ctx, step)

    monkeypatch.setattr(Trainer, "_train_step", ctrl_c_in_step_2)
    with pytest.raises(TrainingInterrupted) as stopped:
        Pipeline(_steps(_recover())).run(recovery_target(depth=2))
    kept = _kept(tmp_root)
    assert f"checkpoint of step 2 saved in {kept / 'checkpoints'}" in str(stopped.value)
    assert str(stopped.value).endswith(f"run the same command with work_dir='{kept}' and resume=True to continue")
    monkeypatch.setattr(Trainer, "_train_step", train_step)
    state = Pipeline(_steps(_recover(work_dir=kept, resume=True))).run(recovery_target(depth=2))
    assert state.metrics["recovery"]["resumed_from"] == 2
    assert (kept / "checkpoints").is_dir()  # a work_dir the caller names is theirs: kept


class _Boom:
    name = "boom"

    def run(self, state):
        raise RuntimeError("disk full")


def test_a_failure_after_training_keeps_it_resumable_and_names_it(tmp_root):
    with pytest.raises(RuntimeError, match="disk full") as failed:
        Pipeline(_steps(_recover(), _Boom())).run(recovery_target(depth=2))
    kept = _kept(tmp_root)
    assert [f"lincompress: the work of this run is kept in {kept} (checkpoints, teacher cache); pass "
            f"work_dir='{kept}' and resume=True to continue it, or delete it"] == failed.value.__notes__
    state = Pipeline(_steps(_recover(work_dir=kept, resume=True))).run(recovery_target(depth=2))
    assert state.metrics["recovery"]["resumed_from"] == 3  # the finished training, not lost


def test_a_failure_before_any_work_leaves_nothing_behind(tmp_root):
    with pytest.raises(RuntimeError, match="no teacher"):
        target = recovery_target(depth=2)
        target.conditions = lambda batch, generator: (_ for _ in ()).throw(RuntimeError("no teacher"))
        Pipeline(_steps(_recover())).run(target)
    assert _ours(tmp_root) == []


def test_recover_then_distill_leave_nothing_behind(tmp_root):
    fast = dict(samples=1, teacher_steps=2, fake_updates=1, progress=False, compare_without_recovery=False)
    state = Pipeline(_steps(_recover(), passes.Distill(student_steps=2, distill_steps=1, **fast), passes.Fix())).run(
        recovery_target(depth=2))
    assert _ours(tmp_root) == [] and state.metrics["distillation"]["steps"] == 1
    assert not {"recovery_dir", "distill_dir", "cache_dir", "report", "distill_report"} & set(state.outputs)


def _by_hand(target, *steps):
    """Passes run one by one, outside a Pipeline (``passes.X().run(state)``)."""
    from lincompress.pipeline import State

    state = State(target=target, model=target.model)
    for p in steps:
        state = p.run(state)
    return state


def test_a_pass_run_by_hand_removes_its_directory_after_success(tmp_root):
    state = _by_hand(recovery_target(depth=2), *_steps(_recover()))
    assert _ours(tmp_root) == [] and state.scratch == [] and state.metrics["recovery"]["steps"] == 3
    assert not {"recovery_dir", "cache_dir", "report"} & set(state.outputs)


def test_a_pass_run_by_hand_keeps_its_work_after_a_failure_and_names_it(tmp_root, monkeypatch):
    train_step = Trainer._train_step

    def fails_in_step_3(self, ctx, step):
        if step == 2:
            raise RuntimeError("device lost")
        return train_step(self, ctx, step)

    monkeypatch.setattr(Trainer, "_train_step", fails_in_step_3)
    with pytest.raises(RuntimeError, match="device lost") as failed:
        _by_hand(recovery_target(depth=2), *_steps(_recover()))
    kept = _kept(tmp_root)
    assert any(f"work_dir='{kept}' and resume=True" in note for note in failed.value.__notes__)
    monkeypatch.setattr(Trainer, "_train_step", train_step)
    state = _by_hand(recovery_target(depth=2), *_steps(_recover(work_dir=kept, resume=True)))
    assert state.metrics["recovery"]["resumed_from"] == 2 and kept.is_dir()  # named by the caller: theirs
