"""Pipeline API: typed State, declared order, recorded recipe, registry; the hybrid inside diffusers and torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch

from lincompress import Pipeline, State, passes, registry
from lincompress.attention import SiteRouter, iter_sites
from lincompress.errors import LinCompressError
from lincompress.pipeline import PipelineError, declare_fact
from lincompress.rewrite import hybridize_model
from zoo import ZOO


def test_pipeline_records_history_and_recipe_and_keeps_original():
    target = ZOO["wan"].build()
    original = copy.deepcopy(target.model.state_dict())
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix()]).run(target)
    assert [h["pass"] for h in state.history] == ["find-attention", "hybridize", "select", "fix"]
    assert [s.name for s in state.recipe] == ["hybridize", "select", "fix"]  # discovery changes nothing: not recorded
    assert state.recipe[0].config == {"feature_map": "hedgehog", "eps": 1e-6, "init_score": 0.9}
    assert len(state.recipe[0].metadata["sites"]) == len(state.sites) == 4
    assert state.recipe[1].metadata == {"selection": state.selection} == state.recipe[2].metadata
    assert state.recipe[0].package == "lincompress"
    assert state.fixed and state.feature_map == "hedgehog" and state.selection_method == "uniform"
    assert state.target_linear == 0.5 and state.facts >= {"sites", "hybrid", "selection", "fixed"}
    assert state.model is not target.model
    assert all(torch.equal(original[k], v) for k, v in target.model.state_dict().items())
    names = set(state.model.state_dict())
    assert set(original) <= names  # original parameter names survive
    assert type(state.model.blocks[0].attn1).__name__ == "WanAttention"


def test_hybridize_never_mutates_the_users_model():
    target = ZOO["handwritten"].build()
    model = target.model
    before = {id(m): (type(m), dict(m.__dict__), dict(m._modules), dict(m._parameters)) for m in model.modules()}
    values = copy.deepcopy(model.state_dict())
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(1.0), passes.Fix()]).run(target)
    assert state.target.model is model and state.model is not model and iter_sites(state.model)
    assert not iter_sites(model)
    for m in model.modules():
        cls, attrs, modules, params = before[id(m)]
        assert type(m) is cls and m._modules == modules and m._parameters == params
        assert all(m.__dict__[k] is v for k, v in attrs.items()) and set(m.__dict__) == set(attrs)
    assert all(torch.equal(values[k], v) for k, v in model.state_dict().items())


class _Spy:
    """A plain third-party pass (name + run, nothing declared) that records whether it ran."""

    name = "spy"

    def __init__(self) -> None:
        self.ran = False

    def run(self, state: State) -> State:
        self.ran = True
        return state


def test_order_is_checked_before_anything_runs():
    spy = _Spy()
    with pytest.raises(PipelineError, match=r"^fix \(pass 3 of 3\) needs a selection of linear sites; put "
                                            r"passes.HeuristicSelect\(...\) or passes.GreedySelect"):
        Pipeline([spy, passes.FindAttention(), passes.Fix()]).run(ZOO["handwritten"].build())
    assert not spy.ran
    with pytest.raises(PipelineError, match=r"select \(pass 2 of 2\) needs a hybridized model; put "
                                            r"passes.Hybridize\(\) before it"):
        Pipeline([passes.FindAttention(), passes.HeuristicSelect()]).run(ZOO["handwritten"].build())


def test_preflight_checks_run_before_anything(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    spy = _Spy()
    with pytest.raises(LinCompressError, match=r"holds files lincompress did not write \(notes.txt\); choose an empty or new out_dir"):
        Pipeline([spy, passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(), passes.Fix(),
                  passes.Save(tmp_path)]).run(ZOO["handwritten"].build())
    assert not spy.ran


def test_a_continued_state_keeps_its_facts():
    target = ZOO["handwritten"].build()
    state = Pipeline([passes.FindAttention(), passes.Hybridize(feature_map="relu")]).run(target)
    state = Pipeline([passes.HeuristicSelect(0.5, "last"), passes.Fix()]).run(state)
    assert state.selection == ["blocks.1.attn#0", "blocks.2.attn#0"] and state.fixed


class _Tag:
    """A third-party pass with its own fact."""

    name = "tag"
    produces = ("tagged",)

    def run(self, state: State) -> State:
        return state


class _NeedsTag(_Tag):
    name = "needs-tag"
    requires = ("tagged",)
    produces = ()


def test_third_party_facts():
    declare_fact("tagged", "a tagged model", "passes_of_mine.Tag()")
    with pytest.raises(PipelineError, match=r"needs-tag \(pass 1 of 1\) needs a tagged model; put "
                                            r"passes_of_mine.Tag\(\) before it"):
        Pipeline([_NeedsTag()]).run(ZOO["handwritten"].build())
    state = Pipeline([_Tag(), _NeedsTag()]).run(ZOO["handwritten"].build())
    assert "tagged" in state.provided and "tagged" in state.facts


class _CountSites:
    """A third-party pass: plain object with name + run."""

    name = "count-sites"

    def run(self, state: State) -> State:
        state.metrics["num_sites"] = len(state.sites)
        return state


def test_third_party_pass_in_pipeline_and_registry():
    registry.register("passes", "count-sites", _CountSites)
    try:
        assert registry.get("passes", "count-sites") is _CountSites
        state = Pipeline([passes.FindAttention(), registry.get("passes", "count-sites")()]).run(ZOO["handwritten"].build())
        assert state.metrics["num_sites"] == 6
    finally:
        registry.unregister("passes", "count-sites")


def test_builtin_passes_are_registered_without_an_install():
    available = registry.available("passes")
    assert available["fix"] is passes.Fix and available["find-attention"] is passes.FindAttention
    assert {"hybridize", "select", "greedy-select", "selective-transfer", "recover", "save", "report"} <= set(available)
    assert registry.BUILTIN["passes"]["recover"] == "lincompress.passes.recover:Recover"
    with pytest.raises(LinCompressError, match="no pass named 'nope'"):
        registry.get("passes", "nope")


def test_pass_configs_are_validated_once_at_construction():
    with pytest.raises(LinCompressError, match=r"strategy='middle' is unknown; choose one of first, last, uniform"):
        passes.HeuristicSelect(0.5, "middle")
    with pytest.raises(LinCompressError, match=r"Hybridize got an unknown argument feature_mpa \(did you mean "
                                               r"feature_map\?\)"):
        passes.Hybridize(feature_mpa="relu")
    with pytest.raises(LinCompressError, match="give either config= or its fields"):
        passes.Hybridize(passes.HybridizeConfig(), feature_map="relu")
    with pytest.raises(LinCompressError, match="got target_linear both by position and by name"):
        passes.HeuristicSelect(0.5, target_linear=0.6)
    assert passes.Hybridize(passes.HybridizeConfig(feature_map="relu")).feature_map == "relu"
    hyb = passes.Hybridize(config=passes.HybridizeConfig(feature_map="elu1"))
    assert hyb.feature_map == "elu1" and hyb.config.to_dict()["feature_map"] == "elu1"
    assert "copy" not in hyb.config.to_dict()  # how to run, not what was made: not recorded


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
