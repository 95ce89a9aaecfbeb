"""Read a model by running it: one eager forward under the interceptor the router uses.

When neither torch.fx nor torch.export can build a graph (Python control flow over
tensors: MoE token routing, ``len()`` of traced values, data-dependent RoPE, loops
over variable-length token groups), discovery runs the model once instead. The
``_Recorder`` is an ``AttentionInterceptor`` (the router's own way of recognising
attention calls), and while the forward runs it records

* every attention call, with its owning module (forward pre/post hooks keep the
  module stack, so the owner is the innermost module running, as fx's
  ``nn_module_stack`` says) and its index inside that owner's forward (the number the
  router counts);
* the provenance of every tensor (``provenance.Node``s keyed by tensor identity, held
  weakly so the forward keeps no extra memory), which the classifier reads exactly
  as it reads a graph;
* the FLOPs PyTorch's counter attributes to each attention call (it counts CPU SDPA
  as zero: discovery replaces those with the analytic count).

The same recording, without provenance, gives the graph path its run-time shapes,
masks and FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

from lincompress.attention_ops import AttentionCall, AttentionInterceptor, role_of
from lincompress.errors import TraceError
from lincompress.provenance import Node, Provenance


@dataclass
class EagerCall:
    """One attention call of the recorded forward."""

    owner: str
    owner_class: str
    index: int  # position among the attention calls of this invocation of the owner's forward
    pattern: str
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    v_shape: tuple[int, ...]
    causal: bool
    mask: str  # "" (none) | "padding" | "bias" | "pattern"
    counted_flops: float  # what FlopCounterMode counted for this call
    q: Node | None = None
    k: Node | None = None


@dataclass
class EagerRecording:
    calls: list[EagerCall]
    total_flops: float
    provenance: Provenance | None = None


class EagerForwardError(Exception):
    """The model's own forward failed; ``where`` names the module and the first failing call."""

    def __init__(self, where: str, cause: BaseException) -> None:
        first = str(cause).splitlines()[0] if str(cause) else ""
        super().__init__(f"{where}: {type(cause).__name__}: {first}"[:400])
        self.where = where
        self.cause = cause


def mask_kind(mask: Tensor | None) -> str:
    """"" for no mask; "padding" when it only drops keys (linear attention honours that; an additive mask
    that shifts all kept scores of a query alike counts as one); "bias" for per-key additive scores;
    "pattern" for causal/windowed masks (per-query patterns linear attention cannot honour)."""
    if mask is None:
        return ""
    if mask.dtype == torch.bool:
        keep = mask
    else:
        low = torch.finfo(mask.dtype).min / 2 if mask.is_floating_point() else -1
        keep = mask > low
        values = mask.float()
        spread = (values.masked_fill(~keep, float("-inf")).amax(-1) - values.masked_fill(~keep, float("inf")).amin(-1))
        if bool((spread[keep.any(-1)] != 0).any()):  # scores shifted differently per key: a real bias
            return "bias"
    if keep.dim() < 2:
        return "padding"
    per_key = keep.any(dim=-2, keepdim=True)
    valid_query = keep.any(dim=-1, keepdim=True)
    return "padding" if bool(((keep == per_key) | ~valid_query).all()) else "pattern"


@dataclass
class _Frame:
    path: str
    cls: str
    calls: int = 0


class _Recorder(AttentionInterceptor):
    def __init__(self, model: nn.Module, kwargs: dict[str, Any], counter: FlopCounterMode | None,
                 provenance: bool) -> None:
        super().__init__(track_patterns=True)
        self.counter = counter
        self.calls: list[EagerCall] = []
        self.stack: list[_Frame] = [_Frame("", type(model).__name__)]
        self.failure: str | None = None
        self.graph = Provenance() if provenance else None
        self.nodes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        if self.graph is not None:
            for name, t in [*model.named_parameters(), *model.named_buffers()]:
                self.nodes[t] = self.graph.add("other", (), tuple(t.shape), leaf="param", label=name)
            for key, value in kwargs.items():
                for t in tree_leaves(value):
                    if isinstance(t, Tensor):
                        self.nodes[t] = self.graph.add("other", (), tuple(t.shape), leaf="input", label=key,
                                                       floating=t.is_floating_point())

    # -- module stack ------------------------------------------------------------------------------

    def enter(self, path: str, module: nn.Module) -> None:
        self.stack.append(_Frame(path, type(module).__name__))

    def leave(self) -> None:
        if len(self.stack) > 1:
            self.stack.pop()

    def where(self) -> str:
        frame = self.stack[-1]
        return f"{frame.path or '<root>'} ({frame.cls})"

    # -- provenance --------------------------------------------------------------------------------

    def _node(self, t: Tensor) -> Node:
        node = self.nodes.get(t)
        if node is None:
            node = self.graph.add("other", (), tuple(t.shape), leaf="const", label="constant")
            self.nodes[t] = node
        return node

    def observe(self, func, args, kwargs, out) -> None:
        if self.graph is None:
            return
        in_place = func in (Tensor.__setitem__, Tensor.index_put_, Tensor.index_copy_)
        outs = [args[0]] if in_place and args and isinstance(args[0], Tensor) else [
            t for t in tree_leaves(out) if isinstance(t, Tensor)]
        if not outs:
            return
        inputs = tuple(self._node(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor))
        role = role_of(func)
        cat_dim = None
        if role == "cat":
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            cat_dim = dim if isinstance(dim, int) else None
        label = getattr(func, "__name__", str(func))
        for t in outs:
            self.nodes[t] = self.graph.add(role, inputs, tuple(t.shape), cat_dim=cat_dim, label=label,
                                           floating=t.is_floating_point())

    # -- attention calls ---------------------------------------------------------------------------

    def attention(self, call: AttentionCall) -> Tensor:
        frame = self.stack[-1]
        before = self.counter.get_total_flops() if self.counter is not None else 0
        out = call.run_original()
        counted = (self.counter.get_total_flops() - before) if self.counter is not None else 0
        k_source = call.k_source if call.k_source is not None else call.k
        q_node = k_node = None
        if self.graph is not None:
            q_node, k_node = self._node(call.q), self._node(k_source)
            for t in tree_leaves(out):  # (an mha call returns (output, weights))
                if isinstance(t, Tensor):
                    self.nodes[t] = self.graph.add("sdpa", (q_node, k_node, self._node(call.v)), tuple(t.shape),
                                                   label="attention")
        q_shape, k_shape, v_shape = call.sdpa_shapes()
        self.calls.append(EagerCall(
            owner=frame.path, owner_class=frame.cls, index=frame.calls, pattern=call.pattern,
            q_shape=q_shape, k_shape=k_shape, v_shape=v_shape,
            causal=call.is_causal, mask=mask_kind(call.attn_mask), counted_flops=float(counted), q=q_node, k=k_node,
        ))
        frame.calls += 1
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            return super().__torch_function__(func, types, args, kwargs)
        except Exception:
            if self.failure is None:
                name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
                self.failure = f"{self.where()} at {name}"
            raise


def _install_hooks(model: nn.Module, recorder: _Recorder) -> list[Any]:
    handles = []
    for path, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, p=path: recorder.enter(p, m)))
        handles.append(module.register_forward_hook(lambda m, a, o: recorder.leave(), always_call=True))
    return handles


class _GlobalOnly:
    """FlopCounterMode's module tracker reduced to the one total discovery reads.

    The real tracker hooks every module's inputs for backward, which costs time and
    fails on tensors that require grad but have no grad_fn (BriaFibo2 under no_grad).
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: Any) -> bool:
        return False


def flop_counter() -> FlopCounterMode:
    """PyTorch's FLOP counter, counting the whole forward only (no per-module table)."""
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    return counter


def record_forward(model: nn.Module, kwargs: dict[str, Any], *, provenance: bool = True,
                   count_flops: bool = True) -> EagerRecording:
    """Run ``model(**kwargs)`` once (no grad) and record its attention calls; ``EagerForwardError`` if it fails."""
    counter = flop_counter() if count_flops else None
    recorder = _Recorder(model, kwargs, counter, provenance)
    handles = _install_hooks(model, recorder)
    try:
        with torch.no_grad():
            if counter is not None:
                with counter, recorder:
                    model(**kwargs)
            else:
                with recorder:
                    model(**kwargs)
    except Exception as error:  # noqa: BLE001 - the user's forward: report where it failed, in one line
        raise EagerForwardError(recorder.failure or _module_in_traceback(error, model), error) from error
    finally:
        for h in handles:
            h.remove()
    total = float(counter.get_total_flops()) if counter is not None else 0.0
    return EagerRecording(recorder.calls, total, recorder.graph)


def _module_in_traceback(error: BaseException, model: nn.Module) -> str:
    """The innermost module whose code raised (Python errors raised outside any torch call)."""
    names = {id(m): p for p, m in model.named_modules()}
    where = f"<root> ({type(model).__name__})"
    tb = error.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in names:
            where = f"{names[id(obj)] or '<root>'} ({type(obj).__name__})"
        tb = tb.tb_next
    return where


def run_forward(model: nn.Module, kwargs: dict[str, Any], *, provenance: bool = False) -> EagerRecording | None:
    """``record_forward``, or None when the forward runs but not under interception; one-line ``TraceError``
    naming the module and the first failing call when it does not run at all."""
    try:
        return record_forward(model, kwargs, provenance=provenance)
    except EagerForwardError as error:
        # A torch.compile'd op that failed under interception (flex_attention) leaves dynamo's cache unusable
        # for it: start dynamo afresh (compiled code recompiles on next use) before the plain check.
        torch._dynamo.reset()
        try:
            with torch.no_grad():
                model(**kwargs)
        except Exception:  # noqa: BLE001 - the user's forward itself fails: say where, in one line
            raise TraceError(f"could not run {type(model).__name__}: its forward failed in {error}; "
                             "check that model(**example_inputs(1)) runs") from error
        return None
