"""ONNX export: one LinearAttention node per linear site, onnxruntime == PyTorch at two sequence lengths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lincompress import exporters  # noqa: E402
from lincompress.errors import LinCompressError  # noqa: E402
from lincompress.exporters._common import ExportSource  # noqa: E402
from lincompress.exporters.onnx import (  # noqa: E402
    DOMAIN,
    OP_TYPE,
    count_attention_nodes,
    export_onnx,
    linear_attention_function,
)
from lincompress.ops import spec  # noqa: E402
from lincompress.ops.linear_attention import linear_attention_reference  # noqa: E402

ATOL = 1e-4


def _grow_tokens(kwargs: dict) -> dict:
    """Same batch layout, more tokens: +2 rows and 2x columns of latent pixels, batch 3."""
    latent = kwargs["hidden_states"]
    shape = list(latent.shape)
    shape[0], shape[-2], shape[-1] = 3, shape[-2] + 2, shape[-1] * 2
    out = dict(kwargs)
    out["hidden_states"] = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    for key in ("timestep", "encoder_hidden_states"):
        value = kwargs[key]
        out[key] = torch.cat([value, value[:1]]) if value.shape[0] == 2 else value
    return out


def _run_both(state, path, kwargs):
    with torch.no_grad():
        ref = state.model(**kwargs)
    ref = ref[0] if isinstance(ref, tuple) else ref
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: kwargs[i.name].numpy() for i in session.get_inputs()}
    return session.run(None, feeds)[0], ref.numpy()


@pytest.fixture(scope="module")
def hand_export(fixed_state, tmp_path_factory):
    """Hand-written DiT (matmul/softmax attention, relu feature map), exported by the Pipeline step."""
    path = tmp_path_factory.mktemp("hand") / "model.onnx"
    state = fixed_state("handwritten", "relu", extra_steps=(exporters.ONNX(path),))
    return state, path


@pytest.fixture(scope="module")
def wan_export(fixed_wan, tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "model.onnx"
    info = export_onnx(ExportSource.from_state(fixed_wan), path)
    return fixed_wan, path, info


def test_pipeline_step_records_the_file(hand_export):
    state, path = hand_export
    assert state.outputs["onnx"] == path and path.is_file()
    assert state.outputs["onnx_info"].is_file()
    assert state.history[-1]["pass"] == "onnx"


@pytest.mark.parametrize("which", ["hand", "wan"])
def test_checker_and_node_counts(which, hand_export, wan_export, expected_counts):
    state, path = hand_export if which == "hand" else wan_export[:2]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    k, softmax_sites = expected_counts(state)
    assert k >= 1 and softmax_sites >= 1
    counts = count_attention_nodes(model)
    assert counts["linear_attention"] == k
    assert counts["softmax"] == softmax_sites
    nodes = [n for n in model.graph.node if n.op_type == OP_TYPE]
    assert all(n.domain == DOMAIN for n in nodes)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    expected_map = "relu" if which == "hand" else "hedgehog"  # the node applies the site's map itself
    assert attrs == {"feature_map": expected_map.encode(), "eps": pytest.approx(1e-6), "layout": b"bhnd"}
    assert [f.name for f in model.functions] == [OP_TYPE]
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 19), (DOMAIN, 1)}


@pytest.mark.parametrize("which", ["hand", "wan"])
def test_onnxruntime_matches_pytorch_at_two_lengths(which, hand_export, wan_export):
    state, path = hand_export if which == "hand" else wan_export[:2]
    small = state.target.inputs(2)
    large = _grow_tokens(small)
    single = {k: (v[:1] if isinstance(v, torch.Tensor) and v.shape[0] == 2 else v) for k, v in small.items()}
    for kwargs in (small, large, single):  # batch 1 too: the sidecar's minimum for the batch axis is 1
        got, ref = _run_both(state, path, kwargs)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    assert large["hidden_states"].shape[-1] == 2 * small["hidden_states"].shape[-1]


def test_sidecar_records_dynamic_axes(wan_export):
    _, path, info = wan_export
    latent = info["inputs"]["hidden_states"]
    assert set(latent["dynamic"]) == {"0", "2", "3", "4"}  # batch, frames, height, width
    assert latent["example"] == [2, 4, 2, 6, 6]
    assert latent["dynamic"]["0"]["min"] == 1  # batch 1 runs (checked in the onnxruntime test)
    assert info["inputs"]["timestep"]["dynamic"]["0"]["symbol"] == latent["dynamic"]["0"]["symbol"]  # one batch symbol
    model = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and dims[1] == 4


def test_decompose_emits_plain_ops(fixed_wan, tmp_path):
    path = tmp_path / "plain.onnx"
    info = export_onnx(ExportSource.from_state(fixed_wan), path, decompose=True)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert info["attention_nodes"].get("linear_attention", 0) == 0 and info["opset"] == 18
    got, ref = _run_both(fixed_wan, path, _grow_tokens(fixed_wan.target.inputs(2)))
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


def _single_node_model(feature_map: str, layout: str, dtype) -> "onnx.ModelProto":
    from onnx import TensorProto, helper

    elem = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    ios = [helper.make_tensor_value_info(n, elem, [None] * 4) for n in ("q", "k", "v")]
    out = helper.make_tensor_value_info("o", elem, [None] * 4)
    node = helper.make_node(OP_TYPE, ["q", "k", "v"], ["o"], domain=DOMAIN, feature_map=feature_map, eps=1e-3, layout=layout)
    graph = helper.make_graph([node], "one", ios, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(DOMAIN, 1)],
                              functions=[linear_attention_function()])
    model.ir_version = 9
    return model


@pytest.mark.parametrize(("feature_map", "layout", "dtype"),
                         [(f, lay, np.float32) for f, lay in itertools.product(spec.FEATURE_MAP_NAMES, ("bhnd", "bnhd"))]
                         + [("elu1", "bnhd", np.float16), ("hedgehog", "bhnd", np.float16)])
def test_function_body_matches_the_reference(feature_map, layout, dtype):
    """The ONNX function alone, every attribute value, odd sizes, q shorter than k/v."""
    model = _single_node_model(feature_map, layout, dtype)
    onnx.checker.check_model(model, full_check=True)
    g = torch.Generator().manual_seed(0)
    shape = (lambda b, h, n, d: (b, h, n, d)) if layout == "bhnd" else (lambda b, h, n, d: (b, n, h, d))
    q = torch.randn(*shape(2, 3, 5, 7), generator=g)
    k = torch.randn(*shape(2, 3, 11, 7), generator=g)
    v = torch.randn(*shape(2, 3, 11, 4), generator=g)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"q": q.numpy().astype(dtype), "k": k.numpy().astype(dtype), "v": v.numpy().astype(dtype)})[0]
    ref = linear_attention_reference(q, k, v, feature_map, 1e-3, layout).numpy()
    assert got.dtype == dtype and got.shape == ref.shape
    tol = 1e-5 if dtype == np.float32 else 2e-2
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol, rtol=tol)


def test_unexportable_feature_map_is_a_clear_error():
    from lincompress.exporters import onnx as onnx_exporter

    with pytest.raises(LinCompressError, match="feature_map 'softplus'"):
        onnx_exporter._check_attrs("softplus", 1e-6, "bhnd")
    with pytest.raises(LinCompressError, match="opset"):
        onnx_exporter.export_onnx_program(None, decompose=False, opset=18)
