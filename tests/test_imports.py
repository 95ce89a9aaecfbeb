"""The import rule: `import lincompress` loads only the core; exporters (and replaying an artifact whose recipe
includes training steps) never import lincompress.recovery, rich or matplotlib. Checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import lincompress
from lincompress.artifacts import MANIFEST
from lincompress.distill_config import DistillConfig
from lincompress.recovery_config import RecoveryConfig, SelectiveConfig

TRAINING_STACK = ("lincompress.recovery", "rich", "matplotlib")


def _run(code: str, repo) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_import_lincompress_loads_only_the_core(repo):
    modules = _run("""
        import json, sys
        import lincompress
        print(json.dumps(sorted(sys.modules)))
    """, repo)
    heavy = ("lincompress.passes", "lincompress.exporters", "lincompress.recovery", "lincompress.artifacts",
             "lincompress.api", "lincompress.benchmarking", "lincompress.discovery", "lincompress.graph",
             "lincompress.evaluation", "lincompress.commands", "lincompress.cli", "rich", "click", "matplotlib",
             "onnx", "modelopt")
    assert _loaded(modules, heavy) == []
    assert "lincompress.kernels" in modules  # the op's kernels are registered by the core


@pytest.fixture(scope="module")
def artifact_with_training_steps(tmp_path_factory):
    """An artifact whose recipe also holds selective-transfer and recover steps (as a trained run's has)."""
    from pathlib import Path

    root = tmp_path_factory.mktemp("imports")
    model_py = root / "model.py"  # the zoo's hand-written DiT: exports in seconds
    model_py.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                        "from zoo import handwritten as build\n")
    out = root / "art"
    state = lincompress.compress(model_py, target_linear=0.5, steps=0, feature_map="relu", out_dir=out)
    manifest = json.loads((out / MANIFEST).read_text())
    hybridize, select, fix = manifest["recipe"]
    manifest["recipe"] = [
        hybridize, {"pass": "selective-transfer", "package": "lincompress", "config": SelectiveConfig().to_dict(),
                    "metadata": {}},
        {"pass": "recover", "package": "lincompress", "config": RecoveryConfig(steps=10).to_dict(),
         "metadata": {"selection": state.selection}},
        {"pass": "distill", "package": "lincompress", "config": DistillConfig(distill_steps=10).to_dict(),
         "metadata": {"selection": state.selection, "sampler": {"steps": 2, "sigmas": [1.0, 0.5, 0.0]}}}, fix,
    ]
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_exporters_never_import_the_training_stack(repo, artifact_with_training_steps, tmp_path):
    pytest.importorskip("onnxruntime")
    modules = _run(f"""
        import json, sys
        import torch
        import lincompress.exporters, lincompress.exporters.onnx, lincompress.exporters.aoti
        import lincompress.exporters.tensorrt, lincompress.exporters.tensorrt.plugin
        import lincompress.exporters.tensorrt.runtime, lincompress.exporters.tensorrt.builder
        from lincompress.exporters import ONNX, AOTInductor, TensorRT
        from lincompress.exporters._common import ExportSource
        from lincompress.exporters.aoti import load_aoti
        from lincompress.exporters.onnx import export_onnx
        from lincompress.exporters.tensorrt.plugin import LinearAttentionAttrs, launch
        from lincompress.errors import LinCompressError

        source = ExportSource.from_artifact({str(artifact_with_training_steps)!r})  # replays recover's restore too
        assert [s.name for s in lincompress.artifacts.read_artifact(source.artifact_dir).recipe][2:4] == ["recover", "distill"]
        info = export_onnx(source, {str(tmp_path / "model.onnx")!r}, dynamic=False)
        assert info["sampler"]["steps"] == 2, info
        assert info["attention_nodes"]["linear_attention"] == 2, info
        q = k = v = torch.rand(1, 2, 5, 4)
        out = torch.empty(1, 2, 5, 4)
        launch(q, k, v, out, LinearAttentionAttrs("relu", 1e-6, "bhnd"))  # the TensorRT plugin's compute, on CPU
        assert torch.isfinite(out).all()
        try:
            load_aoti({str(tmp_path / "missing.pt2")!r})
        except LinCompressError:
            pass
        print(json.dumps(sorted(sys.modules)))
    """, repo)
    assert "lincompress.exporters.onnx" in modules and "lincompress.passes.recover" in modules
    assert "lincompress.passes.distill" in modules
    assert _loaded(modules, TRAINING_STACK) == []
