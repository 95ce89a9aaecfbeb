"""Artifacts: the recipe round-trips exactly (third-party passes too), old and broken files are handled in one line,
and apply never leaves a model half-converted."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lincompress
from lincompress import Pipeline, passes, registry
from lincompress.artifacts import MANIFEST, WEIGHTS, read_artifact, replay
from lincompress.atomic import sha256_file as _sha256
from lincompress.attention import iter_sites
from lincompress.config import PassConfig, option
from lincompress.errors import ArtifactError
from lincompress.pipeline import RecordedPass, State
from zoo import ZOO


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact") / "hand"
    target = ZOO["handwritten"].build()
    state = Pipeline([
        passes.FindAttention(), passes.Hybridize(feature_map="relu"), passes.HeuristicSelect(0.7, "first"),
    ]).run(target)
    for _, site in iter_sites(state.model):  # stand-in for training: sites differ from their init
        with torch.no_grad():
            site.feature_map_q.weight.add_(0.1 * torch.randn_like(site.feature_map_q.weight))
    state = Pipeline([passes.Fix(), passes.Save(out)]).run(state)
    return target, state, out


def _outputs(model, kwargs):
    with torch.no_grad():
        return model(**kwargs)


def test_save_writes_the_recipe_and_a_summary(saved):
    _, state, out = saved
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format_version"] == 2
    assert [s["pass"] for s in manifest["recipe"]] == ["hybridize", "select", "fix"]
    assert manifest["recipe"][0]["config"] == {"feature_map": "relu", "eps": 1e-6, "init_score": 0.9}
    assert manifest["recipe"][1]["config"] == {"target_linear": 0.7, "strategy": "first", "sites": []}
    assert all(s["package"] == "lincompress" for s in manifest["recipe"])
    assert manifest["selection"] == state.selection == ["blocks.0.attn#0", "blocks.1.attn#0"]
    assert manifest["feature_map"] == "relu" and manifest["num_candidates"] == 3
    assert manifest["selection_method"] == "first" and manifest["target_linear"] == 0.7
    assert manifest["base_model"]["fingerprint"] == state.base_hash
    assert {"torch", "lincompress"} <= set(manifest["versions"])
    assert set(read_artifact(out).weights) == {k for k in state.model.state_dict() if "lincompress_sites" in k}


def test_apply_rebuilds_the_fixed_model_exactly(saved):
    target, state, out = saved
    fresh = copy.deepcopy(ZOO["handwritten"].build().model)
    rebuilt = lincompress.apply(fresh, out)
    kwargs = target.inputs(2)
    torch.testing.assert_close(_outputs(rebuilt, kwargs), _outputs(state.model, kwargs), rtol=0, atol=0)
    assert [n for n, _ in iter_sites(rebuilt)] == state.selection


def test_apply_refuses_a_different_base_model(saved):
    *_, out = saved
    other = ZOO["handwritten"].build().model
    with torch.no_grad():
        other.blocks[0].attn.q.weight.add_(1.0)
    with pytest.raises(ArtifactError, match="different HandWrittenDiT.*pass check_base=False"):
        lincompress.apply(other, out)


def _copy_artifact(out, tmp_path, name="copy"):
    dst = tmp_path / name
    dst.mkdir()
    for file in (MANIFEST, WEIGHTS):
        (dst / file).write_bytes((out / file).read_bytes())
    return dst


def test_format_version_1_still_loads(saved, tmp_path):
    """A manifest exactly as lincompress wrote it before recipes (format 1) is translated to hybridize + fix."""
    target, state, out = saved
    dst = _copy_artifact(out, tmp_path)
    v2 = json.loads((dst / MANIFEST).read_text())
    v1 = {
        "format_version": 1, "base_model": v2["base_model"], "sites": [s.to_dict() for s in state.sites],
        "candidates": v2["candidates"], "selection": v2["selection"], "num_linear": 2, "num_candidates": 3,
        "feature_map": "relu", "eps": 1e-6, "settings": {"target_linear": 0.7, "selection_method": "first", "fixed": True},
        "metrics": {}, "modified_parameters": [], "weights": v2["weights"], "versions": v2["versions"],
    }
    (dst / MANIFEST).write_text(json.dumps(v1))
    artifact = read_artifact(dst)
    assert [s.name for s in artifact.recipe] == ["hybridize", "fix"] and artifact.feature_map == "relu"
    assert len(artifact.sites) == 6 and artifact.candidates == v2["candidates"]
    rebuilt = lincompress.apply(ZOO["handwritten"].build().model, dst)
    kwargs = target.inputs(2)
    torch.testing.assert_close(_outputs(rebuilt, kwargs), _outputs(state.model, kwargs), rtol=0, atol=0)


def test_unknown_format_version_says_how_to_recreate(saved, tmp_path):
    dst = _copy_artifact(saved[2], tmp_path)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["format_version"] = 99
    (dst / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99, this lincompress reads versions 1, 2; re-create"):
        read_artifact(dst)


def test_corrupt_manifest(saved, tmp_path):
    dst = _copy_artifact(saved[2], tmp_path)
    (dst / MANIFEST).write_text("{ not json")
    with pytest.raises(ArtifactError, match="is corrupt"):
        read_artifact(dst)
    dst = _copy_artifact(saved[2], tmp_path, "bad-recipe")
    _rewrite_manifest(dst, lambda m: m["recipe"].append({"config": {}}))
    with pytest.raises(ArtifactError, match="has a malformed recipe"):
        read_artifact(dst)


def test_tampered_weights(saved, tmp_path):
    dst = _copy_artifact(saved[2], tmp_path)
    data = bytearray((dst / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (dst / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        read_artifact(dst)


def test_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not a lincompress artifact"):
        read_artifact(tmp_path)


def test_save_never_clobbers_user_files(saved, tmp_path):
    _, state, out = saved
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not empty and holds no artifact"):
        passes.Save(tmp_path).run(state)
    with pytest.raises(ArtifactError, match="already holds an artifact; pass overwrite=True"):
        passes.Save(out).run(state)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- transactional apply


def _snapshot(model: nn.Module) -> tuple:
    return ([(name, type(m)) for name, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_unchanged(model: nn.Module, snapshot: tuple, kwargs: dict, reference: torch.Tensor) -> None:
    modules, values = snapshot
    assert [(name, type(m)) for name, m in model.named_modules()] == modules
    assert model.state_dict().keys() == values.keys()
    assert all(torch.equal(v, values[k]) for k, v in model.state_dict().items())
    assert not iter_sites(model) and not any(hasattr(m, "lincompress_sites") for m in model.modules())
    torch.testing.assert_close(_outputs(model, kwargs), reference, rtol=0, atol=0)


def _rewrite_manifest(dst, change):
    manifest = json.loads((dst / MANIFEST).read_text())
    change(manifest)
    (dst / MANIFEST).write_text(json.dumps(manifest))


def test_a_broken_artifact_leaves_the_model_exactly_as_it_was(saved, tmp_path):
    target, _, out = saved
    kwargs = target.inputs(1)

    # 1. the recipe names a site the model does not have: fails at the fix step, after hybridize attached sites
    bad_recipe = _copy_artifact(out, tmp_path, "bad-recipe")
    _rewrite_manifest(bad_recipe, lambda m: m["recipe"][2]["metadata"].update(selection=["blocks.9.attn#0"]))
    # 2. a weight with the wrong shape (checksum updated, so only the shape check can catch it)
    bad_shape = _copy_artifact(out, tmp_path, "bad-shape")
    weights = read_artifact(out).weights
    name = next(k for k in weights if k.endswith("feature_map_q.weight"))
    save_file({**weights, name: torch.zeros(3, 3)}, str(bad_shape / WEIGHTS))
    _rewrite_manifest(bad_shape, lambda m: m["weights"].update(sha256=_sha256(bad_shape / WEIGHTS)))
    # 3. weights that name a parameter the recipe does not make
    bad_name = _copy_artifact(out, tmp_path, "bad-name")
    save_file({**weights, "blocks.0.extra.weight": torch.zeros(2)}, str(bad_name / WEIGHTS))
    _rewrite_manifest(bad_name, lambda m: m["weights"].update(sha256=_sha256(bad_name / WEIGHTS)))

    for broken, message in ((bad_recipe, r"recipe step 3 \(fix\) does not fit this model: .*blocks.9.attn#0"),
                            (bad_shape, f"weight {name} has shape \\(3, 3\\)"),
                            (bad_name, "weights name parameters the model does not have \\(blocks.0.extra.weight")):
        model = ZOO["handwritten"].build().model
        snapshot, reference = _snapshot(model), _outputs(model, kwargs)
        with pytest.raises(ArtifactError, match=message) as exc:
            lincompress.apply(model, broken)
        assert "\n" not in str(exc.value)
        _assert_unchanged(model, snapshot, kwargs, reference)


# --------------------------------------------------------------------------- a third-party recorded pass


class _Gain(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


@dataclass
class _GainHeadConfig(PassConfig):
    init: float = option(1.0, help="Initial gain.")
    fail: bool = option(False, help="Make restore fail half-way (for the rollback test).")


class _GainHead(RecordedPass):
    """Wraps the model's head in (head, gain): new parameter names that Save must store and apply must rebuild."""

    name = "gain-head"
    config_class = _GainHeadConfig

    def convert(self, model, config, state: State):
        model.head = nn.Sequential(model.head, _Gain(config.init))
        return model, {"wrapped": "head"}

    @staticmethod
    def restore(model, config, metadata):
        setattr(model, metadata["wrapped"], nn.Sequential(getattr(model, metadata["wrapped"]), _Gain(config.init)))
        if config.fail:
            raise RuntimeError("gain-head could not finish\nsecond line")
        return model


@pytest.fixture
def gain_head():
    registry.register("passes", "gain-head", _GainHead)
    yield _GainHead
    registry.unregister("passes", "gain-head")


def test_a_third_party_pass_is_part_of_the_saved_model(gain_head, tmp_path):
    target = ZOO["handwritten"].build()
    state = Pipeline([passes.FindAttention(), passes.Hybridize(feature_map="elu1"), passes.HeuristicSelect(0.3),
                      gain_head(init=1.0)]).run(target)
    with torch.no_grad():
        state.model.head[1].gain.fill_(2.5)  # as if trained
    state = Pipeline([passes.Fix(), passes.Save(tmp_path / "art")]).run(state)
    manifest = json.loads((tmp_path / "art" / MANIFEST).read_text())
    step = manifest["recipe"][2]
    assert step == {"pass": "gain-head", "package": "test_artifacts", "config": {"init": 1.0, "fail": False},
                    "metadata": {"wrapped": "head"}}
    assert {"head.0.weight", "head.0.bias", "head.1.gain"} <= set(read_artifact(tmp_path / "art").weights)
    rebuilt = lincompress.apply(ZOO["handwritten"].build().model, tmp_path / "art")
    assert float(rebuilt.head[1].gain) == 2.5
    kwargs = target.inputs(2)
    torch.testing.assert_close(_outputs(rebuilt, kwargs), _outputs(state.model, kwargs), rtol=0, atol=0)

    # the same artifact where the pass is not installed: one line naming the pass and its package, model untouched
    registry.unregister("passes", "gain-head")
    model = ZOO["handwritten"].build().model
    snapshot, reference = _snapshot(model), _outputs(model, kwargs)
    with pytest.raises(ArtifactError, match="recipe step 3 uses the pass 'gain-head', which is not installed here; "
                                            "install 'test_artifacts'") as exc:
        lincompress.apply(model, tmp_path / "art")
    assert "\n" not in str(exc.value)
    _assert_unchanged(model, snapshot, kwargs, reference)


def test_a_restore_that_fails_half_way_is_rolled_back(gain_head):
    target = ZOO["handwritten"].build()
    kwargs = target.inputs(1)
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5)]).run(target)
    recipe = [*state.recipe, {"pass": "gain-head", "config": {"fail": True}, "metadata": {"wrapped": "head"}}]
    model = ZOO["handwritten"].build().model
    snapshot, reference = _snapshot(model), _outputs(model, kwargs)
    with pytest.raises(ArtifactError, match=r"recipe step 3 \(gain-head\) failed: RuntimeError: gain-head could not "
                                            r"finish$"):
        replay(model, recipe)
    _assert_unchanged(model, snapshot, kwargs, reference)
    assert [n for n, _ in iter_sites(replay(model, state.recipe))] == [n for n, _ in iter_sites(state.model)]


# --------------------------------------------------------------------------- loading from the recorded model.py


def test_load_and_export_source_build_and_hash_once(tmp_path, repo, monkeypatch):
    import lincompress.atomic as atomic_module
    import lincompress.fingerprint as fingerprint_module
    import lincompress.target as target_module
    from lincompress.exporters._common import ExportSource

    out = tmp_path / "wan"
    target = lincompress.load_target(repo / "examples" / "tiny_wan" / "model.py")
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix(),
                      passes.Save(out)]).run(target)
    model = lincompress.load(out)
    kwargs = target.inputs(1)
    torch.testing.assert_close(_outputs(model, kwargs)[0], _outputs(state.model, kwargs)[0])

    calls = {"build": 0, "sha256": 0, "fingerprint": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(target_module, "load_target", counting("build", target_module.load_target))
    monkeypatch.setattr(atomic_module, "sha256_file", counting("sha256", atomic_module.sha256_file))
    monkeypatch.setattr(fingerprint_module, "model_fingerprint", counting("fingerprint", fingerprint_module.model_fingerprint))
    source = ExportSource.from_artifact(out)
    assert calls == {"build": 1, "sha256": 1, "fingerprint": 1}
    assert source.model is source.target.model and [n for n, _ in iter_sites(source.model)] == state.selection
    torch.testing.assert_close(_outputs(source.model, kwargs)[0], _outputs(state.model, kwargs)[0])
