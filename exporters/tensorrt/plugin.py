"""The TensorRT plugin ``lincompress::LinearAttention`` (TensorRT >= 10.6 ``tensorrt.plugin``, JIT impl).

Why ``tensorrt.plugin`` (a "quickly deployable" Python plugin) and not a C++ IPluginV3:

* one kernel source: the plugin launches the same fused Triton kernels that serve
  eager PyTorch, ``torch.compile`` and the AOTInductor package (through
  ``torch.ops.lincompress.linear_attention``, which dispatches to
  ``lincompress.kernels`` on CUDA), so a kernel fix reaches every backend and the
  TensorRT numbers measure the same kernel as the PyTorch ones;
* no C++/CUDA toolchain, TensorRT headers or ABI matrix (TRT minor x CUDA x arch) to
  build and ship; the plugin is this file;
* the kernels are three launches (split-N state reduction, partial sum, output
  pass), which ``tensorrt.plugin.aot_impl`` (one PTX kernel, no host code) cannot
  express; a C++ plugin could, at the price above.

Cost: the engine calls back into Python once per linear-attention layer, so it runs
only in a Python process that has imported this module (``TensorRTEngine`` does); an
engine for a C++-only runtime would need a single-kernel AOT variant. At video token
counts (tens of thousands of tokens per head) the kernel time dwarfs the callback.

Everything TensorRT-independent (attribute parsing, shape and dtype inference, the
type/format combinations, the launch) is plain Python below and unit-tested without
TensorRT; ``register_plugin()`` wires it into ``tensorrt.plugin`` when TensorRT exists.
Do not add ``from __future__ import annotations`` to this module: ``tensorrt.plugin``
reads the registered functions' annotations as real types.
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch

from lincompress.ops import spec

PLUGIN_NAMESPACE = "lincompress"  # == the ONNX node's domain: the parser's fallback looks plugins up by it
PLUGIN_NAME = "LinearAttention"  # == the ONNX node's op_type
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"

FEATURE_MAPS = spec.FEATURE_MAP_NAMES  # the op's vocabulary: the plugin serves every op attribute value
LAYOUTS = spec.LAYOUTS
# TensorRT DataType names the plugin accepts (all inputs and the output share one).
TRT_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}
# tensorrt.plugin AutoTuneCombination spelling of the same types.
_TUNE_TYPES = {"FLOAT": "FP32", "HALF": "FP16", "BF16": "BF16"}


@dataclass(frozen=True)
class LinearAttentionAttrs:
    feature_map: str
    eps: float
    layout: str


def _as_str(value: Any) -> str:
    """TensorRT hands string attributes over as str, bytes, or an int8/uint8 array (PluginField CHAR)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).split(b"\x00", 1)[0].decode()
    try:
        import numpy as np

        arr = np.asarray(value)
        if arr.dtype.kind in "iu" and arr.ndim == 1:
            return arr.astype(np.uint8).tobytes().split(b"\x00", 1)[0].decode()
        if arr.dtype.kind in "SU":
            return str(arr.reshape(-1)[0] if arr.ndim else arr.item()).strip()
    except Exception:  # noqa: BLE001 - fall through to the error below
        pass
    raise ValueError(f"LinearAttention: cannot read a string attribute from {type(value).__name__}")


def _as_float(value: Any) -> float:
    try:
        import numpy as np

        return float(np.asarray(value).reshape(-1)[0])
    except Exception:  # noqa: BLE001
        raise ValueError(f"LinearAttention: eps must be a number, got {value!r}") from None


def _plugin_error(fn, *args):
    """Run a spec check; its ValueError gets the plugin's ``LinearAttention:`` prefix."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise ValueError(f"LinearAttention: {exc}") from None


def parse_attributes(feature_map: Any = spec.DEFAULT_FEATURE_MAP, eps: Any = spec.DEFAULT_EPS,
                     layout: Any = spec.DEFAULT_LAYOUT) -> LinearAttentionAttrs:
    """Validate the node attributes (the ONNX node's, as TensorRT passes them to the plugin)."""
    fm, lay, e = _as_str(feature_map), _as_str(layout), _as_float(eps)
    _plugin_error(spec.check_attributes, fm, e, lay)
    return LinearAttentionAttrs(fm, e, lay)


def output_shape(q_shape: Sequence[Any], v_shape: Sequence[Any]) -> Tuple[Any, ...]:
    """Output dims from input dims (ints or TensorRT shape expressions; both layouts keep q's first three axes)."""
    return _plugin_error(spec.output_shape, q_shape, v_shape)


def check_shapes(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], layout: str) -> None:
    """Concrete-shape checks (the op's, from the spec), for the launch."""
    _plugin_error(spec.check_shapes, q_shape, k_shape, v_shape, layout)


def _type_name(dtype: Any) -> str:
    return getattr(dtype, "name", str(dtype).rsplit(".", 1)[-1])


def output_dtype(q_dtype: Any, k_dtype: Any, v_dtype: Any) -> Any:
    """The output has v's type; q, k, v must share one of FLOAT / HALF / BF16."""
    names = [_type_name(d) for d in (q_dtype, k_dtype, v_dtype)]
    for n in names:
        if n not in TRT_TYPES:
            raise ValueError(f"LinearAttention: unsupported TensorRT type {n}; use one of {tuple(TRT_TYPES)}")
    if len(set(names)) != 1:
        raise ValueError(f"LinearAttention: q, k, v must share one type, got {names}")
    return v_dtype


def autotune_combination() -> Tuple[str, str]:
    """``(types, formats)`` for ``tensorrt.plugin.AutoTuneCombination``: the 4 IOs share a type, linear format."""
    one = "|".join(_TUNE_TYPES[n] for n in TRT_TYPES)
    return ", ".join([one] * 4), "LINEAR"


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, attrs: LinearAttentionAttrs,
           stream: Optional[int] = None) -> None:
    """Compute linear attention of (q, k, v) into the preallocated ``out`` on ``stream``.

    Dispatches through ``torch.ops.lincompress.linear_attention``: the fused Triton
    kernels on CUDA, the PyTorch reference on CPU (how this is unit-tested).
    """
    import lincompress.kernels  # noqa: F401  (registers the CUDA kernels)
    from lincompress.ops.linear_attention import linear_attention_op  # noqa: F401  (defines the op)

    check_shapes(tuple(q.shape), tuple(k.shape), tuple(v.shape), attrs.layout)
    expected = output_shape(tuple(q.shape), tuple(v.shape))
    if tuple(out.shape) != tuple(expected):
        raise ValueError(f"LinearAttention: output buffer has shape {tuple(out.shape)}, expected {tuple(expected)}")

    def run() -> None:
        result = torch.ops.lincompress.linear_attention(q, k, v, attrs.feature_map, float(attrs.eps), attrs.layout)
        out.copy_(result)

    if stream is not None and out.is_cuda:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream, device=out.device)):
            run()
    else:
        run()


_INT_VIEW = {1: "|u1", 2: "<i2", 4: "<i4", 8: "<i8"}


def cuda_array_interface_for_torch(interface: dict, torch_dtype: torch.dtype) -> dict:
    """A ``__cuda_array_interface__`` torch can import for any dtype (bf16 has no typestr there).

    The data is viewed as a same-width integer type; ``as_torch`` views it back.
    """
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    out = dict(interface)
    out["typestr"] = _INT_VIEW[itemsize]
    out.setdefault("version", 2)
    return out


def as_torch(t: Any) -> torch.Tensor:
    """A ``tensorrt.plugin.Tensor`` as a torch CUDA tensor sharing its memory (any of the plugin's dtypes)."""
    torch_dtype = TRT_TYPES[_type_name(t.dtype)]

    class _View:
        __cuda_array_interface__ = cuda_array_interface_for_torch(t.__cuda_array_interface__, torch_dtype)

    return torch.as_tensor(_View(), device="cuda").view(torch_dtype)


_REGISTERED = False


def register_plugin() -> bool:
    """Register ``lincompress::LinearAttention`` with ``tensorrt.plugin``; False when TensorRT lacks it."""
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        import tensorrt.plugin as trtp
    except ImportError:
        return False

    @trtp.register(PLUGIN_ID)
    def _describe(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, feature_map: str, eps: float, layout: str
    ) -> Tuple[trtp.TensorDesc]:
        parse_attributes(feature_map, eps, layout)
        dtype = output_dtype(q.dtype, k.dtype, v.dtype)
        shape = trtp.ShapeExprs.from_tuple(output_shape(q.shape_expr, v.shape_expr))
        return (trtp.from_shape_expr(shape, dtype=dtype),)

    @trtp.autotune(PLUGIN_ID)
    def _tune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
              outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        types, formats = autotune_combination()
        return [trtp.AutoTuneCombination(types, formats)]

    @trtp.impl(PLUGIN_ID)
    def _enqueue(
        q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, feature_map: str, eps: float, layout: str,
        outputs: Tuple[trtp.Tensor], stream: int,
    ) -> None:
        attrs = parse_attributes(feature_map, eps, layout)
        launch(as_torch(q), as_torch(k), as_torch(v), as_torch(outputs[0]), attrs, stream)

    _REGISTERED = True
    return True
