"""Conformance over tiny random-weight diffusers DiTs and a hand-written matmul+softmax DiT.

For every architecture: sites found and classified; hybrid with r=1 reproduces the
original exactly; r=0 equals an independent linear-attention formula; gradients reach
r and the feature maps; the fixed model exports with exactly K linear-attention nodes.
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.nn.functional as F

from lincompress import Pipeline, passes
from lincompress.attention import HybridAttention, iter_sites
from lincompress.export_utils import attention_op_counts, export_model
from lincompress.rewrite import fix_model, hybridize_model
from lincompress.selection import heuristic_selection
from zoo import ZOO

LINEARISABLE = [name for name, entry in ZOO.items() if entry.expected.get("self", 0) + entry.expected.get("joint", 0)]


def _first(output):
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "sample", output)


@pytest.fixture(scope="module", params=list(ZOO))
def found(request):
    entry = ZOO[request.param]
    target = entry.build()
    state = passes.FindAttention().run(Pipeline([]).run(target))
    return entry, target, state


def test_sites_found_and_classified(found):
    entry, _, state = found
    counts = collections.Counter(s.kind for s in state.sites)
    assert dict(counts) == entry.expected, [(s.name, s.kind) for s in state.sites]
    for s in state.sites:
        assert s.num_heads >= 1 and s.head_dim >= 1 and s.q_len > 0 and s.kv_len > 0
        assert 0.0 < s.flops_share < 1.0
    assert sum(s.flops_share for s in state.sites) < 1.0


def _hybrid(found, feature_map="elu1"):
    entry, target, state = found
    if entry.name not in LINEARISABLE:
        pytest.skip(f"{entry.name} has no softmax self-attention (its self-attention is already linear)")
    model = copy.deepcopy(target.model)
    hybridize_model(model, state.sites, feature_map)
    return target, state, model


def test_hybrid_with_r1_equals_original(found):
    target, state, model = _hybrid(found)
    kwargs = target.inputs(2)
    for _, site in iter_sites(model):
        site.set_score(1.0)
    with torch.no_grad():
        torch.testing.assert_close(_first(model(**kwargs)), _first(target.model(**kwargs)), rtol=0, atol=0)


def _independent_linear(site: HybridAttention, q, k, v, softmax_fn, key_mask=None):
    """Linear attention written out directly from the definition, per query (no lincompress op)."""
    squeeze = q.dim() == 3
    if squeeze:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    phi_q = F.elu(q @ site.feature_map_q.weight + site.feature_map_q.bias) + 1
    phi_k = F.elu(k @ site.feature_map_k.weight + site.feature_map_k.bias) + 1
    if key_mask is not None:
        phi_k = phi_k * key_mask.transpose(-1, -2)
    weights = phi_q @ phi_k.transpose(-1, -2)
    out = (weights @ v) / (weights.sum(-1, keepdim=True) + site.eps)
    return out.squeeze(1) if squeeze else out


def test_hybrid_with_r0_equals_independent_linear_attention(found, monkeypatch):
    target, state, model = _hybrid(found)
    kwargs = target.inputs(2)
    for _, site in iter_sites(model):
        site.set_score(0.0)
        with torch.no_grad():  # non-identity maps, so the test sees the projection
            site.feature_map_q.weight.add_(0.05 * torch.randn_like(site.feature_map_q.weight))
            site.feature_map_k.bias.add_(0.05)
    with torch.no_grad():
        ours = _first(model(**kwargs))
        monkeypatch.setattr(HybridAttention, "forward", _independent_linear)
        reference = _first(model(**kwargs))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        original = _first(target.model(**kwargs))
    assert (ours - original).abs().max() > 1e-4  # linear attention really replaced softmax


def test_gradients_reach_scores_and_feature_maps(found):
    target, state, model = _hybrid(found, feature_map="hedgehog")
    for _, site in iter_sites(model):
        site.set_score(0.5)
    _first(model(**target.inputs(1))).square().mean().backward()
    for name, site in iter_sites(model):
        assert site.score_logit.grad is not None and site.score_logit.grad.abs() > 0, name
        assert site.feature_map_q.weight.grad.abs().sum() > 0, name
        assert site.feature_map_k.weight.grad.abs().sum() > 0, name


def test_fixed_model_exports_with_k_linear_nodes(found):
    target, state, model = _hybrid(found)
    candidates = state.candidates
    selection = heuristic_selection(candidates, 0.5, "uniform")
    fix_model(model, selection)
    counts = attention_op_counts(export_model(model, target.inputs(1)))
    softmax_nodes = counts["sdpa"] + counts["softmax"]
    assert counts["linear_attention"] == len(selection) >= 1
    assert softmax_nodes == len(state.sites) - len(selection)
    assert {n for n, _ in iter_sites(model)} == set(selection)
