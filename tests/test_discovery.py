"""Discovery on hand-made models that pin down each rule: provenance classes, the eager fallback, include,
call-order checks, errors, FLOPs and the site record format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lincompress import Target
from lincompress.attention import CallOrderError, iter_sites
from lincompress.discovery import SiteInfo, attention_flops, find_attention_sites
from lincompress.errors import LinCompressError, NoAttentionError, TraceError
from lincompress.graph import trace_model
from lincompress.rewrite import fix_model, hybridize_model

DIM, HEADS, TEXT, IMAGE = 16, 2, 5, 12


def _heads(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (HEADS, -1)).transpose(1, 2)


class _Attention(nn.Module):
    """q/k/v projections of one stream and SDPA, like a diffusers ``Attention``."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        out = F.scaled_dot_product_attention(_heads(self.to_q(x)), _heads(self.to_k(ctx)), _heads(self.to_v(ctx)))
        return self.to_out(out.transpose(1, 2).flatten(2))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn, self.mlp = nn.LayerNorm(DIM), _Attention(), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class SingleStream(nn.Module):
    """Text and image concatenated once, outside every block (Flux single-stream style), then image-only blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.img_in, self.txt_in = nn.Linear(4, DIM), nn.Linear(8, DIM)
        self.joint = nn.ModuleList(_Block() for _ in range(2))
        self.image_only = _Block()
        self.cross = _Attention()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        img, txt = self.img_in(image), self.txt_in(text)
        x = torch.cat([txt, img], dim=1)
        for block in self.joint:
            x = block(x)
        img = self.image_only(x[:, TEXT:])
        return img + self.cross(img, txt[:, :1].expand(-1, IMAGE, -1).contiguous())  # same length, other stream


def _target(model: nn.Module, fn) -> Target:
    torch.manual_seed(0)
    return Target(model=model.eval(), example_inputs=fn)


def _single_stream() -> Target:
    torch.manual_seed(0)
    return _target(SingleStream(), lambda b: {"image": torch.randn(b, IMAGE, 4), "text": torch.randn(b, TEXT, 8)})


def _kinds(sites):
    return {s.name: s.kind for s in sites}


@pytest.mark.parametrize("methods", [("fx",), ("eager",)])
def test_concatenation_outside_the_block_is_joint_on_both_paths(methods):
    target = _single_stream()
    traced = trace_model(target.model, target.inputs(1), methods)
    assert traced.method == methods[0]
    assert _kinds(find_attention_sites(target, traced)) == {
        "joint.0.attn#0": "joint", "joint.1.attn#0": "joint",  # after residual adds, still [text; image]
        "image_only.attn#0": "self",  # the image tokens sliced back out
        "cross#0": "cross",  # as many tokens, but keys from another stream
    }


class PackedBuffer(nn.Module):
    """Text and image written slice by slice into one zero buffer (Lumina 2 style), plus RoPE-like writes."""

    def __init__(self) -> None:
        super().__init__()
        self.img_in, self.txt_in, self.attn, self.feature_attn = nn.Linear(4, DIM), nn.Linear(8, DIM), _Attention(), _Attention()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        img, txt = self.img_in(image), self.txt_in(text)
        buffer = img.new_zeros(img.shape[0], TEXT + IMAGE, DIM)
        buffer[:, :TEXT] = txt
        buffer[:, TEXT:] = img
        feats = torch.empty_like(img)  # feature-axis writes of one stream are not a concatenation
        feats[..., 0::2], feats[..., 1::2] = img[..., 1::2], img[..., 0::2]
        return self.attn(buffer)[:, TEXT:] + self.feature_attn(feats)


def test_slice_assignment_into_a_buffer_is_a_concatenation():
    target = _target(PackedBuffer(), lambda b: {"image": torch.randn(b, IMAGE, 4), "text": torch.randn(b, TEXT, 8)})
    traced = trace_model(target.model, target.inputs(1), ("eager",))
    assert _kinds(find_attention_sites(target, traced)) == {"attn#0": "joint", "feature_attn#0": "self"}


class Untraceable(nn.Module):
    """Python control flow on a tensor value: neither torch.fx nor torch.export can build a graph."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.proj = nn.Linear(4, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if h.sum().item() > -1e9:  # data-dependent branch
            for block in self.blocks:
                h = block(h)
        return h


def _untraceable(tokens: int = IMAGE):
    return _target(Untraceable(), lambda b: {"x": torch.randn(b, tokens, 4)})


def test_untraceable_model_is_read_eagerly_and_hybridizes_exactly():
    target = _untraceable()
    traced = trace_model(target.model, target.inputs(1))
    assert traced.method == "eager" and set(traced.fallback_reasons) == {"fx", "export"}
    sites = find_attention_sites(target, traced)
    assert _kinds(sites) == {"blocks.0.attn#0": "self", "blocks.1.attn#0": "self"}
    model = _untraceable().model
    model.load_state_dict(target.model.state_dict())
    hybridize_model(model, sites, "elu1", check_inputs=target.inputs(1))
    for _, site in iter_sites(model):
        site.set_score(1.0)
    for kwargs in (target.inputs(2), {"x": torch.randn(3, 20, 4)}):  # other batch size and token count
        with torch.no_grad():
            torch.testing.assert_close(model(**kwargs), target.model(**kwargs), rtol=0, atol=0)
    fix_model(model, ["blocks.1.attn#0"])
    assert [n for n, _ in iter_sites(model)] == ["blocks.1.attn#0"]


class Windowed(nn.Module):
    """One SDPA call per window of 4 tokens: the number of calls depends on the token count."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = _Windowed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


class _Windowed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in x.split(4, dim=1):
            q, k, v = (_heads(t) for t in self.qkv(chunk).chunk(3, dim=-1))
            outs.append(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        return torch.cat(outs, dim=1)


def test_call_order_that_changes_between_forwards_fails_in_one_line():
    target = _target(Windowed(), lambda b: {"x": torch.randn(b, 8, DIM)})
    sites = find_attention_sites(target)
    assert [s.name for s in sites] == ["attn#0", "attn#1"]
    hybridize_model(target.model, sites, "relu", check_inputs=target.inputs(1))
    with torch.no_grad():
        target.model(**target.inputs(2))  # same token count, another batch: fine
        with pytest.raises(CallOrderError, match=r"^attn made 3 attention calls in one forward, but discovery "
                                                 r"recorded 2") as exc:
            target.model(x=torch.randn(1, 12, DIM))
    assert "\n" not in str(exc.value)


def test_hybridize_checks_the_recorded_call_order_right_away():
    target = _target(Windowed(), lambda b: {"x": torch.randn(b, 8, DIM)})
    sites = find_attention_sites(target)
    with pytest.raises(CallOrderError, match="attn made 1 attention calls"):
        hybridize_model(target.model, sites, "relu", check_inputs={"x": torch.randn(1, 4, DIM)})


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.transpose(1, 2))  # wrong axis: the forward cannot run


class NeitherTracesNorRuns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Broken()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > -1e9:
            for block in self.blocks:
                x = block(x)
        return x


def test_model_that_neither_traces_nor_runs_names_module_and_call():
    target = _target(NeitherTracesNorRuns(), lambda b: {"x": torch.randn(b, IMAGE, DIM)})
    with pytest.raises(TraceError, match=r"could not run NeitherTracesNorRuns: its forward failed in blocks\.1\.proj "
                                         r"\(Linear\) at linear: RuntimeError") as exc:
        find_attention_sites(target)
    assert "\n" not in str(exc.value)


class Chained(nn.Module):
    """An SDPA whose queries are another attention's raw output: no projection to follow."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = _Chained()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


class _Chained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.k, self.v = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _heads(x)
        first = F.scaled_dot_product_attention(h, h, h)
        return F.scaled_dot_product_attention(first, _heads(self.k(x)), _heads(self.v(x))).transpose(1, 2).flatten(2)


def test_unsure_sites_are_reported_and_need_include():
    target = _target(Chained(), lambda b: {"x": torch.randn(b, IMAGE, DIM)})
    sites = find_attention_sites(target)
    first, second = sites
    assert first.sure and first.candidate and first.kind == "self"
    assert not second.sure and not second.candidate and "could not follow" in second.note
    included = find_attention_sites(target, include=["attn#1"])
    assert included[1].included and included[1].candidate
    with pytest.raises(LinCompressError, match=r"^include names sites the model does not have: attn#7"):
        find_attention_sites(target, include=["attn#7"])


class _MHABlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("methods", [("fx",), ("eager",)])
def test_multihead_attention_is_listed_but_never_a_candidate(methods):
    target = _target(_MHABlock(), lambda b: {"x": torch.randn(b, IMAGE, DIM)})
    sites = find_attention_sites(target, trace_model(target.model, target.inputs(1), methods))
    assert [(s.name, s.pattern, s.kind, s.num_heads, s.head_dim, s.q_len) for s in sites] == [
        ("mha#0", "mha", "self", HEADS, DIM // HEADS, IMAGE)]
    assert not sites[0].candidate
    with pytest.raises(NoAttentionError, match="nn.MultiheadAttention"):
        hybridize_model(target.model, sites, "relu")


class _OneAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def test_flops_share_counts_cpu_sdpa_analytically():
    target = _target(_OneAttention(), lambda b: {"x": torch.randn(b, IMAGE, DIM)})
    (site,) = find_attention_sites(target)
    attention = attention_flops(1, HEADS, IMAGE, IMAGE, DIM // HEADS)
    assert site.flops == attention == 4.0 * HEADS * IMAGE * IMAGE * (DIM // HEADS)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        target.model(**target.inputs(1))
    counted = counter.get_total_flops()  # the four projections; CPU SDPA counts as 0
    assert counted == 4 * 2 * IMAGE * DIM * DIM
    assert site.flops_share == pytest.approx(attention / (counted + attention))
    assert attention_flops(1, HEADS, IMAGE, IMAGE, 8, mode="linear") == 2.0 * HEADS * (2 * IMAGE * 64 + IMAGE * 8)


def test_site_records_from_older_versions_load_and_bad_ones_fail_in_one_line():
    old = {"name": "a#0", "owner": "a", "owner_class": "Attention", "call_index": 0, "pattern": "sdpa",
           "kind": "self", "num_heads": 2, "head_dim": 8, "q_len": 4, "kv_len": 4, "flops": 1.0, "flops_share": 0.1,
           "causal": False}
    site = SiteInfo.from_dict(old)
    assert site.candidate and site.sure and site.mask == "" and not site.included
    assert SiteInfo.from_dict(old | {"from_the_future": 1}) == site
    assert SiteInfo.from_dict(site.to_dict()) == site
    with pytest.raises(LinCompressError, match=r"^site record 'a#0' lacks kind, num_heads$"):
        SiteInfo.from_dict({k: v for k, v in old.items() if k not in ("kind", "num_heads")})


class _Bmm(nn.Module):
    """bmm + F.softmax + type_as, another spelling of attention: discovery and the router must agree on it."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t).flatten(0, 1) for t in self.qkv(x).chunk(3, dim=-1))
        probs = F.softmax(torch.bmm(q, k.transpose(1, 2)) / 4.0, dim=-1).type_as(q)
        return torch.bmm(probs, v).unflatten(0, (x.shape[0], HEADS)).transpose(1, 2).flatten(2)


class NestedModel(nn.Module):
    """The root calls SDPA itself around submodules that make attention calls of their own."""

    def __init__(self) -> None:
        super().__init__()
        self.bmm, self.inner = _Bmm(), _Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.bmm(x)
        x = x + self.inner(x)
        return x + F.scaled_dot_product_attention(_heads(x), _heads(x), _heads(x)).transpose(1, 2).flatten(2)


@pytest.mark.parametrize("methods", [("export",), ("eager",)])
def test_discovery_and_router_share_one_vocabulary(methods):
    target = _target(NestedModel(), lambda b: {"x": torch.randn(b, IMAGE, DIM)})
    sites = find_attention_sites(target, trace_model(target.model, target.inputs(1), methods))
    assert [(s.name, s.pattern, s.kind) for s in sites] == [
        ("bmm#0", "matmul_softmax", "self"), ("inner#0", "sdpa", "self"), ("#0", "sdpa", "self")]
    model = NestedModel()
    model.load_state_dict(target.model.state_dict())
    hybridize_model(model, sites, "elu1", check_inputs=target.inputs(1))  # the root's router skips its children's
    kwargs = target.inputs(2)
    for score, equal in ((1.0, True), (0.0, False)):
        for _, site in iter_sites(model):
            site.set_score(score)
        with torch.no_grad():
            assert torch.equal(model(**kwargs), target.model(**kwargs)) is equal
    fix_model(model, ["#0", "bmm#0"])
    with torch.no_grad():
        assert torch.isfinite(model(**kwargs)).all()
