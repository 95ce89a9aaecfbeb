"""``lincompress export OUT --format onnx|tensorrt|aoti`` on the shipped tiny Wan example."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from lincompress.cli import main
from lincompress.exporters.tensorrt.builder import tensorrt_status


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("cli") / "lin50"
    result = CliRunner().invoke(main, ["optimize", str(repo / "examples/tiny_wan/model.py"), "--target-linear", "0.5",
                                       "--out", str(out), "--steps", "0"])
    assert result.exit_code == 0, result.output
    return out


def _export(out, *args):
    result = CliRunner().invoke(main, ["export", str(out), *args], terminal_width=200)
    result.text = " ".join(result.output.split())
    return result


def test_export_onnx(artifact):
    pytest.importorskip("onnxruntime")
    result = _export(artifact, "--format", "onnx")
    assert result.exit_code == 0, result.output
    info = json.loads((artifact / "model.onnx.json").read_text())
    manifest = json.loads((artifact / "lincompress.json").read_text())
    assert info["attention_nodes"]["linear_attention"] == manifest["num_linear"] == 3
    assert info["attention_nodes"]["softmax"] == 3 + 6  # 3 softmax self-attention + 6 cross-attention sites
    assert "3 LinearAttention, 9 softmax attention nodes" in result.text


def test_export_tensorrt_writes_onnx_and_plugin_and_explains_a_missing_engine(artifact):
    ok, reason = tensorrt_status()
    result = _export(artifact, "--format", "tensorrt", "--profile", "batch=1:1:2", "--profile", "frames=2:3:3")
    assert result.exit_code == 0, result.output
    trt_dir = artifact / "tensorrt"
    assert (trt_dir / "model.onnx").is_file() and (trt_dir / "linear_attention_plugin.py").is_file()
    assert "register_plugin" in (trt_dir / "linear_attention_plugin.py").read_text()
    if ok:
        assert (trt_dir / "model.engine").is_file()
    else:
        assert not (trt_dir / "model.engine").exists()
        assert "TensorRT engine not built" in result.text and reason.split(" (")[0] in result.text
        assert f"lincompress export {artifact} --format tensorrt" in result.text


def test_require_engine_makes_a_missing_tensorrt_an_error(artifact):
    if tensorrt_status()[0]:
        pytest.skip("TensorRT is usable here")
    result = _export(artifact, "--format", "tensorrt", "--require-engine")
    assert result.exit_code == 2 and "cannot build a TensorRT engine" in result.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tensorrt", "--decompose"], "--decompose applies to --format onnx only"),
        (["--format", "onnx", "--profile", "frames=1:2:3"], "--profile applies to --format tensorrt only"),
        (["--format", "tensorrt", "--profile", "frames=1:99:99"], "leaves the range"),
    ],
)
def test_bad_options_are_one_line_errors(artifact, args, message):
    result = _export(artifact, *args)
    assert result.exit_code == 2, result.output
    assert message in result.text


def test_not_an_artifact_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-c", "from lincompress.cli import main; main()", "export", str(tmp_path),
                             "--format", "onnx"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "not a lincompress artifact" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_export_aoti_cpu(artifact):
    import torch

    from lincompress.exporters.aoti import load_aoti
    from lincompress.target import load_target

    result = _export(artifact, "--format", "aoti")
    assert result.exit_code == 0, result.output
    runner = load_aoti(artifact / "model.pt2")
    import lincompress

    model = lincompress.load(artifact)
    from lincompress.artifacts import read_artifact, recorded_model_py

    target = load_target(recorded_model_py(read_artifact(artifact)))  # the path is recorded relative to the artifact
    kwargs = target.inputs(2)
    with torch.no_grad():
        ref = model(**kwargs)[0]
    torch.testing.assert_close(runner(**kwargs)[0], ref, atol=1e-4, rtol=1e-4)
