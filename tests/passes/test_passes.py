"""Every built-in recorded pass: restore(config, metadata) rebuilds exactly what convert made."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lincompress import Pipeline, passes
from lincompress.artifacts import replay
from lincompress.attention import iter_sites
from lincompress.pipeline import RecipeStep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recovery"))
from tiny_targets import recovery_target  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = {
    "hybridize": lambda tmp: [passes.Hybridize(feature_map="elu1", init_score=0.6)],
    "select": lambda tmp: [passes.Hybridize(), passes.HeuristicSelect(0.5, "last")],
    "select-sites": lambda tmp: [passes.Hybridize(), passes.HeuristicSelect(sites=["blocks.2.attn#0"])],
    "greedy-select": lambda tmp: [passes.Hybridize(), passes.GreedySelect(0.5, points=2)],
    "selective-transfer": lambda tmp: [passes.Hybridize(), passes.HeuristicSelect(0.25), passes.SelectiveTransfer(0.5)],
    "recover": lambda tmp: [passes.Hybridize(), passes.SelectiveTransfer(0.5),
                            passes.Recover("mse", 2, samples=1, teacher_steps=2, work_dir=tmp, progress=False)],
    "distill": lambda tmp: [passes.Hybridize(), passes.HeuristicSelect(0.5),
                            passes.Distill(student_steps=2, distill_steps=2, samples=1, teacher_steps=2, fake_updates=1,
                                           work_dir=tmp, progress=False)],
    "fix": lambda tmp: [passes.Hybridize(feature_map="relu"), passes.HeuristicSelect(0.75, "first"), passes.Fix()],
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_restore_rebuilds_what_convert_made(name, tmp_path):
    target = recovery_target(depth=4)
    state = Pipeline([passes.FindAttention(), *RECIPES[name](tmp_path)]).run(target)
    assert state.recipe[-1].name == name.replace("select-sites", "select")
    recipe = [RecipeStep.from_dict(step.to_dict()) for step in state.recipe]  # as an artifact stores it
    fresh = replay(recovery_target(depth=4).model, recipe)
    made, rebuilt = iter_sites(state.model), iter_sites(fresh)
    assert [n for n, _ in rebuilt] == [n for n, _ in made]
    assert [s.mode for _, s in rebuilt] == [s.mode for _, s in made]
    assert [s.feature_map_name for _, s in rebuilt] == [s.feature_map_name for _, s in made]
    assert fresh.state_dict().keys() == state.model.state_dict().keys()
    fresh.load_state_dict(state.model.state_dict())
    kwargs = target.inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**kwargs), state.model(**kwargs), rtol=0, atol=0)


def test_select_marks_the_choice_on_the_hybrid():
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5, "first")]).run(
        recovery_target(depth=4))
    assert [s.mode for _, s in iter_sites(state.model)] == ["linear", "linear", "softmax", "softmax"]
    assert not any(s.score_logit.requires_grad for _, s in iter_sites(state.model))
    state = Pipeline([passes.SelectiveTransfer(0.5)]).run(state)  # learning the selection starts from a hybrid again
    assert [s.mode for _, s in iter_sites(state.model)] == ["hybrid"] * 4 and state.selection is None
    assert state.selective.target_linear == 0.5


def test_find_attention_forwards_include_only_when_given(monkeypatch):
    import lincompress.discovery as discovery

    seen = []
    original = discovery.find_attention_sites

    def spy(target, traced=None, **kwargs):
        seen.append(kwargs)
        return original(target, traced)

    monkeypatch.setattr(discovery, "find_attention_sites", spy)
    Pipeline([passes.FindAttention()]).run(recovery_target(depth=1))
    Pipeline([passes.FindAttention(include=["blocks.0.cross#0"])]).run(recovery_target(depth=1))
    assert seen == [{}, {"include": ["blocks.0.cross#0"]}]


def test_discovery_leaves_module_attributes_as_they_were():
    from zoo import ZOO

    target = ZOO["wan"].build()
    marker = []
    target.model.marker = marker  # e.g. ModelOpt keeps its state list on the root module
    before = {name: dict(m.__dict__) for name, m in target.model.named_modules()}
    state = Pipeline([passes.FindAttention()]).run(target)
    assert state.trace_method == "export"  # torch.export (non-strict) swaps list/tuple attributes for copies
    for name, m in target.model.named_modules():
        assert all(m.__dict__[k] is v for k, v in before[name].items())
    assert target.model.marker is marker


def test_hybridize_checks_the_recorded_call_order_at_once():
    """Sites found on 8-token inputs; the target's inputs now have 4 tokens, so a windowed owner makes 1 call, not 2."""
    import dataclasses

    from test_discovery import Windowed

    from lincompress.attention import CallOrderError
    from lincompress.target import Target

    torch.manual_seed(0)
    model = Windowed().eval()
    state = Pipeline([passes.FindAttention()]).run(Target(model=model, example_inputs=lambda b: {"x": torch.randn(b, 8, 16)}))
    Pipeline([passes.Hybridize()]).run(state)  # the same inputs: fine
    state = Pipeline([passes.FindAttention()]).run(Target(model=model, example_inputs=lambda b: {"x": torch.randn(b, 8, 16)}))
    state.target = dataclasses.replace(state.target, example_inputs=lambda b: {"x": torch.randn(b, 4, 16)})
    with pytest.raises(CallOrderError, match="attn made 1 attention calls in one forward, but discovery recorded 2"):
        Pipeline([passes.Hybridize()]).run(state)
    assert not iter_sites(model)  # the user's model (the teacher) is untouched
