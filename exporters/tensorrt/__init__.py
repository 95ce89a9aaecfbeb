"""TensorRT export: the lincompress ONNX + the ``lincompress::LinearAttention`` plugin -> engine.

``export_tensorrt(source, out_dir)`` writes into ``out_dir``:

* ``model.onnx`` (+ ``model.onnx.json``): the ONNX export (one ``LinearAttention`` node per linear site);
* ``linear_attention_plugin.py``: the plugin's source (a copy of
  ``lincompress/exporters/tensorrt/plugin.py``, for reference next to the engine);
* where TensorRT >= 10.6 and a GPU exist: ``model.engine``, ``timing.cache`` and
  ``model.engine.json`` (profile, precision, versions). Elsewhere the engine is skipped
  with the reason in the returned info (``require_engine=True`` makes that an error).

Run an engine with ``TensorRTEngine`` (``runtime.py``); see ``plugin.py`` for why the
plugin is a ``tensorrt.plugin`` Python plugin launching the project's Triton kernels.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lincompress.errors import LinCompressError
from lincompress.exporters._common import ExportFiles, ExportSource, dynamic_axes, export_program, write_sidecar
from lincompress.exporters.tensorrt.builder import PRECISIONS, build_engine, profile_shapes, tensorrt_status
from lincompress.exporters.tensorrt.plugin import PLUGIN_ID, register_plugin

ONNX_NAME = "model.onnx"
ENGINE_NAME = "model.engine"
PLUGIN_SOURCE_NAME = "linear_attention_plugin.py"
TIMING_CACHE_NAME = "timing.cache"
OUTPUT_NAMES = (ONNX_NAME, ONNX_NAME + ".data", ONNX_NAME + ".json", PLUGIN_SOURCE_NAME, ENGINE_NAME,
                ENGINE_NAME + ".json", TIMING_CACHE_NAME)  # everything export_tensorrt may write
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_tensorrt(source: ExportSource, out_dir: str | Path, precision: str = "fp16",
                    overrides: dict[str, Any] | None = None, strongly_typed: bool = False,
                    require_engine: bool = False, verbose: bool = False) -> dict[str, Any]:
    """ONNX + plugin source always; the engine where TensorRT can build one. Returns what was done."""
    from lincompress.exporters.onnx import export_onnx

    if precision not in PRECISIONS:
        raise LinCompressError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    ok, reason = tensorrt_status()
    if require_engine and not ok:
        raise LinCompressError(f"cannot build a TensorRT engine: {reason}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = _DTYPES[precision] if strongly_typed else None
    prepared = export_program(source, dtype=dtype)
    # refuse a bad profile before the (slow) ONNX conversion
    profile_shapes(dynamic_axes(*prepared), overrides, getattr(source.target, "latent_key", "hidden_states"))
    onnx_info = export_onnx(source, out_dir / ONNX_NAME, decompose=False, prepared=prepared)
    shutil.copyfile(Path(__file__).with_name("plugin.py"), out_dir / PLUGIN_SOURCE_NAME)
    info: dict[str, Any] = {"format": "tensorrt", "onnx": ONNX_NAME, "plugin_source": PLUGIN_SOURCE_NAME,
                            "plugin_id": PLUGIN_ID, "precision": precision, "attention_nodes": onnx_info["attention_nodes"],
                            "sampler": source.sampler}
    if not ok:
        info.update(engine=None, skipped=reason)
        return info
    engine_info = build_engine(out_dir / ONNX_NAME, out_dir / ENGINE_NAME, onnx_info["inputs"], precision=precision,
                               overrides=overrides, timing_cache=out_dir / TIMING_CACHE_NAME,
                               strongly_typed=strongly_typed, verbose=verbose,
                               latent_key=getattr(source.target, "latent_key", "hidden_states"))
    write_sidecar(out_dir / (ENGINE_NAME + ".json"), engine_info, source)
    info.update(engine=ENGINE_NAME, **{k: v for k, v in engine_info.items() if k != "engine"})
    return info


@dataclass
class TensorRT:
    """Pipeline step: ``exporters.TensorRT("out/trt")`` after ``passes.Fix()``.

    Records ``state.outputs["tensorrt_onnx"]`` and, when built, ``state.outputs["tensorrt_engine"]``;
    without TensorRT the reason is in ``state.metrics["export"]["tensorrt"]["skipped"]``.
    """

    out_dir: str | Path
    precision: str = "fp16"
    overrides: dict[str, Any] | None = None
    strongly_typed: bool = False
    require_engine: bool = False
    overwrite: bool = False  # replace an earlier export of ours in ``out_dir`` (never a file lincompress did not write)
    name: str = field(default="tensorrt")
    requires: ClassVar[tuple[str, ...]] = ("fixed",)  # Pipeline checks the order before anything runs

    def _files(self) -> ExportFiles:
        return ExportFiles(self.out_dir, OUTPUT_NAMES, "out_dir")

    def check(self, state) -> None:
        self._files().check(self.overwrite)  # before any pass runs

    def run(self, state):
        with self._files().writing(self.overwrite):
            info = export_tensorrt(ExportSource.from_state(state), self.out_dir, self.precision, self.overrides,
                                   self.strongly_typed, self.require_engine)
        out = Path(self.out_dir)
        state.outputs["tensorrt_onnx"] = out / ONNX_NAME
        if info.get("engine"):
            state.outputs["tensorrt_engine"] = out / ENGINE_NAME
        state.metrics.setdefault("export", {})["tensorrt"] = info
        return state


def load_engine(engine_path: str | Path, device: int = 0):
    """``TensorRTEngine`` for ``engine_path`` (needs TensorRT and a GPU)."""
    from lincompress.exporters.tensorrt.runtime import TensorRTEngine

    return TensorRTEngine(engine_path, device)


__all__ = ["PLUGIN_ID", "TensorRT", "build_engine", "export_tensorrt", "load_engine", "profile_shapes",
           "register_plugin", "tensorrt_status"]
