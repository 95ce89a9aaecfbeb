"""The pieces of multi-process training that need no process group: block rule, training copies, splitting work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recovery"))

from tiny_targets import hybrid_state  # noqa: E402
from lincompress.attention import iter_sites  # noqa: E402
from lincompress.config import ArgumentError  # noqa: E402
from lincompress.distributed.context import DistributedContext  # noqa: E402
from lincompress.distributed.sharding import (  # noqa: E402
    checkpoint_blocks, clip_grad_norm_, reduce_replicated_grads, replicated_parameters, training_copy,
    transformer_blocks,
)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def test_blocks_are_the_repeated_module_list_of_a_plain_model_and_survive_hybridization():
    state = hybrid_state(depth=3)
    assert [p for p, _ in transformer_blocks(state.target.model)] == ["blocks.0", "blocks.1", "blocks.2"]
    assert [p for p, _ in transformer_blocks(state.model)] == ["blocks.0", "blocks.1", "blocks.2"]  # routed owners inside


def test_a_diffusers_model_names_its_blocks_in_no_split_modules():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=8, freq_dim=8, ffn_dim=16, num_layers=2, rope_max_seq_len=16)
    blocks = transformer_blocks(model)
    assert [p for p, _ in blocks] == ["blocks.0", "blocks.1"]
    assert all(type(m).__name__ == "WanTransformerBlock" for _, m in blocks)


def test_a_model_without_repeated_blocks_is_one_unit():
    assert transformer_blocks(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))) == []
    mixed = nn.Module()
    mixed.layers = nn.ModuleList([nn.Linear(2, 2), nn.Conv1d(2, 2, 1)])  # not of one class: not blocks
    assert transformer_blocks(mixed) == []


def test_training_copy_shares_storage_but_not_objects_so_sharding_it_leaves_the_original_alone():
    state = hybrid_state(depth=2)
    original = state.model
    copy = training_copy(original)
    ours, theirs = dict(copy.named_parameters()), dict(original.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, p in ours.items():
        assert p is not theirs[name] and p.data_ptr() == theirs[name].data_ptr()  # a view, no memory
        assert p.requires_grad == theirs[name].requires_grad
    before = {n: t.clone() for n, t in theirs.items()}
    with torch.no_grad():
        for p in ours.values():
            p.data = p.data.to(torch.float64)  # what FSDP's move / shard does to the copy's tensors
    (_, site), (_, their_site) = iter_sites(copy)[0], iter_sites(original)[0]
    site.set_mode("linear")
    assert their_site.mode == "hybrid"
    assert all(t.dtype == torch.float32 and torch.equal(t, before[n]) for n, t in original.named_parameters())


def test_replicated_parameters_are_the_scores_and_0_dim_ones_in_model_order():
    state = hybrid_state(depth=2)
    scores = [site.score_logit for _, site in iter_sites(state.model)]
    assert [id(p) for p in replicated_parameters(state.model)] == [id(p) for p in scores]
    assert replicated_parameters(state.target.model) == []


def test_checkpointed_blocks_give_the_same_gradients_and_keep_their_names():
    torch.manual_seed(0)
    state = hybrid_state(depth=2)
    model = state.model
    x = state.target.inputs(2)

    def grads(m):
        m.zero_grad()
        m(**x).pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    want = grads(model)
    names = [n for n, _ in model.named_parameters()]
    assert checkpoint_blocks(model) == 2
    assert [n for n, _ in model.named_parameters()] == names
    got = grads(model)
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_one_process_context_is_the_identity():
    ctx = DistributedContext()
    assert not ctx.active and ctx.is_main
    assert ctx.broadcast(3) == 3 and ctx.all_gather("a") == ["a"] and ctx.sum([1, 2.5]) == [1.0, 2.5]
    assert ctx.max(4) == 4 and ctx.any(True) and not ctx.any(False)
    assert ctx.mean_logs({"loss": 2.0}) == {"loss": 2.0}
    assert ctx.assign([0, 1, 2]) == [0, 1, 2]
    index, real = ctx.rows(5)
    assert index.tolist() == [0, 1, 2, 3, 4] and real == 5
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 4.0)
    reduce_replicated_grads(ctx, [p])  # nothing to average with
    assert torch.equal(p.grad, torch.full((3,), 4.0))
    norm = clip_grad_norm_(ctx, [p], 1.0)  # torch's own
    assert float(norm) == pytest.approx(48 ** 0.5) and float(p.grad.norm()) == pytest.approx(1.0, rel=1e-5)


def test_work_is_split_so_every_rank_takes_as_many_turns():
    # 5 teacher shards over 3 ranks: 2 turns each, the last rank's second turn is a throw-away one
    shares = [DistributedContext(rank=r, world_size=3).assign([0, 1, 2, 3, 4]) for r in range(3)]
    assert shares == [[0, 3], [1, 4], [2, None]]
    # 7 eval points over 3 ranks: blocks of 3 (padded), 7 real points in all
    blocks = [DistributedContext(rank=r, world_size=3).rows(7) for r in range(3)]
    assert [(i.tolist(), n) for i, n in blocks] == [([0, 1, 2], 3), ([3, 4, 5], 3), ([6, 6, 6], 1)]
    index, real = DistributedContext(rank=2, world_size=3).rows(2)  # fewer points than ranks
    assert real == 0 and index.tolist() == [1]


def test_nproc_without_a_process_group_says_how_to_start_one():
    with pytest.raises(ArgumentError) as err:
        DistributedContext.create(torch.device("cpu"), nproc=2)
    assert "nproc=2 needs 2 processes" in str(err.value) and "torchrun --nproc-per-node 2" in str(err.value)
    assert err.value.render(lambda name: "--" + name.replace("_", "-")).startswith("--nproc 2 needs 2 processes")
    assert not DistributedContext.create(torch.device("cpu"), nproc=1).active
    assert not DistributedContext.create(torch.device("cpu")).active
