"""Hand-edited manifests: every mutation of a real ``lincompress.json`` loads, or fails in one line.

Property-style: from a real artifact (recovered and distilled, so its recipe has every kind of
step and it records a few-step sampler), each mutation deletes one value or replaces it with a
value of another type, anywhere in the tree (keys, recipe steps, configs, site records, weights,
base model, the guidance / sampler / prompt-set / target-options records). Loading must then
either work or raise a one-line ``LinCompressError`` -- never another exception, never a
traceback on the command line -- and a failed ``apply`` leaves the model as it was.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import lincompress
from lincompress.artifacts import MANIFEST, read_artifact
from lincompress.cli import main
from lincompress.errors import LinCompressError
from lincompress.guidance import guidance_from_manifest
from lincompress.target_record import recorded_options

MODEL = str(Path(__file__).parent / "commands" / "tiny_model.py")
BAD_VALUES = (None, "", "bogus", -1, 1.5, True, [], {}, [1], {"x": 1})
SAMPLE = 300  # deep mutations tried (of ~1,900); every top-level and recipe-step-level one is always tried


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("edits") / "art"
    lincompress.compress(MODEL, target_linear=0.67, steps=1, samples=1, teacher_steps=2, student_steps=2,
                         distill_steps=1, distill_objective="adm", progress=False, out_dir=out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert {"guidance", "sampler", "prompts", "target_options"} <= set(manifest)
    assert [s["pass"] for s in manifest["recipe"]] == ["hybridize", "selective-transfer", "recover", "distill", "fix"]
    return out, manifest


def _paths(tree: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if prefix:
        yield prefix
    children = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in children:
        yield from _paths(value, prefix + (key,))


def _mutated(manifest: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    edited = copy.deepcopy(manifest)
    node = edited
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return edited


_DELETE = object()


def _mutations(manifest: dict[str, Any]) -> list[tuple[tuple, Any]]:
    every = [(p, v) for p in _paths(manifest) for v in (_DELETE, *BAD_VALUES)]
    shallow = [(p, v) for p, v in every if len(p) <= 1 or (p[0] == "recipe" and len(p) <= 3)]
    deep = [m for m in every if m not in shallow]
    return shallow + random.Random(0).sample(deep, min(SAMPLE, len(deep)))


def _load(directory: Path, model: torch.nn.Module) -> None:
    """Everything that reads an artifact: the manifest's views, its guidance, sampler and target records, apply."""
    art = read_artifact(directory)
    art.selection, art.candidates, art.sites, art.feature_map, art.recipe, art.base_model, art.sampler  # noqa: B018
    guidance_from_manifest(art.manifest)
    recorded_options(art)
    lincompress.apply(model, directory)


def test_every_edit_of_a_real_manifest_loads_or_fails_in_one_line(artifact, tmp_path):
    source, manifest = artifact
    work = tmp_path / "art"
    work.mkdir()
    for name in ("weights.safetensors",):
        (work / name).write_bytes((source / name).read_bytes())
    original = lincompress.load_target(MODEL).model
    before = {k: v.clone() for k, v in original.state_dict().items()}
    structure = [(n, type(m)) for n, m in original.named_modules()]
    mutations = _mutations(manifest)
    assert len(mutations) > 400
    failures = []
    for path, value in mutations:
        (work / MANIFEST).write_text(json.dumps(_mutated(manifest, path, value)))
        model = copy.deepcopy(original)
        try:
            _load(work, model)
        except LinCompressError as exc:
            if "\n" in str(exc):
                failures.append((path, value, f"message of several lines: {exc}"))
            if [(n, type(m)) for n, m in model.named_modules()] != structure:
                failures.append((path, value, "a failed apply left the model changed"))
        except Exception as exc:  # noqa: BLE001 -- exactly what must not happen
            failures.append((path, "<deleted>" if value is _DELETE else value, f"{type(exc).__name__}: {exc}"))
    assert not failures, f"{len(failures)} edits escaped as non-LinCompressError: {failures[:5]}"
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("base_model"), "lacks 'base_model'"),
    (lambda m: m.pop("weights"), "lacks 'weights'"),
    (lambda m: m["weights"].pop("sha256"), "weights must be an object with a file name inside the artifact"),
    (lambda m: m["weights"].update(file="../../elsewhere.safetensors"), "weights must be an object with a file name"),
    (lambda m: m["recipe"][0]["config"].update(feature_map="cosine"), r"recipe step 1 \(hybridize\) has an invalid config"),
    (lambda m: m["recipe"][0]["metadata"]["sites"][0].pop("kind"), r"metadata.sites\[0\] must be a site record with 'kind'"),
    (lambda m: m["recipe"][0]["metadata"]["sites"][1].update(num_heads="two"), r"sites\[1\].num_heads must be of type int"),
    (lambda m: m["recipe"][0]["metadata"].update(sites="all"), "metadata.sites must be a list of site records"),
    (lambda m: m["recipe"].insert(1, "hybridize"), "recipe step 2 must be an object naming its 'pass'"),
    (lambda m: m["recipe"][1].update(config=[0.5]), r"recipe step 2 \(.*\) config must be an object"),
    (lambda m: m["recipe"][2].update({"pass": "distil"}), "uses the pass 'distil', which is not installed here"),
    (lambda m: m.update(selection="blocks.0.attn#0"), "selection must be a list of site names"),
    (lambda m: m["sampler"].update(steps="two"), "sampler must be a sampler record"),
    (lambda m: m["guidance"].update(student="half"), "guidance must be a guidance record"),
    (lambda m: m.update(prompts={"sha256": 1}), "prompts must be a prompt-set record"),
])
def test_the_cli_refuses_a_hand_edited_manifest_in_one_line(artifact, tmp_path, edit, message):
    import re
    import shutil

    source, manifest = artifact
    work = tmp_path / "art"
    shutil.copytree(source, work)
    edited = copy.deepcopy(manifest)
    edit(edited)
    (work / MANIFEST).write_text(json.dumps(edited))
    result = CliRunner().invoke(main, ["export", str(work), "--format", "onnx", "--model", MODEL])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line and re.search(message, line), line
    assert not (work / "model.onnx").exists()
