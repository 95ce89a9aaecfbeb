"""The trainer's data-parallel wiring with one process: micro-batch streams, the global-batch check, the module hook."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tiny_targets import hybrid_state
from lincompress.config import ArgumentError
from lincompress.distributed.context import DistributedContext
from lincompress.recovery.data_parallel import MicroBatchStreams, stream_seed
from lincompress.recovery.objectives import ADM
from lincompress.recovery.selective import SelectiveConfig
from lincompress.recovery.trainer import RecoveryConfig, Trainer


def _trainer(work_dir, objective=None, **overrides) -> Trainer:
    state = hybrid_state(depth=2)
    config = RecoveryConfig(**(dict(steps=4, batch_size=1, samples=1, teacher_steps=2, checkpoint_every=2, lr=1e-3)
                               | overrides))
    return Trainer(state.target, state.model, config, work_dir, selective=SelectiveConfig(target_linear=0.5),
                   objective=objective, progress=False)


def test_slot_0_is_the_seeds_own_generator_and_every_slot_its_own_stream():
    assert stream_seed(7, 0) == 7
    assert len({stream_seed(7, j) for j in range(8)}) == 8 and stream_seed(7, 1) != stream_seed(8, 1)
    one = MicroBatchStreams(7, 1, DistributedContext())
    assert torch.equal(one.generators[0].get_state(), torch.Generator().manual_seed(7).get_state())
    assert one.shared(3) is None  # one micro-batch per step: its own stream decides everything
    two = MicroBatchStreams(7, 2, DistributedContext())
    assert two.slots == 2 and two.local == [0, 1]
    a, b = two.shared(3), two.shared(3)
    assert torch.equal(a.get_state(), b.get_state())  # every micro-batch (and rank) of a step draws the same
    assert not torch.equal(a.get_state(), two.shared(4).get_state())


def test_streams_state_holds_every_slot_and_loads_back():
    streams = MicroBatchStreams(3, 2, DistributedContext())
    streams.capture()
    draws = [torch.rand(2, generator=g) for g in streams.generators]
    state = streams.state_dict()
    assert set(state["streams"]) == {"0", "1"}
    streams.load_state_dict(state)
    assert all(torch.equal(torch.rand(2, generator=g), d) for g, d in zip(streams.generators, draws))
    rank_1_of_2 = MicroBatchStreams(3, 1, DistributedContext(rank=1, world_size=2))
    assert rank_1_of_2.local == [1]
    rank_1_of_2.load_state_dict(state)  # what a rank of a 2-process resume takes: slot 1
    assert torch.equal(torch.rand(2, generator=rank_1_of_2.generators[0]), draws[1])


def test_a_checkpoint_resumes_only_with_the_same_global_batch(tmp_path):
    first = _trainer(tmp_path, grad_accum=2, steps=2)
    first.run()
    with pytest.raises(ArgumentError) as err:
        _trainer(tmp_path, grad_accum=1, steps=4).run(resume=True)
    text = err.value.render(lambda name: "--" + name.replace("_", "-"))
    assert "2 micro-batches per step (1 process x --grad-accum 2)" in text and "here --grad-accum 2 on 1 process," in text
    resumed = _trainer(tmp_path, grad_accum=2, steps=4).run(resume=True)
    assert resumed.metrics["resumed_from"] == 2


def test_the_micro_batches_of_a_step_share_the_adm_stop_index(tmp_path):
    stops = []

    @dataclass
    class Recording(ADM):
        def student_sample(self, ctx, batch):
            state = ctx.shared_generator.get_state()
            stops.append(int(torch.randint(1, 5, (1,), generator=torch.Generator().set_state(state))))
            return super().student_sample(ctx, batch)

    _trainer(tmp_path, objective=Recording(), grad_accum=3, steps=2, samples=0).run()
    assert len(stops) == 6 and stops[0::3] == stops[1::3] == stops[2::3]


def test_an_objectives_own_networks_are_placed_with_the_models(tmp_path):
    @dataclass
    class WithFakeScore(ADM):
        def __post_init__(self):
            super().__post_init__()
            self.fake = torch.nn.Linear(2, 2).double()

        def distributed_modules(self):
            return {"fake_score": self.fake}

    trainer = _trainer(tmp_path, objective=WithFakeScore())
    placed = trainer._modules_to_place()
    assert list(placed) == ["student", "teacher", "objective.fake_score"]
    assert placed["objective.fake_score"] == (trainer.objective.fake, "auxiliary")
    assert placed["teacher"][1] == "frozen" and placed["student"][1] == "trained"
