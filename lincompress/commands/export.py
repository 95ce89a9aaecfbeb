"""``lincompress export OUT --format onnx|tensorrt|aoti``: deployable files from an artifact directory.

Writes into OUT (the ``optimize --out`` directory):

* ``onnx``     -> ``OUT/model.onnx`` (+ ``.json`` sidecar: inputs, dynamic axes, node counts)
* ``tensorrt`` -> ``OUT/tensorrt/`` (``model.onnx``, ``linear_attention_plugin.py``, and where
  TensorRT >= 10.6 and a GPU exist ``model.engine`` + ``timing.cache``)
* ``aoti``     -> ``OUT/model.pt2`` (``OUT/model-cuda.pt2`` for ``--device cuda``)

Without TensorRT, ``--format tensorrt`` still writes the ONNX file and the plugin, prints
why the engine was skipped and what to run on a TensorRT machine, and exits 0: engines are
specific to a GPU and TensorRT version, so exporting on one machine and building on the
target is the normal split, and a failing status would break such scripts. Pass
``--require-engine`` to make a missing TensorRT an error (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console

from lincompress.errors import LinCompressError
from lincompress.outputs import OutputDir

FORMATS = ("onnx", "tensorrt", "aoti")
PRECISIONS = ("fp32", "fp16", "bf16")


def _parse_profiles(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise LinCompressError(f"--profile takes AXIS=min:opt:max (e.g. frames=1:21:21), got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip()] = value.strip()
    return out


@click.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="What to produce.")
@click.option("--decompose", is_flag=True, help="ONNX: plain ops instead of the LinearAttention custom node.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Weights/activations type. Default: fp16 for tensorrt (builder flag), fp32 otherwise.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 19; 18 with --decompose).")
@click.option("--device", type=click.Choice(("cpu", "cuda")), default="cpu", show_default=True,
              help="AOTInductor: device the package is compiled for.")
@click.option("--profile", "profiles", multiple=True, metavar="AXIS=MIN:OPT:MAX",
              help="TensorRT optimisation profile of a dynamic axis (batch, frames, height, width, tokens); repeatable.")
@click.option("--strongly-typed", is_flag=True, help="TensorRT: export the ONNX in --precision and build a strongly typed network.")
@click.option("--require-engine", is_flag=True, help="TensorRT: fail (exit 2) when no engine can be built here.")
@click.option("--static", "static", is_flag=True, help="Export with the example's fixed shapes (no dynamic axes).")
@click.option("--model", "model", type=click.Path(dir_okay=False), default=None,
              help="The model.py the artifact was made from [default: the one it records]; its fingerprint is checked.")
def command(out_dir: str, fmt: str, decompose: bool, precision: str | None, opset: int | None, device: str,
            profiles: tuple[str, ...], strongly_typed: bool, require_engine: bool, static: bool,
            model: str | None) -> None:
    """Export the fixed model in artifact OUT_DIR as ONNX, a TensorRT engine, or an AOTInductor package."""
    import torch

    from lincompress.exporters._common import ExportSource

    console = Console(soft_wrap=True)  # commands and paths stay copy-pasteable
    out = Path(out_dir)
    if decompose and fmt != "onnx":
        raise LinCompressError("--decompose applies to --format onnx only (TensorRT needs the LinearAttention node)")
    if profiles and fmt != "tensorrt":
        raise LinCompressError("--profile applies to --format tensorrt only")
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    outputs = OutputDir(out, None)
    outputs.check(_files(fmt, device), replace=True, what=f"a {fmt} export")  # before any work
    with console.status(f"loading {out}"):
        source = ExportSource.from_artifact(out, model)
    with outputs.recording():  # replaces our earlier export of this format, never a file we did not write
        _export(console, out, source, fmt, decompose, precision, opset, device, profiles, strongly_typed,
                require_engine, static, dtypes)


def _files(fmt: str, device: str) -> tuple[str, ...]:
    """What an export of ``fmt`` may write into the artifact directory (``dir/``: everything under it)."""
    if fmt == "onnx":
        return ("model.onnx", "model.onnx.data", "model.onnx.json")
    if fmt == "aoti":
        stem = "model" if device == "cpu" else f"model-{device}"
        return (f"{stem}.pt2", f"{stem}.pt2.json")
    return ("tensorrt/",)


def _export(console: Console, out: Path, source: Any, fmt: str, decompose: bool, precision: str | None,
            opset: int | None, device: str, profiles: tuple[str, ...], strongly_typed: bool, require_engine: bool,
            static: bool, dtypes: dict[str, Any]) -> None:
    if fmt == "onnx":
        from lincompress.exporters.onnx import export_onnx

        path = out / "model.onnx"
        with console.status("exporting ONNX"):
            info = export_onnx(source, path, decompose=decompose, opset=opset, dynamic=not static,
                               dtype=dtypes[precision] if precision else None)
        counts = info["attention_nodes"]
        console.print(f"wrote {path} (opset {info['opset']}): {counts.get('linear_attention', 0)} LinearAttention, "
                      f"{counts.get('softmax', 0)} softmax attention nodes")
        return

    if fmt == "aoti":
        from lincompress.exporters.aoti import compile_aoti

        path = out / ("model.pt2" if device == "cpu" else f"model-{device}.pt2")
        with console.status(f"compiling AOTInductor package for {device}"):
            compile_aoti(source, path, dynamic=not static, device=device, dtype=dtypes[precision] if precision else None)
        console.print(f"wrote {path}; load it with lincompress.exporters.aoti.load_aoti({str(path)!r})")
        return

    from lincompress.exporters.tensorrt import export_tensorrt

    trt_dir = out / "tensorrt"
    with console.status("exporting for TensorRT"):
        info = export_tensorrt(source, trt_dir, precision=precision or "fp16", overrides=_parse_profiles(profiles),
                               strongly_typed=strongly_typed, require_engine=require_engine)
    console.print(f"wrote {trt_dir / info['onnx']} and {trt_dir / info['plugin_source']} (plugin {info['plugin_id']})")
    if info.get("engine"):
        console.print(f"built {trt_dir / info['engine']} ({info['precision']}, TensorRT {info['tensorrt']})")
    else:
        console.print(f"[yellow]TensorRT engine not built:[/] {info['skipped']}")
        console.print(f"On a machine with TensorRT >= 10.6 and the target GPU, run: lincompress export {out} --format tensorrt")
