"""Site feature maps and ``HybridAttention.linear_branch``: the op gets the projection and the map's name.

Checked against formulas written out here: every site map, with and without key-padding
masks (fused through ``masked_key_fill`` for relu/elu1, applied in PyTorch for Hedgehog),
the unfused path, and Hedgehog sites saved before the map moved into the op.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lincompress.attention import HybridAttention
from lincompress.feature_maps import FEATURE_MAPS, make_feature_map
from lincompress.ops import linear_attention
from lincompress.ops.spec import feature_map_spec

PHI = {  # independent of lincompress.ops.spec
    "relu": F.relu,
    "elu1": lambda x: F.elu(x) + 1,
    "hedgehog": lambda x: torch.cat([torch.softmax(x, -1), torch.softmax(-x, -1)], -1),
}


def _site(feature_map: str, heads: int = 2, dim: int = 5, seed: int = 0) -> HybridAttention:
    torch.manual_seed(seed)
    site = HybridAttention(heads, dim, feature_map=feature_map).double()
    with torch.no_grad():
        for fm in (site.feature_map_q, site.feature_map_k):
            fm.weight.add_(0.3 * torch.randn_like(fm.weight))
            fm.bias.add_(0.1 * torch.randn_like(fm.bias))
    return site


def _expected(site: HybridAttention, q, k, v, keep=None):
    """Per batch: drop the masked keys, then o = phi(q) (phi(K)^T V) / (phi(q) . sum phi(K) + eps)."""
    phi = PHI[site.feature_map_name]
    fq = phi(q @ site.feature_map_q.weight + site.feature_map_q.bias)
    fk = phi(k @ site.feature_map_k.weight + site.feature_map_k.bias)
    outs = []
    for b in range(q.shape[0]):
        kb, vb = fk[b], v[b]
        if keep is not None:
            kb, vb = kb[:, keep[b]], vb[:, keep[b]]
        weights = fq[b] @ kb.transpose(-1, -2)
        outs.append((weights @ vb) / (weights.sum(-1, keepdim=True) + site.eps))
    return torch.stack(outs)


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, n, 5, generator=g, dtype=torch.float64) for n in (6, 9, 9)]


def test_site_maps_are_the_spec_site_maps_and_project_only():
    assert set(FEATURE_MAPS) == set(PHI)
    fm = make_feature_map("hedgehog", 2, 5)
    x = torch.randn(1, 2, 3, 5)
    assert fm(x).shape == x.shape and fm.feature_dim == 10  # the op applies the softmaxes, not the module
    with pytest.raises(ValueError, match="unknown feature map 'gelu'"):
        make_feature_map("gelu", 2, 5)


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_linear_branch_matches_the_formula(feature_map):
    site = _site(feature_map)
    q, k, v = _inputs()
    torch.testing.assert_close(site.linear_branch(q, k, v), _expected(site, q, k, v))


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
@pytest.mark.parametrize("fused", [True, False])
def test_key_padding_mask_drops_keys(feature_map, fused):
    site = _site(feature_map)
    site.feature_map_q.fused = site.feature_map_k.fused = fused
    q, k, v = _inputs(2)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[0, 6:] = False
    keep[1, ::3] = False
    key_mask = keep[:, None, None, :]  # [B, 1, 1, Nk], as key_padding_mask makes it
    torch.testing.assert_close(site.linear_branch(q, k, v, key_mask), _expected(site, q, k, v, keep))


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_masked_call_gradients_reach_the_projections(feature_map):
    q, k, v = _inputs(3)
    keep = torch.rand(2, 9, generator=torch.Generator().manual_seed(0)) > 0.3
    grads = []
    for fused in (True, False):
        site = _site(feature_map)
        site.feature_map_q.fused = site.feature_map_k.fused = fused
        site.linear_branch(q, k, v, keep[:, None, None, :]).square().sum().backward()
        grads.append([p.grad for p in (site.feature_map_q.weight, site.feature_map_k.weight, site.feature_map_k.bias)])
    for a, b in zip(*grads):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)


def test_hedgehog_sites_saved_before_the_fusion_give_the_same_outputs():
    """Stored weights are the projection's W and b; the old branch applied the softmaxes itself and passed identity."""
    site = _site("hedgehog").float()
    state = site.state_dict()
    assert set(state) == {"feature_map_q.weight", "feature_map_q.bias", "feature_map_k.weight", "feature_map_k.bias",
                          "score_logit"}  # fmt: skip
    loaded = HybridAttention(2, 5, feature_map="hedgehog")
    loaded.load_state_dict(state)
    q, k, v = (t.float() for t in _inputs(4))

    def old_features(fm, x):
        z = (torch.matmul(x, fm.weight.to(x.dtype)) + fm.bias.to(x.dtype)).float()
        return torch.cat([torch.softmax(z, dim=-1), torch.softmax(-z, dim=-1)], dim=-1).to(x.dtype)

    old = linear_attention(old_features(loaded.feature_map_q, q), old_features(loaded.feature_map_k, k), v, "identity")
    with torch.no_grad():
        torch.testing.assert_close(loaded.linear_branch(q, k, v), old, rtol=1e-6, atol=1e-6)


def test_masked_key_fill_is_what_the_branch_uses():
    assert feature_map_spec("hedgehog").masked_key_fill is None  # a softmax is never zero: masked calls stay unfused
    assert all(feature_map_spec(n).masked_key_fill is not None for n in ("relu", "elu1"))
