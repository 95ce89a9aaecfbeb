"""Read a model for discovery: a torch.fx graph if one can be built, else one recorded eager forward.

``trace_model`` tries, in order, ``torch.fx.symbolic_trace`` (Python-level graph, works
on plain hand-written DiTs), ``torch.export`` (ATen graph; traces most diffusers DiTs
despite their control flow) and, when both give up on Python control flow over
tensors, one eager forward recorded by ``eager_trace`` (the router's interception).
Graphs carry ``nn_module_stack`` and tensor shapes; ``op_kind`` maps either IR's
nodes to the roles of the one attention vocabulary (``attention_ops``), and
``graph_provenance`` turns a graph into the same provenance Nodes the eager path
records, so that both paths classify by one rule.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lincompress.attention_ops import role_of, role_of_method
from lincompress.eager_trace import EagerRecording, record_forward, run_forward
from lincompress.errors import TraceError
from lincompress.provenance import Dim, Node, Provenance

METHODS: tuple[str, ...] = ("fx", "export", "eager")


@dataclass
class TracedGraph:
    """How discovery read the model: ``method`` is "fx", "export" (``graph_module`` set) or "eager" (``recording``)."""

    graph_module: fx.GraphModule | None
    method: str
    user_inputs: frozenset[str] = frozenset()  # placeholder names that are model inputs (not lifted weights)
    recording: EagerRecording | None = None  # the run-time record (None when the forward resists interception)
    fallback_reasons: dict[str, str] = field(default_factory=dict)  # method -> why it did not trace
    measured: bool = False  # ``recording`` is the record of a run (not just absent)


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


_NOISY_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export", "torch._export",
                  "torch._subclasses.fake_tensor")


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """A failed export logs and prints whole graphs; discovery reports the failure in one line instead."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR + 1)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.export prints the partial graph of a failure
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def trace_model(model: nn.Module, kwargs: dict[str, Any], methods: Sequence[str] = METHODS) -> TracedGraph:
    """The first of ``methods`` that reads the model; one-line ``TraceError`` naming what failed when none does.

    One recorded eager forward runs first, always: it fills the model's lazy caches
    with real tensors before fx or export could fill them with proxies or fake tensors
    (BriaFibo2's RoPE table), it is the run-time record discovery needs on every path,
    and a model that does not run at all fails here, naming the module and the call.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty sequence of {METHODS}, got {list(methods)}")
    graph_first = any(m != "eager" for m in methods)
    recording = run_forward(model, kwargs, provenance=not graph_first)
    reasons: dict[str, str] = {}
    for method in methods:
        if method == "eager":
            if recording is None:
                reasons["eager"] = "its forward cannot run under interception (flex_attention)"
                continue
            if graph_first:
                recording = record_forward(model, kwargs, provenance=True)
            return TracedGraph(None, "eager", recording=recording, fallback_reasons=reasons, measured=True)
        try:
            with torch.no_grad():
                if method == "fx":
                    gm = _symbolic_trace(model, kwargs)
                    user = frozenset(n.name for n in gm.graph.nodes if n.op == "placeholder")
                else:
                    with _quiet_torch_logs():
                        program = torch.export.export(model, (), kwargs, strict=False)
                    gm, user = program.graph_module, frozenset(program.graph_signature.user_inputs)
            return TracedGraph(gm, method, user, recording, reasons, measured=True)
        except Exception as error:  # noqa: BLE001 - fall through to the next method, report all below
            where = _failing_module(error)
            reasons[method] = (f"{where}: " if where else "") + _first_line(error)[:200]
    said = "; ".join(f"{m} said '{r[:240]}'" for m, r in reasons.items())
    raise TraceError(f"could not trace {type(model).__name__}: {said}; make its forward traceable with torch.export "
                     "(no data-dependent Python control flow), or let discovery run it (methods including 'eager')")


def _failing_module(error: BaseException) -> str | None:
    tb = error.__traceback__
    name = None
    while tb is not None:
        self_obj = tb.tb_frame.f_locals.get("self")
        if isinstance(self_obj, nn.Module):
            name = type(self_obj).__name__
        tb = tb.tb_next
    return name


def op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The node's role in the attention vocabulary (sdpa / matmul / softmax / scale / pass / linear / cat / other)."""
    if node.op == "call_function":
        return role_of(node.target)
    if node.op == "call_method":
        return role_of_method(str(node.target))
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, nn.MultiheadAttention):
            return "mha"
        if isinstance(module, nn.Dropout):
            return "pass"
    return "other"


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


def _is_tensor_value(node: fx.Node) -> bool:
    """A tensor or a tuple of tensors (split / chunk outputs), not a symbolic size."""
    val = node.meta.get("val", node.meta.get("tensor_meta"))
    if isinstance(val, torch.Tensor) or hasattr(val, "shape"):  # (TensorMetadata is a named tuple)
        return True
    if isinstance(val, (list, tuple)):
        return any(isinstance(v, torch.Tensor) or hasattr(v, "shape") for v in val)
    return False


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if _is_tensor_value(n) else None)
    return found


def _floating(node: fx.Node) -> bool:
    val = node.meta.get("val", node.meta.get("tensor_meta"))
    dtype = getattr(val, "dtype", None)
    return dtype is None or dtype.is_floating_point or dtype.is_complex


def graph_provenance(gm: fx.GraphModule, user_inputs: frozenset[str]) -> tuple[Provenance, dict[fx.Node, Node]]:
    """The graph as provenance Nodes (the eager path's vocabulary), in graph order."""
    modules = dict(gm.named_modules())
    prov = Provenance()
    nodes: dict[fx.Node, Node] = {}
    for n in gm.graph.nodes:
        if n.op == "output":
            continue
        shape = tensor_shape(n)
        if n.op == "placeholder":
            nodes[n] = prov.add("other", (), shape, leaf="input" if n.name in user_inputs else "param", label=n.name,
                                floating=_floating(n))
            continue
        if n.op == "get_attr":
            nodes[n] = prov.add("other", (), shape, leaf="param", label=str(n.target))
            continue
        role = op_kind(n, modules)
        inputs = _tensor_inputs(n)
        if n.op == "call_function" and n.target is torch.ops.aten.addmm.default and len(inputs) == 3:
            inputs = [inputs[1], inputs[2], inputs[0]]  # (activation, weight, bias), as F.linear
        cat_dim = None
        if role == "cat":
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            cat_dim = dim if isinstance(dim, int) else None
        nodes[n] = prov.add(role, tuple(nodes[i] for i in inputs if i in nodes), shape, cat_dim=cat_dim,
                            label=str(n.target), floating=_floating(n))
    return prov, nodes


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
