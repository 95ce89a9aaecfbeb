"""Exporters: deployable forms of a fixed hybrid model (ONNX, TensorRT, AOTInductor).

Each exporter is a Pipeline step (``name`` + ``run(state) -> state``) placed after
``passes.Fix()``; it records the files it wrote in ``state.outputs``::

    Pipeline([..., passes.Fix(), exporters.ONNX("out/model.onnx")]).run(target)

Heavy dependencies (onnx, tensorrt, inductor) are imported when an exporter runs.
"""

from lincompress.exporters.aoti import AOTInductor
from lincompress.exporters.onnx import ONNX
from lincompress.exporters.tensorrt import TensorRT

__all__ = ["AOTInductor", "ONNX", "TensorRT"]
