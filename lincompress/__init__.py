"""lincompress: LinVideo-style softmax -> linear attention compression for diffusion transformers.

    import lincompress
    state = lincompress.compress("model.py", target_linear=0.7, steps=2000, out_dir="out/lin70")
    pipe.transformer = lincompress.apply(pipe.transformer, "out/lin70")
    video = lincompress.run_pipeline(pipe, "a red fox in the snow", "out/lin70")  # sampled as it was trained
    video = lincompress.run_sampler(pipe, prompt, lincompress.read_sampler("out/lin70"))  # a distilled artifact: its few-step sampler

``import lincompress`` loads only the core (the target contract, the pipeline, the op and
its kernels); everything else -- passes, exporters, artifacts, the training stack -- is
imported on first use (PEP 562), so a deployment that loads an artifact or an exported
model never imports training code.
"""

__version__ = "0.1.0"

import importlib as _importlib
from pathlib import Path as _Path
from typing import Any as _Any

# `lincompress.passes` / `lincompress.exporters` live in the top-level folders passes/ and
# exporters/ (the product layout). Installed, pyproject's package-dir maps them; run from a
# source checkout (e.g. on a GPU box without installing), this lets the same imports work.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "passes" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]

from lincompress import kernels  # noqa: E402,F401  (registers the CUDA kernels of the op, when available)
from lincompress.errors import LinCompressError  # noqa: E402
from lincompress.pipeline import Pipeline, State  # noqa: E402
from lincompress.target import Target, load_target  # noqa: E402

_LAZY = {
    "apply": ("lincompress.artifacts", "apply"),
    "load": ("lincompress.artifacts", "load"),
    "compress": ("lincompress.api", "compress"),
    "recover": ("lincompress.api", "recover"),
    "bench": ("lincompress.benchmarking", "bench"),
    "TargetOptions": ("lincompress.target", "TargetOptions"),
    "GuidanceConfig": ("lincompress.guidance", "GuidanceConfig"),
    "guidance_of": ("lincompress.guidance", "guidance_of"),
    "run_pipeline": ("lincompress.guidance", "run_pipeline"),
    "read_sampler": ("lincompress.sampler", "read_sampler"),
    "run_sampler": ("lincompress.sampler", "run_sampler"),
    "passes": ("lincompress.passes", None),
    "exporters": ("lincompress.exporters", None),
    "registry": ("lincompress.registry", None),
}

__all__ = ["LinCompressError", "Pipeline", "State", "Target", "load_target", "__version__", *_LAZY]


def __getattr__(name: str) -> _Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lincompress' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = _importlib.import_module(module)
    value = getattr(value, attr) if attr else value
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
