"""Run a lincompress TensorRT engine from Python (TensorRT 10 name-based I/O API).

    engine = TensorRTEngine("out/wan-lin70/tensorrt/model.engine")
    (video,) = engine(hidden_states=x, timestep=t, encoder_hidden_states=text)

Inputs are torch tensors (moved to the engine's GPU and cast to the engine's input
types); outputs are torch CUDA tensors in the ONNX output order. The plugin is
registered before deserialising, as TensorRT requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lincompress.errors import LinCompressError

_TORCH_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _TORCH_TYPES:
        raise LinCompressError(f"engine uses TensorRT type {name}, which this loader does not map to torch")
    return _TORCH_TYPES[name]


class TensorRTEngine:
    """A deserialised engine + one execution context; call it with the model's tensor kwargs."""

    def __init__(self, engine_path: str | Path, device: int | str | torch.device = 0) -> None:
        from lincompress.exporters.tensorrt.builder import tensorrt_status
        from lincompress.exporters.tensorrt.plugin import register_plugin

        ok, reason = tensorrt_status()
        if not ok:
            raise LinCompressError(f"cannot run a TensorRT engine: {reason}")
        import tensorrt as trt

        self.device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        register_plugin()
        path = Path(engine_path)
        if not path.is_file():
            raise LinCompressError(f"{path} does not exist; build it with `lincompress export OUT --format tensorrt`")
        self._trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise LinCompressError(f"{path} is not an engine this TensorRT ({trt.__version__}) and GPU can load; rebuild it here")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, **kwargs: Any) -> list[torch.Tensor]:
        missing = [n for n in self.input_names if n not in kwargs]
        if missing:
            raise LinCompressError(f"engine inputs missing: {', '.join(missing)}")
        keep = []  # the engine reads these buffers asynchronously
        with torch.cuda.device(self.device):
            for name in self.input_names:
                t = torch.as_tensor(kwargs[name]).to(self.device, torch_dtype(self.engine.get_tensor_dtype(name))).contiguous()
                keep.append(t)
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise LinCompressError(f"input {name} shape {tuple(t.shape)} is outside the engine's optimisation profile")
                self.context.set_tensor_address(name, t.data_ptr())
            outputs = []
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                buf = torch.empty(shape, dtype=torch_dtype(self.engine.get_tensor_dtype(name)), device=self.device)
                self.context.set_tensor_address(name, buf.data_ptr())
                outputs.append(buf)
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise LinCompressError("TensorRT execution failed (see the TensorRT log above)")
        return outputs
