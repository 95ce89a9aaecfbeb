"""What an attention call looks like: one op vocabulary and one eager interceptor.

Three readers must agree on what counts as "an attention call": graph discovery
(torch.fx / ATen nodes, ``graph.op_kind``), eager discovery (one forward under
``discovery``'s recorder) and the router that sends calls to hybrid sites at run time
(``attention.SiteRouter``). They all read the role tables below, and the two eager
readers are both ``AttentionInterceptor``: SDPA calls, and hand-written
``matmul -> [scale | pass]* -> softmax -> [pass]* -> matmul`` chains followed by
tensor identity. So the call discovery numbers ``i`` inside a module's forward is the
call the router routes to site ``i``.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten

ROLES: tuple[str, ...] = ("sdpa", "mha", "matmul", "softmax", "scale", "pass", "linear", "cat", "assign", "other")

# Python-level callables: what TorchFunctionMode sees in eager code and what torch.fx
# records as call_function targets. Tensor methods also give the fx call_method names.
_FUNCTIONS: dict[str, frozenset[Callable]] = {
    "sdpa": frozenset({F.scaled_dot_product_attention}),
    # nn.MultiheadAttention's functional form: attention with its projections inside one PyTorch function
    "mha": frozenset({F.multi_head_attention_forward}),
    "matmul": frozenset({torch.matmul, Tensor.matmul, Tensor.__matmul__, operator.matmul, torch.bmm, Tensor.bmm,
                         torch.baddbmm, Tensor.baddbmm}),
    "softmax": frozenset({torch.softmax, Tensor.softmax, F.softmax, torch.special.softmax}),
    "scale": frozenset({torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, operator.mul,
                        torch.div, Tensor.div, Tensor.__truediv__, operator.truediv}),
    "pass": frozenset({F.dropout, Tensor.to, Tensor.type, Tensor.type_as, Tensor.float, Tensor.half,
                       Tensor.bfloat16, Tensor.contiguous, Tensor.clone}),
    "linear": frozenset({F.linear}),
    "cat": frozenset({torch.cat, torch.concat, torch.concatenate}),
    # writes of a value into part of a buffer: how some models concatenate streams (Lumina 2 packs
    # text and image tokens into one zero buffer, slice by slice)
    "assign": frozenset({Tensor.__setitem__, torch.slice_scatter, torch.select_scatter, Tensor.index_put_,
                         Tensor.index_put, torch.index_put, torch.index_copy, Tensor.index_copy,
                         Tensor.index_copy_}),
}
# ATen overloads: what a torch.export graph holds for the same roles.
_ATEN: dict[str, frozenset[Any]] = {
    "sdpa": frozenset({aten.scaled_dot_product_attention.default,
                       aten._scaled_dot_product_flash_attention_for_cpu.default,
                       aten._scaled_dot_product_efficient_attention.default,
                       aten._scaled_dot_product_flash_attention.default,
                       aten._scaled_dot_product_cudnn_attention.default}),
    "matmul": frozenset({aten.matmul.default, aten.bmm.default, aten.baddbmm.default}),
    "softmax": frozenset({aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}),
    "scale": frozenset({aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar}),
    "pass": frozenset({aten.dropout.default, aten._to_copy.default, aten.clone.default, aten.alias.default,
                       aten.contiguous.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device,
                       aten.type_as.default}),
    "linear": frozenset({aten.linear.default, aten.addmm.default}),
    "cat": frozenset({aten.cat.default, aten.concat.default}),
    "assign": frozenset({aten.slice_scatter.default, aten.select_scatter.default, aten.index_put.default,
                         aten.index_put_.default, aten.index_copy.default, aten.index_copy_.default}),
}
_ROLE_OF: dict[Any, str] = {f: role for role, table in _FUNCTIONS.items() for f in table}
_ROLE_OF.update({op: role for role, table in _ATEN.items() for op in table})
_METHOD_ROLE: dict[str, str] = {
    f.__name__: role for role, table in _FUNCTIONS.items() for f in table if getattr(Tensor, f.__name__, None) is f
}
# Where the two operands of a scores / output matmul sit (baddbmm's first argument is the bias).
_MATMUL_OPERANDS: dict[Any, tuple[int, int]] = {torch.baddbmm: (1, 2), Tensor.baddbmm: (1, 2),
                                                 aten.baddbmm.default: (1, 2)}

SDPA_ARGUMENTS: tuple[str, ...] = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")


def role_of(target: Any) -> str:
    """The role of a Python callable or ATen overload (``other`` when attention does not care)."""
    try:
        return _ROLE_OF.get(target, "other")
    except TypeError:  # unhashable target
        return "other"


def role_of_method(name: str) -> str:
    """The role of an fx ``call_method`` target (a Tensor method name)."""
    return _METHOD_ROLE.get(name, "other")


def matmul_operands(target: Any, args: tuple) -> tuple[Any, Any]:
    """The two multiplied operands of a matmul-role call."""
    first, second = _MATMUL_OPERANDS.get(target, (0, 1))
    return args[first], args[second]


def bind_sdpa(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """SDPA's arguments by name, however the call passed them."""
    return dict(zip(SDPA_ARGUMENTS, args)) | kwargs


@dataclass
class AttentionCall:
    """One attention call seen in eager code.

    ``k`` is in SDPA layout ([B, H, Nk, D] or [B*H, Nk, D]) except for ``mha`` calls
    (``F.multi_head_attention_forward``: q/k/v are its (L, N, E) inputs, projections
    still to come); ``k_source`` is the tensor the model made (``k`` for SDPA, ``k^T``
    for a hand-written chain); ``run_original`` computes what the model's own code
    computes at this point (for a hand-written chain: the final ``probs @ v``, the
    scores and softmax having already run).
    """

    pattern: str  # "sdpa" | "matmul_softmax" | "mha"
    q: Tensor
    k: Tensor
    v: Tensor
    attn_mask: Tensor | None
    is_causal: bool
    run_original: Callable[[], Tensor]
    k_source: Tensor | None = None
    num_heads: int | None = None  # mha only

    def sdpa_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(q, k, v) shapes in SDPA layout ([B, H, N, D] or [B*H, N, D])."""
        if self.pattern != "mha":
            return tuple(self.q.shape), tuple(self.k.shape), tuple(self.v.shape)

        def layout(t: Tensor) -> tuple[int, ...]:
            tokens, batch, width = (t.shape[0], 1, t.shape[-1]) if t.dim() == 2 else tuple(t.shape)
            return batch, self.num_heads, tokens, width // self.num_heads
        return layout(self.q), layout(self.k), layout(self.v)


_MHA_ARGUMENTS = tuple(inspect.signature(F.multi_head_attention_forward).parameters)


class AttentionInterceptor(TorchFunctionMode):
    """Recognise attention calls while eager code runs and hand each to ``attention``.

    Subclasses override ``attention(call) -> Tensor`` (the router: route to a site;
    discovery: record) and optionally ``observe(func, args, kwargs, out)``, called for
    every other op. Chains are followed by tensor identity: a matmul output becomes
    "scores" (``baddbmm`` adding a mask too: the mask is kept), scaling/casting keeps
    it scores, softmax of scores becomes "probs", casting/dropout keeps it probs, and
    ``probs @ v`` completes the call. Entries are dropped once their chain completes,
    so a whole-model forward keeps no score tensors alive.
    """

    def __init__(self, track_patterns: bool = True) -> None:
        super().__init__()
        self.track_patterns = track_patterns
        self._scores: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []  # (scores, q, kT, mask)
        self._probs: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []  # (probs, q, kT, mask)

    def attention(self, call: AttentionCall) -> Tensor:
        return call.run_original()

    def observe(self, func: Any, args: tuple, kwargs: dict[str, Any], out: Any) -> None:
        """Called after every op that is not a completed attention call (default: nothing)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        role = role_of(func)
        if role == "sdpa":
            bound = bind_sdpa(args, kwargs)
            return self.attention(AttentionCall(
                "sdpa", bound["query"], bound["key"], bound["value"], bound.get("attn_mask"),
                bool(bound.get("is_causal", False)), lambda: func(*args, **kwargs),
            ))
        if role == "mha":
            bound = dict(zip(_MHA_ARGUMENTS, args)) | kwargs
            return self.attention(AttentionCall(
                "mha", bound["query"], bound["key"], bound["value"], bound.get("attn_mask"),
                bool(bound.get("is_causal", False)), lambda: func(*args, **kwargs), num_heads=int(bound["num_heads"]),
            ))
        if not self.track_patterns or role not in ("matmul", "scale", "pass", "softmax"):
            out = run_unchanged(func, args, kwargs)
            self.observe(func, args, kwargs, out)
            return out
        return self._track(func, role, args, kwargs)

    @staticmethod
    def _find(table: list[tuple], t: Any) -> tuple | None:
        for entry in table:
            if entry[0] is t:
                return entry[1:]
        return None

    def _forget(self, q: Tensor) -> None:
        self._scores = [e for e in self._scores if e[1] is not q]
        self._probs = [e for e in self._probs if e[1] is not q]

    def _track(self, func, role, args, kwargs):
        if role == "matmul" and len(args) >= 2:
            mask = None
            if func in _MATMUL_OPERANDS:
                if len(args) < 3:
                    return self._plain(func, args, kwargs)
                mask = args[0] if kwargs.get("beta", 1) != 0 and isinstance(args[0], Tensor) else None
            a, b = matmul_operands(func, args)
            hit = self._find(self._probs, a)
            if hit is not None and mask is None:
                q, kt, chain_mask = hit
                self._forget(q)
                return self.attention(AttentionCall(
                    "matmul_softmax", q, kt.transpose(-2, -1), b, chain_mask, False,
                    lambda: run_unchanged(func, args, kwargs), kt,
                ))
            out = run_unchanged(func, args, kwargs)
            if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dim() >= 2 and b.dim() >= 2:
                self._scores.append((out, a, b, mask))
            self.observe(func, args, kwargs, out)
            return out
        out = run_unchanged(func, args, kwargs)
        source = args[0] if args else None
        if role in ("scale", "pass"):
            hit = self._find(self._scores, source)
            if hit is not None and (role == "pass" or not isinstance(args[1], Tensor) or args[1].dim() == 0):
                self._scores.append((out, *hit))
            hit = self._find(self._probs, source)
            if hit is not None and role == "pass":
                self._probs.append((out, *hit))
        elif role == "softmax":
            hit = self._find(self._scores, source)
            if hit is not None:
                self._probs.append((out, *hit))
        self.observe(func, args, kwargs, out)
        return out

    def _plain(self, func, args, kwargs):
        out = run_unchanged(func, args, kwargs)
        self.observe(func, args, kwargs, out)
        return out


def run_unchanged(func, args, kwargs):
    """Run an intercepted function unchanged.

    Tensor methods are re-dispatched as method calls: some (``Tensor.unflatten``) are
    Python wrappers around ``super()`` that torch.compile cannot inline as plain functions.
    """
    name = getattr(func, "__name__", None)
    if args and isinstance(args[0], Tensor) and name and getattr(Tensor, name, None) is func:
        return getattr(args[0], name)(*args[1:], **kwargs)
    return func(*args, **kwargs)


def heads_tokens_dim(shape: tuple) -> tuple[Any, Any, Any]:
    """(heads, tokens, head_dim) of an SDPA-layout tensor ([B, H, N, D] or [B*H, N, D])."""
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    return 1, shape[-2], shape[-1]
