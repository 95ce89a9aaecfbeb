"""Pipeline API, registry/entry points, and the hybrid model inside diffusers and torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch

from lincompress import Pipeline, State, passes, registry
from lincompress.attention import SiteRouter, iter_sites
from lincompress.errors import LinCompressError
from lincompress.rewrite import hybridize_model
from zoo import ZOO


def test_pipeline_records_history_and_keeps_original():
    target = ZOO["wan"].build()
    original = copy.deepcopy(target.model.state_dict())
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix()]).run(target)
    assert [h["pass"] for h in state.history] == ["find-attention", "hybridize", "select", "fix"]
    assert state.model is not target.model
    assert all(torch.equal(original[k], v) for k, v in target.model.state_dict().items())
    names = set(state.model.state_dict())
    assert set(original) <= names  # original parameter names survive
    assert type(state.model.blocks[0].attn1).__name__ == "WanAttention"


class _CountSites:
    """A third-party pass: plain object with name + run."""

    name = "count-sites"

    def run(self, state: State) -> State:
        state.metrics["num_sites"] = len(state.sites)
        return state


def test_third_party_pass_in_pipeline_and_registry():
    registry.register("passes", "count-sites", _CountSites)
    assert registry.get("passes", "count-sites") is _CountSites
    state = Pipeline([passes.FindAttention(), registry.get("passes", "count-sites")()]).run(ZOO["handwritten"].build())
    assert state.metrics["num_sites"] == 6


def test_builtin_passes_come_from_entry_points():
    available = registry.available("passes")
    assert available["fix"] is passes.Fix and available["find-attention"] is passes.FindAttention
    with pytest.raises(LinCompressError, match="no pass named 'nope'"):
        registry.get("passes", "nope")


def test_hybrid_under_torch_compile_matches_eager():
    target = ZOO["wan"].build()
    state = passes.FindAttention().run(Pipeline([]).run(target))
    model = copy.deepcopy(target.model)
    hybridize_model(model, state.sites, "hedgehog", init_score=0.5)
    kwargs = target.inputs(1)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**kwargs)[0], model(**kwargs)[0], rtol=1e-5, atol=1e-5)
    out = compiled(**kwargs)[0]
    out.square().mean().backward()
    assert all(site.score_logit.grad is not None for _, site in iter_sites(model))


def test_fixed_transformer_runs_inside_a_diffusers_pipeline():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    target = ZOO["wan"].build()
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(1.0), passes.Fix()]).run(target)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=state.model,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    calls = []
    handle = state.model.blocks[0].attn1.register_forward_hook(lambda m, a, o: calls.append(1))
    prompt = torch.randn(1, 7, 16)
    video = pipe(prompt_embeds=prompt, negative_prompt_embeds=prompt, height=16, width=16, num_frames=5,
                 num_inference_steps=2, guidance_scale=1.0, output_type="pt").frames
    handle.remove()
    assert video.shape[-2:] == (16, 16) and torch.isfinite(video).all()
    assert calls and [n for n, _ in iter_sites(pipe.transformer)] == state.selection


def test_router_leaves_unrouted_calls_alone():
    q = k = v = torch.randn(1, 2, 5, 4)
    with SiteRouter(torch.nn.ModuleDict(), track_patterns=True, num_calls=1):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        attn = (q @ k.transpose(-1, -2) * 0.5).softmax(-1) @ v
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(attn, out)
