"""The op spec is the one vocabulary: every consumer derives its supported set from it, none re-declares it.

Consumers: the reference op, the Triton kernels, the ONNX exporter, the TensorRT plugin and
the site feature maps. The last test makes the one edit a new feature map needs (an entry
in ``spec.FEATURE_MAPS``) in a copy of the package and checks that every consumer accepts it.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lincompress import feature_maps
from lincompress.exporters.tensorrt import plugin
from lincompress.ops import spec

REPO = Path(__file__).resolve().parents[2]
CONSUMERS = [
    "lincompress/ops/linear_attention.py",
    "lincompress/kernels/__init__.py",
    "lincompress/kernels/linear_attention_triton.py",
    "lincompress/feature_maps.py",
    "lincompress/attention.py",
    "exporters/onnx.py",
    "exporters/tensorrt/plugin.py",
    "exporters/tensorrt/builder.py",
]


def test_consumers_support_exactly_the_spec():
    triton_impl = pytest.importorskip("lincompress.kernels.linear_attention_triton")
    fused = {n: s.kernel_id for n, s in spec.FEATURE_MAPS.items() if s.kernel_id is not None}
    assert triton_impl.FEATURE_IDS == fused and len(set(fused.values())) == len(fused)
    assert plugin.FEATURE_MAPS == spec.FEATURE_MAP_NAMES and plugin.LAYOUTS == spec.LAYOUTS
    for name in spec.FEATURE_MAP_NAMES:
        assert plugin.parse_attributes(name, 1e-6, "bnhd").feature_map == name
    assert feature_maps.FEATURE_MAPS == spec.SITE_FEATURE_MAPS == tuple(n for n in spec.FEATURE_MAP_NAMES if n != "identity")


def test_onnx_function_has_one_branch_per_spec_map():
    pytest.importorskip("onnx")
    from lincompress.exporters.onnx import linear_attention_function

    fn = linear_attention_function()
    compared = [bytes(n.attribute[0].t.string_data[0]).decode() for n in fn.node
                if n.op_type == "Constant" and n.output[0].endswith("_str")]  # fmt: skip
    assert sorted(compared) == sorted([*spec.FEATURE_MAP_NAMES[:-1], "bnhd"])  # the last map is the final else


def _string_literals(node: ast.AST) -> list[str]:
    return [e.value for e in getattr(node, "elts", []) if isinstance(e, ast.Constant) and isinstance(e.value, str)]


@pytest.mark.parametrize("path", CONSUMERS)
def test_no_consumer_redeclares_the_vocabulary(path):
    """No tuple/list/set literal of two or more feature-map (or layout) names outside the spec."""
    tree = ast.parse((REPO / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = _string_literals(node)
            assert len(set(names) & set(spec.FEATURE_MAP_NAMES)) < 2, f"{path}:{node.lineno} re-declares feature maps"
            assert len(set(names) & set(spec.LAYOUTS)) < 2, f"{path}:{node.lineno} re-declares layouts"
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            assert len(set(keys) & set(spec.FEATURE_MAP_NAMES)) < 2, f"{path}:{node.lineno} re-declares feature maps"


_NEW_MAP = '''
        FeatureMapSpec(
            "square", "phi(x) = x^2 (added by tests/ops/test_spec.py)",
            phi=lambda x: x * x, vjp=lambda x, g: 2.0 * x * g, onnx=lambda emit, x: emit("Mul", x, x),
        ),
'''

_CHECKS = r'''
import numpy as np, torch
from lincompress.ops import linear_attention, spec
from lincompress.ops.linear_attention import linear_attention_backward_reference, linear_attention_reference
q, k, v = (torch.randn(2, 3, n, 4, dtype=torch.float64) for n in (5, 7, 7))
w = (q * q) @ (k * k).transpose(-1, -2)
torch.testing.assert_close(linear_attention(q, k, v, "square"), (w @ v) / (w.sum(-1, keepdim=True) + 1e-6))
leaves = [t.clone().requires_grad_() for t in (q, k, v)]
g = torch.randn(2, 3, 5, 4, dtype=torch.float64)
want = torch.autograd.grad(linear_attention_reference(*leaves, "square"), leaves, g)
for a, b in zip(linear_attention_backward_reference(g, q, k, v, "square", 1e-6, "bhnd"), want):
    torch.testing.assert_close(a, b)

from lincompress.kernels import linear_attention_triton as lat  # no fused code: CUDA falls back to the reference
assert "square" not in lat.FEATURE_IDS and not lat.supports(q.float(), k.float(), v.float(), "square")

from lincompress.exporters.tensorrt import plugin
out = torch.empty(2, 3, 5, 4, dtype=torch.float64)
plugin.launch(q, k, v, out, plugin.parse_attributes("square", 1e-6, "bhnd"))
torch.testing.assert_close(out, linear_attention_reference(q, k, v, "square"))

from lincompress.attention import HybridAttention
from lincompress.feature_maps import FEATURE_MAPS
assert "square" in FEATURE_MAPS
site = HybridAttention(3, 4, feature_map="square")
torch.testing.assert_close(site.linear_branch(q.float(), k.float(), v.float()),
                           linear_attention_reference(q.float(), k.float(), v.float(), "square"))

import onnx, onnxruntime as ort
from onnx import TensorProto, helper
from lincompress.exporters.onnx import DOMAIN, OP_TYPE, linear_attention_function
ios = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4) for n in ("q", "k", "v")]
node = helper.make_node(OP_TYPE, ["q", "k", "v"], ["o"], domain=DOMAIN, feature_map="square", eps=1e-6, layout="bhnd")
graph = helper.make_graph([node], "g", ios, [helper.make_tensor_value_info("o", TensorProto.FLOAT, [None] * 4)])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(DOMAIN, 1)],
                          functions=[linear_attention_function()])
model.ir_version = 9
onnx.checker.check_model(model, full_check=True)
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
got = session.run(None, {n: t.float().numpy() for n, t in zip("qkv", (q, k, v))})[0]
np.testing.assert_allclose(got, linear_attention_reference(q, k, v, "square").numpy(), rtol=1e-4, atol=1e-5)
print("ok")
'''


def test_a_new_feature_map_is_one_spec_entry(tmp_path):
    pytest.importorskip("onnxruntime")
    for folder in ("lincompress", "exporters", "passes"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec_file = tmp_path / "lincompress" / "ops" / "spec.py"
    text = spec_file.read_text()
    anchor = "    )\n}  # fmt: skip"
    assert text.count(anchor) == 1, "spec.FEATURE_MAPS no longer ends where this test inserts a map"
    spec_file.write_text(text.replace(anchor, textwrap.indent(textwrap.dedent(_NEW_MAP), " " * 8) + anchor))
    proc = subprocess.run([sys.executable, "-c", _CHECKS], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
