"""Checkpoint / resume (bit-exact on CPU), Ctrl-C, the NaN guard, and what training records."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass

import pytest
import torch

from tiny_targets import hybrid_state
from lincompress.recovery.checkpoint import latest_step, load_checkpoint
from lincompress.recovery.objectives import ADM
from lincompress.recovery.selective import SelectiveConfig
from lincompress.recovery.trainer import NonFiniteError, RecoveryConfig, Trainer, TrainingInterrupted

STEPS = 10


@dataclass
class Faulty(ADM):
    """ADM that misbehaves on its ``at``-th call (0-based): interrupt, Ctrl-C, NaN loss or NaN gradients."""

    at: int = -1
    fault: str = "interrupt"
    calls: int = 0

    def loss(self, ctx, batch):
        loss, logs = super().loss(ctx, batch)
        self.calls += 1
        if self.calls - 1 == self.at:
            if self.fault == "interrupt":
                raise KeyboardInterrupt
            if self.fault == "sigint":
                signal.raise_signal(signal.SIGINT)
            if self.fault == "nan_loss":
                loss = loss * float("nan")
            if self.fault == "nan_grad":
                p = next(q for q in ctx.student.parameters() if q.requires_grad)
                loss = loss + (p - p.detach()).abs().sqrt().sum()  # value 0, gradient nan
        return loss, logs


def _trainer(work_dir, objective=None) -> Trainer:
    state = hybrid_state(depth=3)
    config = RecoveryConfig(steps=STEPS, batch_size=2, samples=2, teacher_steps=2, checkpoint_every=3, lr=1e-3)
    return Trainer(state.target, state.model, config, work_dir, selective=SelectiveConfig(target_linear=0.67),
                   objective=objective, progress=False)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.student.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the autouse one; bit-exactness needs the same threads
    try:
        trainer = _trainer(tmp_path_factory.mktemp("full"))
        result = trainer.run()
    finally:
        torch.set_num_threads(threads)
    return _weights(trainer), result, [s.mode for _, s in trainer.sites]


@pytest.mark.parametrize(("fault", "saved_at"), [("interrupt", 6), ("sigint", 7)])
def test_resume_after_interrupt_equals_uninterrupted(uninterrupted, tmp_path, fault, saved_at):
    weights, result, modes = uninterrupted
    with pytest.raises(TrainingInterrupted, match=f"interrupted at step {saved_at}.*--resume"):
        _trainer(tmp_path, Faulty(at=6, fault=fault)).run()
    assert latest_step(tmp_path / "checkpoints") == saved_at
    resumed = _trainer(tmp_path)
    again = resumed.run(resume=True)
    assert again.metrics["resumed_from"] == saved_at
    assert again.selection == result.selection and [s.mode for _, s in resumed.sites] == modes
    got = _weights(resumed)
    assert got.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(got[name], value), name  # bit-exact: same RNG streams, same order of operations
    assert [r["loss"] for r in again.records] == [r["loss"] for r in result.records]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("fault", ["nan_loss", "nan_grad"])
def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, fault):
    trainer = _trainer(tmp_path, Faulty(at=7, fault=fault))
    with pytest.raises(NonFiniteError, match=r"at step 8; training stopped, the last good checkpoint \(step 6\)"):
        trainer.run()
    ckpt = load_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.step == 6
    assert all(torch.isfinite(v).all() for v in ckpt.params.values())
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())  # no nan update was applied


def test_training_records_modified_parameters_and_writes_a_report(uninterrupted, tmp_path):
    _, result, _ = uninterrupted
    assert result.modified_parameters and not any("lincompress_sites" in n for n in result.modified_parameters)
    assert result.metrics["velocity_error_after"] is not None and result.metrics["velocity_error_without_recovery"] is not None
    report = result.report.read_text()
    assert "## Final selection" in report and "selection_scores.png" in report
    assert (result.report.parent / "recovery_loss.png").stat().st_size > 1000
    assert all("scores" in r and "num_linear" in r for r in result.records)
