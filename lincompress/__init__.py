"""lincompress: LinVideo-style softmax -> linear attention compression for diffusion transformers.

    from lincompress import Pipeline, passes
    result = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.7),
                       passes.Fix(), passes.Save("out")]).run(target)
"""

__version__ = "0.1.0"

from pathlib import Path as _Path

# `lincompress.passes` / `lincompress.exporters` live in the top-level folders passes/ and
# exporters/ (the product layout). Installed, pyproject's package-dir maps them; run from a
# source checkout (e.g. on a GPU box without installing), this lets the same imports work.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "passes" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]

from lincompress import kernels  # noqa: F401  (registers the CUDA kernels of the ops, when available)
from lincompress.artifacts import apply, load
from lincompress.pipeline import Pipeline, State
from lincompress.target import Target, load_target

from lincompress import passes  # noqa: E402  (passes import the core above)

__all__ = ["Pipeline", "State", "Target", "apply", "load", "load_target", "passes", "__version__"]
