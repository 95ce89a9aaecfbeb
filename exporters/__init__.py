"""Exporters: deployable forms of a fixed hybrid model (ONNX, TensorRT, AOTInductor).

Each exporter is a Pipeline step (``name`` + ``run(state) -> state``) placed after
``passes.Fix()``; it records the files it wrote in ``state.outputs``::

    Pipeline([..., passes.Fix(), exporters.ONNX("out/model.onnx")]).run(target)

Exporters load lazily (PEP 562) and never import the training stack
(``lincompress.recovery``), rich or matplotlib; heavy dependencies (onnx, tensorrt,
inductor) are imported when an exporter runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"AOTInductor": "lincompress.exporters.aoti", "ONNX": "lincompress.exporters.onnx",
          "TensorRT": "lincompress.exporters.tensorrt"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lincompress.exporters' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
