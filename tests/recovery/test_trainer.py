"""Checkpoint / resume (bit-exact on CPU, same reported numbers), signals, the NaN guard, what training records."""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass

import pytest
import torch

from tiny_targets import hybrid_state
from lincompress.config import ArgumentError
from lincompress.recovery.checkpoint import OptimizerState, TensorDict, latest_step, load_checkpoint
from lincompress.recovery.objectives import ADM
from lincompress.recovery.selective import SelectiveConfig
from lincompress.recovery.trainer import NonFiniteError, RecoveryConfig, Trainer, TrainingInterrupted

# what may differ between an interrupted+resumed run and an uninterrupted one: wall time, where it resumed
RUN_FACTS = ("seconds", "resumed_from")

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
            if self.fault in ("sigint", "sigterm"):
                signal.raise_signal(signal.SIGINT if self.fault == "sigint" else signal.SIGTERM)
            if self.fault == "nan_loss":
                loss = loss * float("nan")
            if self.fault == "nan_grad":
                p = next(q for q in ctx.student.parameters() if q.requires_grad)
                loss = loss + (p - p.detach()).abs().sqrt().sum()  # value 0, gradient nan
        return loss, logs


@dataclass
class FakeScoreADM(ADM):
    """ADM with an auxiliary trainable network and its own optimizer (like a DMD fake-score model).

    Its state reaches checkpoints only through ``state_dict`` / ``load_state_dict``: the trainer
    must save and restore it generically for a resumed run to match an uninterrupted one.
    ``modules()`` names the network, which makes the objective ``stateful``.
    """

    name = "adm"

    def __post_init__(self) -> None:
        super().__post_init__()
        torch.manual_seed(5)
        self.net = torch.nn.Linear(4, 4)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-2)

    def loss(self, ctx, batch):
        loss, logs = super().loss(ctx, batch)
        x = torch.randn(batch, 4, generator=ctx.generator)
        self.opt.zero_grad()
        aux = self.net(x).pow(2).mean()
        aux.backward()
        self.opt.step()
        shift = self.net.weight.sum().detach() * 1e-3  # the student's loss depends on the aux network
        return loss * (1 + shift), {**logs, "aux": aux.item()}

    def modules(self):
        return {"aux": self.net}

    def state_dict(self):
        return {"net": dict(self.net.state_dict()), "optimizer": OptimizerState(self.net, self.opt).state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        OptimizerState(self.net, self.opt).load_state_dict(state["optimizer"])


@dataclass
class FaultyFakeScore(FakeScoreADM):
    at: int = -1
    calls: int = 0

    def loss(self, ctx, batch):
        self.calls += 1
        if self.calls - 1 == self.at:
            signal.raise_signal(signal.SIGTERM)
        return super().loss(ctx, batch)


def _trainer(work_dir, objective=None, target_linear=0.67, **overrides) -> Trainer:
    state = hybrid_state(depth=3)
    settings = dict(steps=STEPS, batch_size=2, samples=2, teacher_steps=2, checkpoint_every=3, lr=1e-3) | overrides
    config = RecoveryConfig(**settings)
    return Trainer(state.target, state.model, config, work_dir, selective=SelectiveConfig(target_linear=target_linear),
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


def _same_metrics(got: dict, want: dict) -> None:
    assert {k: v for k, v in got.items() if k not in RUN_FACTS} == {k: v for k, v in want.items() if k not in RUN_FACTS}


# interrupt: a KeyboardInterrupt inside the objective (nothing but gradients changed yet) checkpoints step 6;
# sigint / sigterm: the signal lets step 7 finish, then checkpoints it
@pytest.mark.parametrize(("fault", "saved_at", "signum"),
                         [("interrupt", 6, signal.SIGINT), ("sigint", 7, signal.SIGINT), ("sigterm", 7, signal.SIGTERM)])
def test_resume_after_interrupt_equals_uninterrupted(uninterrupted, tmp_path, fault, saved_at, signum):
    weights, result, modes = uninterrupted
    with pytest.raises(TrainingInterrupted, match=f"stopped by {signum.name} at step {saved_at}; checkpoint of step "
                                                  f"{saved_at} saved .*resume=True") as stopped:
        _trainer(tmp_path, Faulty(at=6, fault=fault)).run()
    assert stopped.value.exit_code == 128 + signum
    assert latest_step(tmp_path / "checkpoints") == saved_at
    resumed = _trainer(tmp_path)
    again = resumed.run(resume=True)
    assert again.metrics["resumed_from"] == saved_at
    _same_metrics(again.metrics, result.metrics)  # velocity error before / without recovery come from the checkpoint
    assert again.metrics["seconds"] >= 0.5 * result.metrics["seconds"] * saved_at / STEPS  # earlier session counted
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
    params = TensorDict()
    ckpt = load_checkpoint(tmp_path / "checkpoints", {"model": params})
    assert ckpt is not None and ckpt.step == 6
    assert params.tensors.keys() == set(trainer.param_names)
    assert all(torch.isfinite(v).all() for v in params.tensors.values())
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())  # no nan update was applied


def test_training_records_modified_parameters_and_writes_a_report(uninterrupted, tmp_path):
    _, result, _ = uninterrupted
    assert result.modified_parameters and not any("lincompress_sites" in n for n in result.modified_parameters)
    assert result.metrics["velocity_error_after"] is not None and result.metrics["velocity_error_without_recovery"] is not None
    report = result.report.read_text()
    assert "## Final selection" in report and "selection_scores.png" in report
    assert (result.report.parent / "recovery_loss.png").stat().st_size > 1000
    assert all("scores" in r and "num_linear" in r for r in result.records)


def test_an_objectives_own_state_is_checkpointed_and_restored(tmp_path):
    """An objective with an auxiliary network + optimizer: the resumed run equals the uninterrupted one."""
    full = _trainer(tmp_path / "full", FakeScoreADM(), steps=6)
    want = full.run()
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 4"):
        _trainer(tmp_path / "cut", FaultyFakeScore(at=3), steps=6).run()
    again = _trainer(tmp_path / "cut", FakeScoreADM(), steps=6)
    got = again.run(resume=True)
    assert torch.equal(again.objective.net.weight, full.objective.net.weight)
    for name, value in _weights(full).items():
        assert torch.equal(_weights(again)[name], value), name
    _same_metrics(got.metrics, want.metrics)


def test_a_second_signal_mid_step_keeps_the_last_checkpoint_of_a_stateful_objective(tmp_path):
    """Its auxiliary optimizer may have stepped already: saving then would record a half-done step as done."""

    @dataclass
    class TwoSignals(FakeScoreADM):
        calls: int = 0

        def loss(self, ctx, batch):
            loss, logs = super().loss(ctx, batch)  # the auxiliary optimizer has stepped
            self.calls += 1
            if self.calls == 5:
                signal.raise_signal(signal.SIGTERM)  # first: finish the step ...
                signal.raise_signal(signal.SIGTERM)  # second: stop now
            return loss, logs

    with pytest.raises(TrainingInterrupted, match=r"the checkpoint of step 3 .* is kept"):
        _trainer(tmp_path, TwoSignals(), steps=6).run()
    assert latest_step(tmp_path / "checkpoints") == 3


def test_resume_refuses_to_fake_or_discard_work(tmp_path):
    with pytest.raises(ArgumentError, match="nothing to resume: .* holds no checkpoint.*without resume=True"):
        _trainer(tmp_path, steps=2).run(resume=True)
    _trainer(tmp_path, steps=2, checkpoint_every=1).run()
    with pytest.raises(ArgumentError, match=r"holds the checkpoint of an earlier run \(step 2\); pass resume=True "
                                            "to continue it or overwrite=True to start over"):
        _trainer(tmp_path, steps=2).run()
    assert _trainer(tmp_path, steps=3).run(resume="auto").metrics["resumed_from"] == 2  # continue to step 3
    fresh = _trainer(tmp_path, steps=2).run(overwrite=True)
    assert fresh.metrics["resumed_from"] is None and latest_step(tmp_path / "checkpoints") == 2
    assert _trainer(tmp_path / "new", steps=1).run(resume="auto").metrics["resumed_from"] is None
    with pytest.raises(ArgumentError, match="resume='yes' must be False, True or 'auto'"):
        _trainer(tmp_path, steps=1).run(resume="yes")


def test_resume_refuses_a_run_with_other_settings_and_accepts_a_longer_or_slower_one(tmp_path):
    _trainer(tmp_path, steps=2, checkpoint_every=1).run()
    refused = {  # what the run learns from and toward: each changed setting is named with the checkpoint's value
        "target_linear=0.67 (this run: 0.34)": dict(target_linear=0.34),
        "seed=0 (this run: 1)": dict(seed=1),
        "batch_size=2 (this run: 1)": dict(batch_size=1),
        "teacher_steps=2 (this run: 3)": dict(teacher_steps=3),
        "eval_points=16 (this run: 4)": dict(eval_points=4),
    }
    for named, change in refused.items():
        with pytest.raises(ArgumentError, match=rf"was trained with {re.escape(named)}; resume with the same setting "
                                                "or start over with overwrite=True"):
            _trainer(tmp_path, steps=3, **change).run(resume=True)
    assert latest_step(tmp_path / "checkpoints") == 2  # nothing trained by the refused runs
    # a checkpoint written before a setting existed is not refused for it (an older lincompress's)
    trainer = _trainer(tmp_path, steps=3)
    older = {**trainer._trains_toward(), "config": {}}
    older["selective"] = {k: v for k, v in older["selective"].items() if k != "harden_at"}
    trainer._check_same_settings(older, "ckpt")
    # how long, how fast and where it trains may change
    result = _trainer(tmp_path, steps=3, lr=5e-4, grad_clip=0.5, checkpoint_every=2).run(resume=True)
    assert result.metrics["resumed_from"] == 2 and latest_step(tmp_path / "checkpoints") == 3


def test_checkpoints_default_to_a_tenth_of_the_run_and_a_time_limit(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, steps=20, checkpoint_every=None)
    assert trainer.checkpoint_every == 2
    assert _trainer(tmp_path, steps=5, checkpoint_every=None).checkpoint_every == 1
    saved = []
    monkeypatch.setattr("lincompress.recovery.trainer.save_checkpoint", lambda d, step, *a, **k: saved.append(step))
    monkeypatch.setattr("lincompress.recovery.trainer.write_report", lambda work_dir, *a: work_dir / "report.md")
    clock = iter(range(0, 10_000, 100))  # every perf_counter call advances 100 s: a checkpoint is always due by time
    monkeypatch.setattr("lincompress.recovery.trainer.time.perf_counter", lambda: float(next(clock)))
    _trainer(tmp_path / "timed", steps=4, checkpoint_every=100, checkpoint_minutes=1.0).run()
    assert saved == [1, 2, 3, 4]
    saved.clear()
    _trainer(tmp_path / "untimed", steps=4, checkpoint_every=100, checkpoint_minutes=0).run()
    assert saved == [4]  # only the last step


def test_a_shared_cache_is_reused_for_the_same_settings_and_never_overwritten_by_others(tmp_path):
    cache = tmp_path / "cache"
    _trainer(tmp_path / "a", steps=1, cache_dir=str(cache)).run()
    (first,) = cache.glob("teacher-*")
    shard = next(first.glob("shard-*.safetensors"))
    stamp = shard.stat().st_mtime_ns
    _trainer(tmp_path / "b", steps=1, cache_dir=str(cache)).run()  # same teacher and settings: reused as is
    assert shard.stat().st_mtime_ns == stamp
    _trainer(tmp_path / "c", steps=1, cache_dir=str(cache), teacher_steps=3).run()  # other settings: their own
    assert len(list(cache.glob("teacher-*"))) == 2 and shard.stat().st_mtime_ns == stamp
    assert not (tmp_path / "a" / "teacher").exists()


def test_compiled_run_trains_exactly_like_the_eager_one_and_leaves_every_module_eager(uninterrupted, tmp_path):
    """``compile=True`` (aot_eager: dynamo + AOT autograd, no codegen) changes how it runs, not what it trains."""
    from torch._dynamo.utils import counters

    want_weights, want, want_modes = uninterrupted
    graphs = counters["stats"]["unique_graphs"]
    trainer = _trainer(tmp_path, compile=True, compile_backend="aot_eager")
    got = trainer.run()
    assert counters["stats"]["unique_graphs"] > graphs  # the blocks really ran compiled
    assert got.selection == want.selection and [s.mode for _, s in trainer.sites] == want_modes
    weights = _weights(trainer)
    assert weights.keys() == want_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, want_weights[name], rtol=1e-5, atol=1e-6, msg=name)
    for model in (trainer.student, trainer.teacher):
        assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())


@pytest.mark.gpu
def test_compiled_run_on_cuda_with_inductor_matches_the_eager_one(tmp_path):
    """The Triton op inside inductor-compiled blocks, forward and backward, trains as eager does.

    Inductor reorders float sums, and AdamW turns any difference in a near-zero gradient into a
    full-size update of that element, so weights are not compared element-wise: the first step
    (same weights on both paths) must agree closely, the later losses and the selection as a run.
    """
    runs = {}
    for compiled in (False, True):
        trainer = _trainer(tmp_path / str(compiled), steps=4, device="cuda", autocast=False, compile=compiled)
        runs[compiled] = trainer.run()
    want, got = runs[False], runs[True]
    assert got.selection == want.selection
    losses = [[r["loss"] for r in run.records] for run in (want, got)]
    assert len(losses[0]) == len(losses[1]) == 4
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-3)
    assert losses[1] == pytest.approx(losses[0], rel=5e-2)
    assert got.metrics["velocity_error_after"] == pytest.approx(want.metrics["velocity_error_after"], rel=5e-2)
