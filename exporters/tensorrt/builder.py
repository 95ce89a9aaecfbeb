"""Build a TensorRT engine from the lincompress ONNX file (TensorRT 10 Python API).

Steps (``build_engine``):

1. ``register_plugin()``: ``lincompress::LinearAttention`` joins TensorRT's plugin registry.
2. Parse the ONNX *without* its ``LinearAttention`` function body, so every TensorRT 10
   parser falls back to the plugin for those nodes (recent parsers otherwise inline a
   model-local function in preference to a plugin). Weights stay external: the
   parser gets the file's directory to find a ``.data`` file.
3. One optimisation profile over the dynamic axes (``profile_shapes``: batch, frames,
   height, width from the ONNX sidecar, with min/opt/max defaults and overrides).
4. Precision: ``fp32``; ``fp16`` / ``bf16`` set the builder flag (weakly typed network,
   TensorRT picks per layer, the plugin offers FP32/FP16/BF16); ``strongly_typed=True``
   instead keeps the ONNX file's own types (export it in that dtype).
5. Timing cache: loaded from and saved back to ``timing_cache`` so rebuilds are fast.

The pure-Python parts (availability check, profile construction) are unit-tested
without TensorRT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lincompress.errors import LinCompressError

MIN_TENSORRT = (10, 6)  # tensorrt.plugin (Python plugins with shape expressions) arrived in 10.6
PRECISIONS = ("fp32", "fp16", "bf16")


def tensorrt_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether an engine can be built here, and if not, why (one line)."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, ("tensorrt is not installed (NVIDIA ships it from its own index: "
                       "pip install --extra-index-url https://pypi.nvidia.com tensorrt>=10.6)")
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer, ...)
        return False, f"tensorrt failed to import ({type(exc).__name__}: {exc})"
    version = _version_tuple(getattr(trt, "__version__", "0"))
    if version < MIN_TENSORRT:
        return False, f"tensorrt {trt.__version__} is too old; the LinearAttention plugin needs >= 10.6 (tensorrt.plugin)"
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError as exc:
        return False, f"tensorrt.plugin is unavailable ({exc})"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU: TensorRT builds engines on the GPU they will run on"
    except ImportError:
        pass
    return True, f"tensorrt {trt.__version__}"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3]) or (0,)


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class AxisRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise LinCompressError(f"profile range must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")


def parse_range(text: str) -> AxisRange:
    """``"min:opt:max"``, ``"min:max"`` (opt = max) or ``"n"`` (static)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise LinCompressError(f"bad profile range {text!r}; write min:opt:max, min:max or n") from None
    if len(parts) == 1:
        parts = parts * 3
    elif len(parts) == 2:
        parts = [parts[0], parts[1], parts[1]]
    elif len(parts) != 3:
        raise LinCompressError(f"bad profile range {text!r}; write min:opt:max, min:max or n")
    return AxisRange(*parts)


def axis_names(inputs: dict[str, Any], latent_key: str = "hidden_states") -> dict[str, str]:
    """Human names of the dynamic symbols: ``batch`` (axis 0), latent ``frames/height/width`` (or ``tokens``)."""
    names: dict[str, str] = {}
    for name, info in inputs.items():
        dyn = info.get("dynamic", {})
        rank = len(info["shape"])
        for axis_text, d in dyn.items():
            axis = int(axis_text)
            if axis == 0:
                label = "batch"
            elif name == latent_key:
                token_axes = list(range(2, rank)) if rank >= 4 else [1]
                labels = {5: ["frames", "height", "width"], 4: ["height", "width"]}.get(rank, ["tokens"])
                label = labels[token_axes.index(axis)] if axis in token_axes else f"{name}.{axis}"
            else:
                label = f"{name}.{axis}"
            names.setdefault(d["symbol"], label)
    return names


def profile_shapes(inputs: dict[str, Any], overrides: dict[str, AxisRange | str] | None = None,
                   latent_key: str = "hidden_states") -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``{input: (min_shape, opt_shape, max_shape)}`` for one TensorRT optimisation profile.

    ``inputs`` is the ONNX sidecar's ``inputs`` (shape with symbols, example shape, dynamic
    axes with the ranges torch.export proved). Each dynamic symbol (shared across inputs,
    e.g. batch) gets one range: an override by its human name (``batch``, ``frames``,
    ``height``, ``width``, ``tokens``) or symbol, else ``min`` = the proved lower bound,
    ``opt`` = ``max`` = the example size. Overrides outside the proved range are refused.
    """
    overrides = {k: (parse_range(v) if isinstance(v, str) else v) for k, v in (overrides or {}).items()}
    names = axis_names(inputs, latent_key)
    known = set(names.values()) | set(names)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise LinCompressError(f"no dynamic axis named {', '.join(unknown)}; dynamic axes: {', '.join(sorted(set(names.values()))) or 'none'}")
    ranges: dict[str, AxisRange] = {}
    for name, info in inputs.items():
        example = info["example"]
        for axis_text, d in info.get("dynamic", {}).items():
            sym = d["symbol"]
            if sym in ranges:
                continue
            ex = int(example[int(axis_text)])
            chosen = overrides.get(names.get(sym, ""), overrides.get(sym))
            lo_proved, hi_proved = int(d.get("min") or 1), d.get("max")
            if chosen is None:
                chosen = AxisRange(max(1, min(lo_proved, ex)), ex, ex)
            if chosen.min < lo_proved or (hi_proved is not None and chosen.max > int(hi_proved)):
                raise LinCompressError(
                    f"profile for {names.get(sym, sym)} ({chosen.min}:{chosen.opt}:{chosen.max}) leaves the range the model "
                    f"supports ({lo_proved}..{hi_proved if hi_proved is not None else 'inf'})"
                )
            ranges[sym] = chosen
    shapes = {}
    for name, info in inputs.items():
        lo, opt, hi = list(info["example"]), list(info["example"]), list(info["example"])
        for axis_text, d in info.get("dynamic", {}).items():
            r = ranges[d["symbol"]]
            axis = int(axis_text)
            lo[axis], opt[axis], hi[axis] = r.min, r.opt, r.max
        shapes[name] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes


# --------------------------------------------------------------------------- build


def onnx_bytes_for_tensorrt(onnx_path: Path) -> bytes:
    """The ONNX model without the LinearAttention function body (external weights stay referenced, not loaded)."""
    import onnx

    from lincompress.exporters.onnx import DOMAIN, OP_TYPE

    model = onnx.load(str(onnx_path), load_external_data=False)
    keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(keep)
    return model.SerializeToString()


def build_engine(onnx_path: str | Path, engine_path: str | Path, inputs: dict[str, Any], precision: str = "fp16",
                 overrides: dict[str, Any] | None = None, timing_cache: str | Path | None = None,
                 workspace_bytes: int | None = None, strongly_typed: bool = False, verbose: bool = False,
                 latent_key: str = "hidden_states") -> dict[str, Any]:
    """Build and serialize an engine; returns a description (profile, precision, versions)."""
    ok, reason = tensorrt_status()
    if not ok:
        raise LinCompressError(f"cannot build a TensorRT engine: {reason}")
    import tensorrt as trt

    from lincompress import atomic
    from lincompress.exporters.tensorrt.plugin import register_plugin

    if precision not in PRECISIONS:
        raise LinCompressError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if not register_plugin():
        raise LinCompressError("could not register the LinearAttention plugin with tensorrt.plugin")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    if not parser.parse(onnx_bytes_for_tensorrt(onnx_path), str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise LinCompressError(f"TensorRT could not parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision != "fp32" and not strongly_typed:
        flag = {"fp16": "FP16", "bf16": "BF16"}[precision]
        if not hasattr(trt.BuilderFlag, flag):
            raise LinCompressError(f"this TensorRT has no BuilderFlag.{flag}; export the ONNX in {precision} and pass strongly_typed")
        config.set_flag(getattr(trt.BuilderFlag, flag))

    shapes = profile_shapes(inputs, overrides, latent_key)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in shapes:
            raise LinCompressError(f"ONNX input {tensor.name!r} is not described in the export sidecar; re-export")
        profile.set_shape(tensor.name, *shapes[tensor.name])
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LinCompressError("TensorRT failed to build the engine (run with verbose=True for the builder log)")
    atomic.write_bytes(engine_path, bytes(serialized))
    if cache_path:
        atomic.write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return {
        "engine": engine_path.name,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
        "tensorrt": trt.__version__,
        "plugin": {"id": "lincompress::LinearAttention", "version": "1", "kind": "tensorrt.plugin (Python, JIT impl)"},
        "timing_cache": cache_path.name if cache_path else None,
    }
