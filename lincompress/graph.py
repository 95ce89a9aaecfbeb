"""Trace a model into a torch.fx graph and read it in one vocabulary.

``trace_model`` tries ``torch.fx.symbolic_trace`` first (Python-level graph, works on
plain hand-written DiTs) and falls back to ``torch.export`` (ATen graph; the only one
that traces real diffusers DiTs with their data-dependent control flow). Both graphs
carry ``nn_module_stack`` and tensor shapes, which is all attention discovery needs;
``op_kind`` maps either IR's nodes to the few roles discovery cares about.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lincompress.errors import TraceError

aten = torch.ops.aten


@dataclass
class TracedGraph:
    graph_module: fx.GraphModule
    method: str  # "fx" or "export"


def _symbolic_trace(model: nn.Module, kwargs: dict[str, Any]) -> fx.GraphModule:
    gm = fx.symbolic_trace(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    signature = inspect.signature(model.forward)
    args = []
    for node in placeholders:
        if node.target in kwargs:
            args.append(kwargs[node.target])
        else:
            param = signature.parameters.get(node.target)
            if param is None or param.default is inspect.Parameter.empty:
                raise TraceError(f"fx graph input {node.target!r} has no example value")
            args.append(param.default)
    fx.passes.shape_prop.ShapeProp(gm).propagate(*args)
    return gm


def trace_model(model: nn.Module, kwargs: dict[str, Any]) -> TracedGraph:
    """fx symbolic trace, else torch.export (non-strict); one-line error naming what failed."""
    with torch.no_grad():
        try:
            return TracedGraph(_symbolic_trace(model, kwargs), "fx")
        except Exception as fx_error:  # noqa: BLE001 - fall through to export, report both below
            fx_reason = f"{type(fx_error).__name__}: {str(fx_error).splitlines()[0] if str(fx_error) else ''}"
        try:
            program = torch.export.export(model, (), kwargs, strict=False)
            return TracedGraph(program.graph_module, "export")
        except Exception as export_error:  # noqa: BLE001
            where = _failing_module(export_error) or type(model).__name__
            first = str(export_error).splitlines()[0] if str(export_error) else type(export_error).__name__
            raise TraceError(
                f"could not trace {where}: torch.fx said '{fx_reason[:160]}', torch.export said '{first[:200]}'; "
                "make its forward traceable with torch.export (no data-dependent Python control flow)"
            ) from export_error


def _failing_module(error: BaseException) -> str | None:
    tb = error.__traceback__
    name = None
    while tb is not None:
        self_obj = tb.tb_frame.f_locals.get("self")
        if isinstance(self_obj, nn.Module):
            name = type(self_obj).__name__
        tb = tb.tb_next
    return name


_SDPA = {
    F.scaled_dot_product_attention,
    aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
}
_MATMUL = {torch.matmul, operator.matmul, torch.bmm, aten.matmul.default, aten.bmm.default}
_SOFTMAX = {torch.softmax, F.softmax, aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
_SCALE = {operator.mul, operator.truediv, torch.mul, torch.div, aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar}
_PASS = {F.dropout, aten.dropout.default, aten._to_copy.default, aten.clone.default, aten.alias.default, aten.contiguous.default}
_PASS_METHODS = {"to", "type_as", "float", "half", "bfloat16", "contiguous", "clone"}
_LINEAR = {F.linear, aten.linear.default}
_CAT = {torch.cat, torch.concat, aten.cat.default, aten.concat.default}


def op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """One of sdpa / matmul / softmax / scale / pass / linear / cat / other, for fx or ATen nodes."""
    if node.op == "call_function":
        target = node.target
        for kind, table in (("sdpa", _SDPA), ("matmul", _MATMUL), ("softmax", _SOFTMAX), ("scale", _SCALE),
                            ("pass", _PASS), ("linear", _LINEAR), ("cat", _CAT)):
            if target in table:
                return kind
        if target in (aten.addmm.default,):
            return "linear"
        return "other"
    if node.op == "call_method":
        name = node.target
        if name == "matmul":
            return "matmul"
        if name == "softmax":
            return "softmax"
        if name in ("mul", "div", "__mul__", "__truediv__"):
            return "scale"
        if name in _PASS_METHODS:
            return "pass"
        return "other"
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, nn.Dropout):
            return "pass"
        return "other"
    return "other"


Dim = int | str  # a concrete size, or the text of a data-dependent symbolic size


def _dim(size: Any) -> Dim:
    if isinstance(size, int):
        return size
    hint = getattr(getattr(size, "node", None), "hint", None)
    return int(hint) if hint is not None else str(size)


def tensor_shape(node: Any) -> tuple[Dim, ...] | None:
    """Shape of a node's tensor value (export ``val`` or ShapeProp ``tensor_meta``).

    Data-dependent sizes (e.g. Mochi's mask-selected text tokens) stay symbolic, as text,
    so that two sizes can still be compared for equality.
    """
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(_dim(s) for s in val.shape)
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def owner_path(node: fx.Node) -> tuple[str, str]:
    """(qualified path, class name) of the innermost module whose forward produced ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    path = _clean_path(str(path))
    cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].strip("'>")
    return path, cls_name


def _clean_path(path: str) -> str:
    """fx paths are already qualified names; strict export prefixes them (``L['self'].``)."""
    for prefix in ("L['self'].", "L__self__.", "L__self___"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path
