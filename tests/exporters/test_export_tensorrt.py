"""TensorRT path: every part that runs without TensorRT, and the engine where TensorRT exists.

TensorRT cannot be installed from the registries this project's CI reaches (PyPI's
``tensorrt`` wheels redirect to NVIDIA's index), so the engine tests skip with that
reason here; they run unchanged on a machine with TensorRT >= 10.6 and a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lincompress.errors import LinCompressError
from lincompress.exporters.tensorrt import plugin
from lincompress.exporters.tensorrt.builder import (
    AxisRange,
    axis_names,
    parse_range,
    profile_shapes,
    tensorrt_status,
)
from lincompress.ops.linear_attention import linear_attention_reference

TRT_OK, TRT_REASON = tensorrt_status()
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=f"TensorRT engine tests skipped: {TRT_REASON}")


# --------------------------------------------------------------------------- plugin, TensorRT-free parts


def test_plugin_identity_matches_the_onnx_node():
    from lincompress.exporters.onnx import DOMAIN, DOMAIN_VERSION, OP_TYPE

    assert (plugin.PLUGIN_NAMESPACE, plugin.PLUGIN_NAME, plugin.PLUGIN_VERSION) == (DOMAIN, OP_TYPE, str(DOMAIN_VERSION))
    assert plugin.PLUGIN_ID == "lincompress::LinearAttention"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (("relu", 1e-6, "bhnd"), ("relu", 1e-6, "bhnd")),
        ((b"elu1\x00", np.float32(1e-3), b"bnhd"), ("elu1", np.float32(1e-3), "bnhd")),
        ((np.frombuffer(b"identity", dtype=np.int8), np.array([2e-6], dtype=np.float64), np.array(list(b"bhnd"), dtype=np.uint8)),
         ("identity", 2e-6, "bhnd")),
    ],
)
def test_attribute_parsing_accepts_tensorrt_field_forms(raw, expected):
    attrs = plugin.parse_attributes(*raw)
    assert (attrs.feature_map, attrs.layout) == (expected[0], expected[2])
    assert attrs.eps == pytest.approx(float(expected[1]))


@pytest.mark.parametrize(
    ("raw", "message"),
    [(("softplus", 1e-6, "bhnd"), "feature_map"), (("relu", 0.0, "bhnd"), "eps"), (("relu", float("nan"), "bhnd"), "eps"),
     (("relu", 1e-6, "nhbd"), "layout"), (("relu", "x", "bhnd"), "eps")],
)
def test_attribute_parsing_rejects_bad_values(raw, message):
    with pytest.raises(ValueError, match=message):
        plugin.parse_attributes(*raw)


def test_output_shape_and_dtype_inference():
    assert plugin.output_shape((2, 12, 4096, 128), (2, 12, 333, 64)) == (2, 12, 4096, 64)
    assert plugin.output_shape((2, 4096, 12, 128), (2, 333, 12, 64)) == (2, 4096, 12, 64)  # bnhd
    sym = [object() for _ in range(4)]
    vsym = [object() for _ in range(4)]
    assert plugin.output_shape(sym, vsym) == (sym[0], sym[1], sym[2], vsym[3])  # symbolic dims pass through
    with pytest.raises(ValueError, match="4-D"):
        plugin.output_shape((2, 3, 4), (2, 3, 4, 5))
    t = {n: SimpleNamespace(name=n) for n in ("FLOAT", "HALF", "BF16", "INT8")}
    assert plugin.output_dtype(t["HALF"], t["HALF"], t["HALF"]) is t["HALF"]
    with pytest.raises(ValueError, match="share one type"):
        plugin.output_dtype(t["HALF"], t["FLOAT"], t["HALF"])
    with pytest.raises(ValueError, match="unsupported"):
        plugin.output_dtype(t["INT8"], t["INT8"], t["INT8"])


def test_autotune_combination_lists_the_same_types_for_all_four_ios():
    types, formats = plugin.autotune_combination()
    per_io = [s.strip() for s in types.split(",")]
    assert per_io == ["FP32|FP16|BF16"] * 4 and formats == "LINEAR"


@pytest.mark.parametrize(("feature_map", "layout", "dtype"),
                         [("elu1", "bhnd", torch.float32), ("relu", "bnhd", torch.float32), ("identity", "bhnd", torch.float64),
                          ("hedgehog", "bnhd", torch.float32)])
def test_launch_writes_the_reference_into_the_output_buffer(feature_map, layout, dtype):
    g = torch.Generator().manual_seed(0)
    shape = (lambda n, d: (2, 3, n, d)) if layout == "bhnd" else (lambda n, d: (2, n, 3, d))
    q, k, v = (torch.randn(*shape(n, d), generator=g, dtype=dtype) for n, d in ((9, 8), (13, 8), (13, 5)))
    out = torch.full(plugin.output_shape(q.shape, v.shape), float("nan"), dtype=dtype)
    attrs = plugin.parse_attributes(feature_map, 1e-4, layout)
    plugin.launch(q, k, v, out, attrs, stream=None)
    torch.testing.assert_close(out, linear_attention_reference(q, k, v, feature_map, 1e-4, layout))


def test_launch_checks_shapes():
    q = torch.randn(2, 3, 9, 8)
    k = torch.randn(2, 3, 13, 8)
    v = torch.randn(2, 3, 12, 5)
    attrs = plugin.parse_attributes("relu", 1e-6, "bhnd")
    with pytest.raises(ValueError, match="same number of tokens"):
        plugin.launch(q, k, v, torch.empty(2, 3, 9, 5), attrs)
    with pytest.raises(ValueError, match="output buffer"):
        plugin.launch(q, k, k[..., :5], torch.empty(2, 3, 9, 4), attrs)


def test_cuda_array_interface_views_half_types_as_integers():
    src = {"shape": (2, 3), "strides": None, "data": (1234, False), "typestr": "<V2", "version": 3}
    for dtype, typestr in ((torch.bfloat16, "<i2"), (torch.float16, "<i2"), (torch.float32, "<i4")):
        out = plugin.cuda_array_interface_for_torch(src, dtype)
        assert out["typestr"] == typestr and out["data"] == (1234, False) and out["shape"] == (2, 3)
    assert src["typestr"] == "<V2"  # not mutated


def test_register_plugin_reports_missing_tensorrt():
    if TRT_OK:
        assert plugin.register_plugin() is True
    else:
        try:
            import tensorrt.plugin  # noqa: F401
        except ImportError:
            assert plugin.register_plugin() is False


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_launch_on_gpu_side_stream_through_tensorrt_style_views(dtype):
    """What the plugin's enqueue does, minus TensorRT: raw-pointer views (``as_torch``) and an external stream."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 12, n, 64, device="cuda", dtype=dtype, generator=g) for n in (1000, 1000, 1000))
    out = torch.full((2, 12, 1000, 64), float("nan"), device="cuda", dtype=dtype)
    name = {torch.bfloat16: "BF16", torch.float16: "HALF", torch.float32: "FLOAT"}[dtype]

    def trt_like(t):  # a tensorrt.plugin.Tensor stand-in: dtype name + a CUDA array interface with an opaque type
        iface = {"shape": tuple(t.shape), "strides": None, "data": (t.data_ptr(), False), "typestr": "<V2", "version": 2}
        return SimpleNamespace(dtype=SimpleNamespace(name=name), __cuda_array_interface__=iface)

    views = [plugin.as_torch(trt_like(t)) for t in (q, k, v, out)]
    assert all(a.data_ptr() == b.data_ptr() and a.dtype == dtype for a, b in zip(views, (q, k, v, out)))
    stream = torch.cuda.Stream()
    torch.cuda.current_stream().synchronize()
    plugin.launch(*views, plugin.parse_attributes("elu1", 1e-6, "bhnd"), stream=stream.cuda_stream)
    stream.synchronize()
    ref = linear_attention_reference(q.float(), k.float(), v.float(), "elu1", 1e-6, "bhnd")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


# --------------------------------------------------------------------------- profiles


def _inputs() -> dict:
    """An ONNX sidecar's ``inputs`` for a Wan-like model: batch shared, frames/height/width on the latent."""
    return {
        "hidden_states": {"shape": ["s0", 16, "s1", "s2", "s3"], "example": [2, 16, 3, 8, 8], "dtype": "float32",
                          "dynamic": {"0": {"symbol": "s0", "min": 2, "max": None}, "2": {"symbol": "s1", "min": 1, "max": 32},
                                      "3": {"symbol": "s2", "min": 2, "max": 65}, "4": {"symbol": "s3", "min": 2, "max": 65}}},
        "timestep": {"shape": ["s0"], "example": [2], "dtype": "float32", "dynamic": {"0": {"symbol": "s0", "min": 2, "max": None}}},
        "encoder_hidden_states": {"shape": ["s0", 7, 16], "example": [2, 7, 16], "dtype": "float32",
                                  "dynamic": {"0": {"symbol": "s0", "min": 2, "max": None}}},
    }


def test_axis_names():
    assert axis_names(_inputs()) == {"s0": "batch", "s1": "frames", "s2": "height", "s3": "width"}
    image = {"hidden_states": {"shape": ["s0", 4, "s1", "s2"], "example": [2, 4, 8, 8],
                               "dynamic": {"0": {"symbol": "s0"}, "2": {"symbol": "s1"}, "3": {"symbol": "s2"}}}}
    assert axis_names(image) == {"s0": "batch", "s1": "height", "s2": "width"}


def test_default_profile_spans_proved_minimum_to_example():
    shapes = profile_shapes(_inputs())
    assert shapes["hidden_states"] == ((2, 16, 1, 2, 2), (2, 16, 3, 8, 8), (2, 16, 3, 8, 8))
    assert shapes["timestep"] == ((2,), (2,), (2,))  # batch min is what torch.export proved (2)
    assert shapes["encoder_hidden_states"][2] == (2, 7, 16)


def test_profile_overrides_apply_to_every_input_sharing_the_axis():
    shapes = profile_shapes(_inputs(), {"batch": "2:2:4", "frames": "1:21:21", "height": AxisRange(8, 60, 60), "width": "64"})
    assert shapes["hidden_states"] == ((2, 16, 1, 8, 64), (2, 16, 21, 60, 64), (4, 16, 21, 60, 64))
    assert shapes["timestep"] == ((2,), (2,), (4,))
    assert shapes["encoder_hidden_states"] == ((2, 7, 16), (2, 7, 16), (4, 7, 16))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"frames": "1:40:40"}, "leaves the range"), ({"batch": "1:2:2"}, "leaves the range"),
     ({"channels": "4"}, "no dynamic axis named channels"), ({"height": "9:3:12"}, "min <= opt <= max")],
)
def test_profile_overrides_are_validated(overrides, message):
    with pytest.raises(LinCompressError, match=message):
        profile_shapes(_inputs(), overrides)


def test_parse_range_forms():
    assert parse_range("7") == AxisRange(7, 7, 7)
    assert parse_range("1:9") == AxisRange(1, 9, 9)
    assert parse_range("1:4:9") == AxisRange(1, 4, 9)
    with pytest.raises(LinCompressError, match="bad profile range"):
        parse_range("1:2:3:4")


# --------------------------------------------------------------------------- ONNX prepared for TensorRT


def test_engine_input_strips_only_the_function_body(tmp_path):
    onnx = pytest.importorskip("onnx")
    from lincompress.exporters.onnx import DOMAIN, OP_TYPE, linear_attention_function
    from lincompress.exporters.tensorrt.builder import onnx_bytes_for_tensorrt

    h = onnx.helper
    node = h.make_node(OP_TYPE, ["q", "k", "v"], ["o"], domain=DOMAIN, feature_map="elu1", eps=1e-6, layout="bhnd")
    ios = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 3, 4]) for n in ("q", "k", "v")]
    graph = h.make_graph([node], "g", ios, [h.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1, 2, 3, 4])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 19), h.make_opsetid(DOMAIN, 1)],
                         functions=[linear_attention_function()])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    stripped = onnx.load_from_string(onnx_bytes_for_tensorrt(path))
    assert not stripped.functions
    assert [(n.domain, n.op_type) for n in stripped.graph.node] == [(DOMAIN, OP_TYPE)]
    assert {a.name for a in stripped.graph.node[0].attribute} == {"feature_map", "eps", "layout"}


def test_status_names_the_reason_when_unusable():
    ok, reason = tensorrt_status()
    assert isinstance(reason, str) and reason
    if not ok:
        assert "tensorrt" in reason.lower() or "cuda" in reason.lower()


def test_build_engine_without_tensorrt_is_a_one_line_error(tmp_path):
    if TRT_OK:
        pytest.skip("TensorRT is usable here; the engine tests below cover building")
    from lincompress.exporters.tensorrt.builder import build_engine

    with pytest.raises(LinCompressError, match="cannot build a TensorRT engine"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", _inputs())


# --------------------------------------------------------------------------- engines (need TensorRT + GPU)


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_pytorch(fixed_wan, tmp_path, precision):
    from lincompress.exporters._common import ExportSource
    from lincompress.exporters.tensorrt import export_tensorrt, load_engine

    state = fixed_wan
    info = export_tensorrt(ExportSource.from_state(state), tmp_path, precision=precision,
                           overrides={"batch": "2:2:3", "height": "6:6:8", "width": "6:6:12"}, require_engine=True)
    assert (tmp_path / "model.engine").is_file() and (tmp_path / "timing.cache").is_file()
    engine = load_engine(tmp_path / info["engine"])
    for kwargs in (state.target.inputs(2), {**state.target.inputs(3), "hidden_states": torch.randn(3, 4, 2, 8, 12)}):
        with torch.no_grad():
            ref = state.model(**kwargs)[0]
        (out,) = engine(**{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        tol = 1e-3 if precision == "fp32" else 3e-2
        torch.testing.assert_close(out.float().cpu(), ref, atol=tol, rtol=tol)
