"""What every exporter shares: the fixed model, its example inputs, dynamic axes, the program.

An exporter works from a ``State`` (Pipeline use) or from an artifact directory (CLI).
Both come down to ``(model, target)``: the fixed ``nn.Module`` and the ``Target`` whose
``example_inputs`` give one forward call. From those, ``export_program`` makes the one
``torch.export`` program every format starts from, with the batch axis and the latent's
token axes (frames / height / width) dynamic, and ``dynamic_axes`` reads the ranges that
``torch.export`` proved for them (recorded next to every exported file, and turned into
TensorRT optimisation profiles).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lincompress.errors import LinCompressError

# Examples are traced at batch 2: torch.export specialises every axis of size 1.
EXPORT_BATCH = 2


@dataclass
class ExportSource:
    """The fixed model to export and the target that says how to call it."""

    model: nn.Module
    target: Any  # lincompress.Target
    artifact_dir: Path | None = None
    sampler: dict[str, Any] | None = None  # a distilled model's few-step sampler record (None: the teacher's)

    @classmethod
    def from_state(cls, state: Any) -> "ExportSource":
        if not state.fixed:
            raise LinCompressError("exporters need a fixed model; put passes.Fix() before the exporter in the pipeline")
        sampler = next((step.metadata["sampler"] for step in reversed(state.recipe) if "sampler" in step.metadata), None)
        return cls(state.model, state.target, sampler=sampler)

    @classmethod
    def from_artifact(cls, artifact_dir: str | Path, model: str | Path | None = None) -> "ExportSource":
        """The artifact's model, built from ``model`` (default: its recorded model.py): read, hashed and built once."""
        from lincompress.artifacts import open_artifact

        artifact, target = open_artifact(artifact_dir, model)  # validates format, checksum and base-model identity
        sampler = artifact.sampler
        return cls(target.model.eval(), target, Path(artifact_dir), sampler.to_dict() if sampler is not None else None)


def tensor_inputs(kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}


def default_dynamic_shapes(kwargs: dict[str, Any], latent_key: str = "hidden_states", batch: int = EXPORT_BATCH,
                           tokens: bool = True, batch_dynamic: bool = True) -> dict[str, Any]:
    """``Dim.AUTO`` on the batch axis of every batched tensor input and on the latent's token axes.

    The latent is ``[B, C, *token_axes]`` (``[B, C, F, H, W]`` video, ``[B, C, H, W]`` image)
    or ``[B, N, C]`` (already patchified): its axes after the channel (resp. axis 1) are the
    token axes. ``AUTO`` lets ``torch.export`` find the valid range (and the divisibility a
    patch embedding needs) instead of us guessing it per model.
    """
    auto = torch.export.Dim.AUTO
    spec: dict[str, Any] = {}
    for name, value in kwargs.items():
        if not isinstance(value, torch.Tensor):
            spec[name] = None
            continue
        axes: dict[int, Any] = {}
        if batch_dynamic and value.dim() >= 1 and value.shape[0] == batch:
            axes[0] = auto
        if tokens and name == latent_key:
            token_axes = range(2, value.dim()) if value.dim() >= 4 else range(1, max(value.dim() - 1, 1))
            for axis in token_axes:
                axes[axis] = auto
        spec[name] = axes or None
    return spec


def export_program(source: ExportSource, batch: int = EXPORT_BATCH, dynamic: bool = True,
                   dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """``torch.export`` (with DCE) of the fixed model; returns the program and the example kwargs."""
    from lincompress.export_utils import export_model

    kwargs = source.target.inputs(batch)
    model = source.model
    want = torch.device(device) if device is not None else None
    on_device = want is None or all(
        p.device.type == want.type and (want.index is None or p.device.index == want.index) for p in model.parameters()
    )
    if dtype is not None or not on_device:
        model = model.to(device=device, dtype=dtype)
    if dtype is not None or want is not None:  # inputs follow, also when the model was already there
        kwargs = {k: _cast(v, dtype, device) for k, v in kwargs.items()}
    latent_key = getattr(source.target, "latent_key", "hidden_states")
    spec = default_dynamic_shapes(kwargs, latent_key, batch) if dynamic else None
    try:
        program = export_model(model.eval(), kwargs, spec)
    except Exception as exc:  # torch.export failures are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LinCompressError(f"torch.export of {type(model).__name__} failed: {first}") from exc
    return program, kwargs


def _cast(value: Any, dtype: torch.dtype | None, device: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.to(device) if device is not None else value


def dynamic_axes(program: torch.export.ExportedProgram, kwargs: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{input: {"shape", "example", "dtype", "dynamic": {axis: {"symbol", "min", "max"}}}}`` per tensor user input.

    ``shape`` holds ints and symbol names, ``example`` the traced example's sizes
    (from ``kwargs``), ``max`` is ``None`` where torch.export proved no upper bound.
    """
    user_inputs = set(program.graph_signature.user_inputs)
    out: dict[str, dict[str, Any]] = {}
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        shape: list[Any] = []
        dyn: dict[str, Any] = {}
        for axis, size in enumerate(val.shape):
            if isinstance(size, int):
                shape.append(size)
                continue
            expr = size.node.expr
            shape.append(str(expr))
            lo, hi = _bounds(program, expr)
            # torch.export specialises sizes 0 and 1 and so reports dynamic axes as >= 2. For the
            # batch axis that is only a tracing artefact (batch 1 runs; tested), so its minimum is 1;
            # token axes keep the proved minimum (a size-1 axis may not survive a patch embedding).
            dyn[str(axis)] = {"symbol": str(expr), "min": 1 if (axis == 0 and lo == 2) else lo, "max": hi}
        example = list(kwargs[node.name].shape) if kwargs and isinstance(kwargs.get(node.name), torch.Tensor) else None
        out[node.name] = {"shape": shape, "example": example, "dtype": str(val.dtype).removeprefix("torch."), "dynamic": dyn}
    return out


def _bounds(program: torch.export.ExportedProgram, expr: Any) -> tuple[int, int | None]:
    for sym, vr in program.range_constraints.items():
        if sym == expr:
            return _finite_int(vr.lower) or 1, _finite_int(vr.upper)
    return 1, None  # a derived expression (e.g. 2*s0): no direct range recorded


def _finite_int(value: Any) -> int | None:
    """An int for a finite sympy bound, None for (int_)oo."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number not in (float("inf"), float("-inf")) and number == number else None


def write_sidecar(path: Path, info: dict[str, Any], source: ExportSource | None = None) -> Path:
    """The JSON next to an exported file; with ``source``, it also records the sampler the model must run with."""
    from lincompress import atomic

    if source is not None:
        info["sampler"] = source.sampler  # None: the teacher's own sampler (no distillation)

    return atomic.write_json(path, info)


def read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LinCompressError(f"{path} is missing; re-run `lincompress export` to write it")
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- where an exporter step writes

class ExportFiles:
    """The files an exporter step writes into one directory: checked before any work, recorded after.

    A user-named export path (``exporters.ONNX("out/model.onnx")``) never replaces a file lincompress
    did not write; one it wrote is replaced only with ``overwrite=True``. What it wrote is recorded in
    the directory's ``.lincompress-files.json`` (``lincompress.outputs``), so a later export may replace it.
    """

    def __init__(self, directory: str | Path, names: tuple[str, ...], arg: str) -> None:
        from lincompress.outputs import OutputDir

        self.outputs = OutputDir(directory, arg)
        self.names = names

    def check(self, overwrite: bool) -> None:
        from lincompress.config import Arg

        self.outputs.check_files(self.names, replace=overwrite, replace_arg=Arg("overwrite", True))

    def record(self) -> None:
        self.outputs.add([n for n in self.names if (self.outputs.path / n).is_file()])

    @contextmanager
    def writing(self, overwrite: bool) -> Iterator[None]:
        """Check again right before writing (a user may have put a file there during a long run since the
        pipeline's preflight), then record what the block wrote."""
        self.check(overwrite)
        yield
        self.record()

    @classmethod
    def for_file(cls, path: str | Path, *suffixes: str) -> ExportFiles:
        """``path`` and its companions (``path`` + each suffix: ``.json`` sidecar, ``.data`` weights)."""
        path = Path(path)
        return cls(path.parent, (path.name, *(path.name + s for s in suffixes)), "path")
