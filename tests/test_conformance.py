"""Conformance over every transformer class diffusers exports (tiny configs) and a hand-written DiT.

The class list comes from diffusers itself (``zoo.diffusers_transformer_classes``), so a
class added to diffusers shows up here; one without a tiny config fails until it gets
one (or a stated reason it cannot be built tiny, printed as the skip reason). For every
class: discovery reads it the way ``lincompress inspect`` does and finds the expected
sites and kinds; the eager path classifies exactly as the graph path; inspect's report
renders; the hybrid with r=1 reproduces the original exactly (also at a second
resolution where given); r=0 equals an independent linear-attention formula; gradients
reach r and the feature maps; fixing gives exactly K linear sites, and wherever
torch.export traces the model, exactly K linear-attention nodes and no dead softmax in
the exported graph.
"""

from __future__ import annotations

import collections
import copy
import io
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch.utils._pytree import tree_leaves

from lincompress import Target
from lincompress.attention import HybridAttention, iter_sites
from lincompress.commands.inspect_cmd import render, report
from lincompress.discovery import SiteInfo, find_attention_sites
from lincompress.errors import NoAttentionError
from lincompress.export_utils import attention_op_counts, export_model
from lincompress.graph import TracedGraph, trace_model
from lincompress.rewrite import fix_model, hybridize_model
from lincompress.selection import heuristic_selection
from zoo import ZOO, ZooEntry, conformance_names

@dataclass
class Found:
    entry: ZooEntry
    target: Target
    traced: TracedGraph
    sites: list[SiteInfo]


def _first(output):
    while isinstance(output, (tuple, list)):
        output = output[0]
    return getattr(output, "sample", output)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (and CI shares two cores); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=conformance_names())
def found(request) -> Found:
    entry = ZOO[request.param]
    if entry.missing:
        pytest.fail(entry.reason)
    if entry.build is None:
        pytest.skip(f"{entry.name} cannot be built tiny: {entry.reason}")
    target = entry.build()
    traced = trace_model(target.model, target.inputs(1))
    if not entry.expected:
        with pytest.raises(NoAttentionError):
            find_attention_sites(target, traced)
        return Found(entry, target, traced, [])
    return Found(entry, target, traced, find_attention_sites(target, traced))


def test_sites_found_and_classified(found):
    counts = collections.Counter(s.kind for s in found.sites)
    assert dict(counts) == found.entry.expected, [(s.name, s.kind, s.note) for s in found.sites]
    for s in found.sites:
        assert s.num_heads >= 1 and s.head_dim >= 1 and s.q_len > 0 and s.kv_len > 0, s
        assert 0.0 <= s.flops_share <= 1.0
        assert s.sure, (s.name, s.note)
    assert sum(s.flops_share for s in found.sites) <= 1.0


def test_eager_path_classifies_as_the_graph_path(found):
    if found.traced.method == "eager":
        pytest.skip(f"{found.entry.name} was read eagerly: no graph to compare with")
    if not found.sites:
        pytest.skip(f"{found.entry.name}: {found.entry.note or 'no attention discovery can read'}")
    if found.traced.recording is None:
        pytest.skip(f"{found.entry.name}'s forward cannot run under interception (flex_attention)")
    eager = find_attention_sites(found.target, trace_model(found.target.model, found.target.inputs(1), ("eager",)))

    def key(s: SiteInfo) -> tuple:
        return s.name, s.pattern, s.kind, s.sure, s.mask, s.num_heads, s.head_dim, s.q_len, s.kv_len, s.causal
    assert [key(s) for s in eager] == [key(s) for s in found.sites]
    for graph_site, eager_site in zip(found.sites, eager):
        assert eager_site.flops_share == pytest.approx(graph_site.flops_share, rel=1e-6)


def test_inspect_report_renders(found):
    if not found.sites:
        pytest.skip(f"{found.entry.name}: {found.entry.note or 'no attention discovery can read'}")
    data = report(found.target, found.traced, found.sites)
    out = io.StringIO()
    render(data, Console(file=out, width=200))
    text = out.getvalue()
    assert found.sites[0].name in text and f"read with {found.traced.method}" in text
    assert data["candidate_flops_share"] <= 1.0


@pytest.fixture(scope="module")
def hybrid(found) -> torch.nn.Module:
    """One hybrid per class (elu1 feature maps), shared by the tests below; each sets the scores it needs."""
    if not any(s.candidate for s in found.sites):
        reasons = sorted({f"{s.kind}{'/' + s.mask if s.mask not in ('', 'padding') else ''}"
                          f"{'/causal' if s.causal else ''}" for s in found.sites}) or ["no attention"]
        pytest.skip(f"{found.entry.name} has no candidate site ({', '.join(reasons)}): "
                    f"{found.entry.note or 'nothing to linearise'}")
    model = copy.deepcopy(found.target.model)
    hybridize_model(model, found.sites, "elu1", check_inputs=found.target.inputs(1))
    return model


def test_hybrid_with_r1_equals_original(found, hybrid):
    model = hybrid
    for _, site in iter_sites(model):
        site.set_score(1.0)
    inputs = [found.target.inputs(2)] + ([found.entry.alt_inputs(1)] if found.entry.alt_inputs else [])
    for kwargs in inputs:  # batch 2, and a second resolution: the router's call-order checks run on each
        with torch.no_grad():
            torch.testing.assert_close(_first(model(**kwargs)), _first(found.target.model(**kwargs)), rtol=0, atol=0)


def _independent_linear(site: HybridAttention, q, k, v, softmax_fn, key_mask=None):
    """Linear attention written out directly from the definition, per query (no lincompress op)."""
    squeeze = q.dim() == 3
    if squeeze:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    fq, fk = site.feature_map_q, site.feature_map_k
    phi_q = F.elu(q @ fq.weight.to(q.dtype) + fq.bias.to(q.dtype)) + 1
    phi_k = F.elu(k @ fk.weight.to(k.dtype) + fk.bias.to(k.dtype)) + 1
    if key_mask is not None:
        phi_k = phi_k * key_mask.transpose(-1, -2)
    weights = phi_q @ phi_k.transpose(-1, -2)
    out = (weights @ v) / (weights.sum(-1, keepdim=True) + site.eps)
    return out.squeeze(1) if squeeze else out


def test_hybrid_with_r0_equals_independent_linear_attention(found, hybrid, monkeypatch):
    model = hybrid
    kwargs = found.target.inputs(2)
    for _, site in iter_sites(model):
        site.set_score(0.0)
        with torch.no_grad():  # non-identity maps, so the test sees the projection
            site.feature_map_q.weight.add_(0.05 * torch.randn_like(site.feature_map_q.weight))
            site.feature_map_k.bias.add_(0.05)
    with torch.no_grad():
        ours = _first(model(**kwargs))
        monkeypatch.setattr(HybridAttention, "forward", _independent_linear)
        reference = _first(model(**kwargs))
    torch.testing.assert_close(ours, reference, rtol=found.entry.atol, atol=found.entry.atol)
    with torch.no_grad():
        original = _first(found.target.model(**kwargs))
    assert (ours - original).abs().max() > 1e-6  # linear attention really replaced softmax


def test_gradients_reach_scores_and_feature_maps(found, hybrid):
    model = hybrid
    for _, site in iter_sites(model):
        site.set_score(0.5)
    model.zero_grad()
    outputs = [t for t in tree_leaves(model(**found.target.inputs(1))) if torch.is_tensor(t) and t.is_floating_point()]
    sum(t.square().mean() for t in outputs).backward()  # every output: audio+video models feed sites to both
    for name, site in iter_sites(model):
        assert site.score_logit.grad is not None and site.score_logit.grad.abs() > 0, name
        assert site.feature_map_q.weight.grad.abs().sum() > 0, name
        assert site.feature_map_k.weight.grad.abs().sum() > 0, name


@pytest.fixture(scope="module")
def fixed(found, hybrid) -> tuple[torch.nn.Module, list[str]]:
    model = copy.deepcopy(hybrid)
    candidates = [s for s in found.sites if s.candidate]
    selection = heuristic_selection(candidates, 0.5, "uniform") or [candidates[0].name]
    fix_model(model, selection)
    return model, selection


def test_fix_gives_k_linear_sites(found, fixed):
    model, selection = fixed
    assert {n for n, _ in iter_sites(model)} == set(selection)
    assert all(site.mode == "linear" for _, site in iter_sites(model))
    with torch.no_grad():
        assert torch.isfinite(_first(model(**found.target.inputs(1)))).all()


def test_fixed_model_exports_with_k_linear_nodes(found, fixed):
    if found.traced.method == "eager":
        pytest.skip(f"{found.entry.name} is read eagerly: torch.export cannot trace it")
    if found.entry.no_export:
        pytest.skip(f"{found.entry.name}: {found.entry.no_export}")
    model, selection = fixed
    counts = attention_op_counts(export_model(model, found.target.inputs(1)))
    assert counts["linear_attention"] == len(selection)
    assert counts["sdpa"] + counts["softmax"] == len(found.sites) - len(selection)  # dead softmax branches are gone
