"""Selective transfer: exactly K linear sites at the end, never more than K frozen, progressive freezing; greedy."""

from __future__ import annotations

import pytest
import torch

from tiny_targets import hybrid_state
from lincompress.attention import HybridAttention, iter_sites
from lincompress.recovery.selective import SelectiveConfig, SelectiveRegularizer, greedy_selection
from lincompress.recovery.trainer import RecoveryConfig, Trainer
from lincompress.rewrite import fix_model
from lincompress.selection import num_linear


def _sites(n: int) -> list[tuple[str, HybridAttention]]:
    return [(f"blocks.{i}.attn#0", HybridAttention(1, 2, "relu", init_score=0.9)) for i in range(n)]


def _simulate(reg: SelectiveRegularizer, importance: torch.Tensor, steps: int, lr: float = 0.1) -> list[int]:
    """Train the scores alone against a fake objective in which site i costs importance[i] * (1 - r_i)."""
    params = [s.score_logit for _, s in reg.sites]
    opt = torch.optim.Adam(params, lr=lr)
    counts = []
    for step in range(steps):
        opt.zero_grad()
        live = [(i, s) for i, (n, s) in enumerate(reg.sites) if n not in reg.frozen and not reg.hardened]
        if live:
            sum(importance[i] * (1 - s.score) for i, s in live).backward()
        reg.normalize_objective_grads()
        penalty, _ = reg.penalty(step)
        if penalty is not None:
            penalty.backward()
        opt.step()
        reg.after_step(step + 1)
        counts.append(reg.num_linear_now())
    return counts


@pytest.mark.parametrize("target", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_constraint_ends_at_exactly_k_and_keeps_the_important_sites(target):
    sites = _sites(8)
    importance = torch.tensor([5.0, 0.1, 4.0, 0.2, 3.0, 0.3, 2.0, 0.4])  # odd sites are cheap to linearise
    reg = SelectiveRegularizer(sites, SelectiveConfig(target_linear=target), total_steps=200)
    counts = _simulate(reg, importance, 200)
    k = num_linear(target, 8)
    assert max(counts) <= k  # never more than K frozen along the way
    assert reg.final_selection() == reg.selection and len(reg.selection) == k
    assert sum(site.mode == "linear" for _, site in sites) == k
    assert all(site.mode == "softmax" for name, site in sites if name not in reg.selection)
    cheap = [name for i, (name, _) in enumerate(sites) if importance[i] < 1]
    if k <= 4:  # the learned choice is the cheap sites, not position
        assert set(reg.selection) <= set(cheap)
    else:
        assert set(cheap) <= set(reg.selection)


def test_progressive_freezing_skips_the_softmax_branch_before_the_end():
    sites = _sites(6)
    reg = SelectiveRegularizer(sites, SelectiveConfig(target_linear=0.5, harden_at=1.0), total_steps=300)
    counts = _simulate(reg, torch.tensor([3.0, 0.1, 3.0, 0.1, 3.0, 0.1]), 299)
    assert 0 < counts[150] and reg.frozen and not reg.hardened  # frozen sites before hardening
    for name, site in sites:
        if name in reg.frozen:
            assert site.mode == "linear" and not site.score_logit.requires_grad
            calls = []
            q = k = v = torch.randn(1, 1, 3, 2)
            site(q, k, v, softmax_fn=lambda: calls.append(1) or q)
            assert not calls  # the softmax branch is not computed


def test_regulariser_state_round_trips():
    sites = _sites(4)
    reg = SelectiveRegularizer(sites, SelectiveConfig(target_linear=0.5), total_steps=100)
    _simulate(reg, torch.tensor([1.0, 0.1, 1.0, 0.1]), 100)
    fresh_sites = _sites(4)
    fresh = SelectiveRegularizer(fresh_sites, SelectiveConfig(target_linear=0.5), total_steps=100)
    fresh.load_state_dict(reg.state_dict())
    assert fresh.selection == reg.selection and [s.mode for _, s in fresh_sites] == [s.mode for _, s in sites]


def test_loading_a_hardened_state_keeps_the_scores_the_parameters_brought():
    """Resuming after the harden step: scores come back with the parameters; the regulariser sets only modes."""
    sites = _sites(4)
    reg = SelectiveRegularizer(sites, SelectiveConfig(target_linear=0.5), total_steps=10)
    for (_, site), r in zip(sites, (0.9, 0.3, 0.8, 0.4)):
        site.set_score(r)
    reg.harden(8)  # the two lowest become linear without being frozen by the threshold
    fresh_sites = _sites(4)
    for (_, fresh_site), (_, site) in zip(fresh_sites, sites):
        fresh_site.score_logit.data.copy_(site.score_logit.data)  # what the checkpoint's parameters restore
    SelectiveRegularizer(fresh_sites, SelectiveConfig(target_linear=0.5), total_steps=10).load_state_dict(
        reg.state_dict())
    assert [float(s.score_logit) for _, s in fresh_sites] == [float(s.score_logit) for _, s in sites]
    assert [s.mode for _, s in fresh_sites] == [s.mode for _, s in sites] == ["softmax", "linear", "softmax", "linear"]


@pytest.mark.parametrize("target", [0.25, 0.5, 1.0])
def test_training_with_selective_transfer_fixes_exactly_k(target, tmp_path):
    state = hybrid_state(depth=4)
    config = RecoveryConfig(steps=12, batch_size=2, samples=2, teacher_steps=2, checkpoint_every=100)
    trainer = Trainer(state.target, state.model, config, tmp_path, selective=SelectiveConfig(target_linear=target),
                      progress=False)
    result = trainer.run()
    k = num_linear(target, 4)
    assert len(result.selection) == k
    assert all(r["num_linear"] <= k for r in result.records)
    fix_model(state.model, result.selection)
    assert sorted(name for name, site in iter_sites(state.model) if site.mode == "linear") == sorted(result.selection)
    assert len(iter_sites(state.model)) == k  # softmax sites are gone after Fix


def test_greedy_adds_the_cheapest_site_each_round():
    sites = _sites(5)
    cost = {name: c for (name, _), c in zip(sites, [0.5, 0.1, 0.4, 0.05, 0.3])}

    def error() -> float:  # interacting costs: linear sites add up, plus a penalty for neighbours
        linear = [i for i, (_, s) in enumerate(sites) if s.mode == "linear"]
        return sum(cost[sites[i][0]] for i in linear) + 0.2 * sum(1 for i in linear if i - 1 in linear)

    chosen, rounds = greedy_selection(sites, 3, error)
    assert [r["site"] for r in rounds] == ["blocks.3.attn#0", "blocks.1.attn#0", "blocks.4.attn#0"]
    assert chosen == ["blocks.1.attn#0", "blocks.3.attn#0", "blocks.4.attn#0"]  # model order
    assert all(s.mode == "hybrid" for _, s in sites)  # modes restored
