"""Artifacts round-trip exactly, and refuse corrupt or mismatched files with one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lincompress
from lincompress import Pipeline, passes
from lincompress.artifacts import MANIFEST, WEIGHTS, read_artifact
from lincompress.attention import iter_sites
from lincompress.errors import ArtifactError
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


def test_save_writes_manifest_and_weights(saved):
    _, state, out = saved
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format_version"] == 1
    assert manifest["selection"] == state.selection == ["blocks.0.attn#0", "blocks.1.attn#0"]
    assert manifest["feature_map"] == "relu" and manifest["num_candidates"] == 3
    assert manifest["base_model"]["fingerprint"] == state.base_hash
    assert {"torch", "lincompress"} <= set(manifest["versions"])
    assert set(read_artifact(out).weights) == {k for k in state.model.state_dict() if "lincompress_sites" in k}


def test_apply_rebuilds_the_fixed_model_exactly(saved):
    target, state, out = saved
    fresh = copy.deepcopy(ZOO["handwritten"].build().model)
    rebuilt = lincompress.apply(fresh, out)
    kwargs = target.inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**kwargs), state.model(**kwargs), rtol=0, atol=0)
    assert [n for n, _ in iter_sites(rebuilt)] == state.selection


def test_apply_refuses_a_different_base_model(saved):
    *_, out = saved
    other = ZOO["handwritten"].build().model
    with torch.no_grad():
        other.blocks[0].attn.q.weight.add_(1.0)
    with pytest.raises(ArtifactError, match="different HandWrittenDiT"):
        lincompress.apply(other, out)


def _copy_artifact(out, tmp_path):
    dst = tmp_path / "copy"
    dst.mkdir()
    for name in (MANIFEST, WEIGHTS):
        (dst / name).write_bytes((out / name).read_bytes())
    return dst


def test_corrupt_manifest(saved, tmp_path):
    dst = _copy_artifact(saved[2], tmp_path)
    (dst / MANIFEST).write_text("{ not json")
    with pytest.raises(ArtifactError, match="is corrupt"):
        read_artifact(dst)


def test_wrong_format_version(saved, tmp_path):
    dst = _copy_artifact(saved[2], tmp_path)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["format_version"] = 99
    (dst / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99"):
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
    with pytest.raises(ArtifactError, match="already holds an artifact"):
        passes.Save(out).run(state)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_load_uses_recorded_model_py(tmp_path, repo):
    out = tmp_path / "wan"
    target = lincompress.load_target(repo / "examples" / "tiny_wan" / "model.py")
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix(),
                      passes.Save(out)]).run(target)
    model = lincompress.load(out)
    kwargs = target.inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(model(**kwargs)[0], state.model(**kwargs)[0])
