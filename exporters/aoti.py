"""AOTInductor package (``.pt2``) of a fixed hybrid model, and its loader.

``torch.export`` of the fixed model (batch and token axes dynamic, see
``exporters._common``) -> ``torch._inductor.aoti_compile_and_package`` -> one ``.pt2``
file; ``load_aoti(path)`` returns a callable taking the model's own keyword arguments.

Linear-attention sites stay one ``lincompress::linear_attention`` call in the compiled
code (Inductor treats the custom op as an extern kernel and calls it through the
dispatcher), so the package runs whatever implementation is registered for the device:
the fused Triton kernels (``lincompress.kernels``) on CUDA, the PyTorch reference on
CPU. Consequence: the process that loads the package must ``import lincompress`` first
(``load_aoti`` does) so the op exists. Everything else (projections, norms, softmax
sites, MLPs) is compiled by Inductor into the package.

Compile the package on the device it will run on (``device="cuda"`` for GPU packages):
Inductor generates device code at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lincompress.errors import LinCompressError
from lincompress.exporters._common import ExportFiles, ExportSource, dynamic_axes, export_program, write_sidecar


def compile_aoti(source: ExportSource, path: str | Path, batch: int = 2, dynamic: bool = True,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 inductor_configs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile ``source`` into the ``.pt2`` package ``path`` (+ ``<path>.json``); returns the sidecar info."""
    from torch._inductor import aoti_compile_and_package

    from lincompress import atomic

    path = Path(path)
    if path.suffix != ".pt2":
        raise LinCompressError(f"AOTInductor packages must end in .pt2, got {path.name}")
    device = torch.device(device) if device is not None else next(source.model.parameters()).device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LinCompressError("an AOTInductor package for cuda needs a CUDA GPU at compile time; use --device cpu")
    program, kwargs = export_program(source, batch=batch, dynamic=dynamic, dtype=dtype, device=device)

    def write(tmp: Path) -> None:
        aoti_compile_and_package(program, package_path=str(tmp.with_suffix(".pt2")), inductor_configs=inductor_configs or {})
        tmp.with_suffix(".pt2").replace(tmp)

    try:
        atomic.atomic_write(path, write)
    except LinCompressError:
        raise
    except Exception as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise LinCompressError(f"AOTInductor compilation failed: {lines[-1] if lines else type(exc).__name__}") from exc
    info = {
        "format": "aoti",
        "file": path.name,
        "device": device.type,
        "dtype": str(dtype or next(source.model.parameters()).dtype).removeprefix("torch."),
        "inputs": dynamic_axes(program, kwargs),
        "torch": torch.__version__,
    }
    write_sidecar(path.with_name(path.name + ".json"), info, source)
    return info


def load_aoti(path: str | Path, device_index: int = -1):
    """Load a ``.pt2`` written by ``compile_aoti``; call the result like the model: ``runner(**kwargs)``."""
    import lincompress.kernels  # noqa: F401  (registers lincompress::linear_attention and its CUDA kernels)

    path = Path(path)
    if not path.is_file():
        raise LinCompressError(f"{path} does not exist; run `lincompress export OUT --format aoti` first")
    try:
        return torch._inductor.aoti_load_package(str(path), run_single_threaded=False, device_index=device_index)
    except TypeError:  # older signature
        return torch._inductor.aoti_load_package(str(path))
    except Exception as exc:
        raise LinCompressError(f"{path} is not a loadable AOTInductor package ({type(exc).__name__}: {exc})") from None


@dataclass
class AOTInductor:
    """Pipeline step: ``exporters.AOTInductor("out/model.pt2")`` after ``passes.Fix()``; records ``state.outputs["aoti"]``."""

    path: str | Path
    device: str | None = None
    dynamic: bool = True
    overwrite: bool = False  # replace an earlier export of ours at ``path`` (never a file lincompress did not write)
    name: str = field(default="aoti")
    requires: ClassVar[tuple[str, ...]] = ("fixed",)  # Pipeline checks the order before anything runs

    def _files(self) -> ExportFiles:
        return ExportFiles.for_file(self.path, ".json")

    def check(self, state) -> None:
        self._files().check(self.overwrite)  # before any pass runs

    def run(self, state):
        with self._files().writing(self.overwrite):
            compile_aoti(ExportSource.from_state(state), self.path, dynamic=self.dynamic, device=self.device)
        state.outputs["aoti"] = Path(self.path)
        return state
