"""Find the attention in a traced model and classify each call site.

A site is an attention call inside some module's forward: an SDPA node, or a
hand-written ``matmul -> [scale] -> softmax -> matmul`` chain. Each is mapped to its
owning module (``nn_module_stack``), numbered by call order inside that module (the
order ``SiteRouter`` counts at run time), and classified:

* ``cross``: keys come from another sequence (different token count, or q and k
  projected from different tensors);
* ``joint``: queries and keys run over a concatenation of two streams (MMDiT:
  the concat happens right after the q/k/v projections, or right before them);
* ``self``: everything else with q and k from the same tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from lincompress.errors import NoAttentionError
from lincompress.graph import TracedGraph, op_kind, owner_path, tensor_shape, trace_model
from lincompress.target import Target

KINDS: tuple[str, ...] = ("self", "cross", "joint")
CANDIDATE_KINDS: tuple[str, ...] = ("self", "joint")
_MAX_WALK = 40


@dataclass
class SiteInfo:
    """One attention call site, as recorded in reports and artifacts."""

    name: str  # "<owner path>#<call index>"
    owner: str
    owner_class: str
    call_index: int
    pattern: str  # "sdpa" | "matmul_softmax"
    kind: str  # "self" | "cross" | "joint"
    num_heads: int
    head_dim: int
    q_len: int
    kv_len: int
    flops: float
    flops_share: float
    causal: bool = False

    @property
    def candidate(self) -> bool:
        return self.kind in CANDIDATE_KINDS and not self.causal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteInfo:
        return cls(**data)


@dataclass
class _RawSite:
    node: fx.Node  # the node that produces the attention output (sdpa, or the second matmul)
    q: fx.Node
    k_shape: tuple[int, ...]
    k_source: fx.Node  # k (sdpa) or k^T (pattern): only used to classify
    v: fx.Node
    pattern: str
    causal: bool


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.args if isinstance(a, fx.Node) and tensor_shape(a) is not None]


def _walk_back(node: fx.Node, kinds: set[str], modules: dict[str, nn.Module]) -> fx.Node:
    """Follow the first tensor input back through ops of the given kinds."""
    for _ in range(_MAX_WALK):
        if op_kind(node, modules) not in kinds:
            return node
        args = _tensor_args(node)
        if not args:
            return node
        node = args[0]
    return node


def _scalar_operand(node: fx.Node) -> bool:
    others = node.args[1:]
    return all(not isinstance(a, fx.Node) or tensor_shape(a) in ((), None) for a in others)


def _pattern_sites(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> list[_RawSite]:
    sites = []
    for node in gm.graph.nodes:
        if op_kind(node, modules) != "softmax":
            continue
        scores = node.args[0]
        while isinstance(scores, fx.Node) and (
            op_kind(scores, modules) == "pass" or (op_kind(scores, modules) == "scale" and _scalar_operand(scores))
        ):
            scores = scores.args[0]
        if not isinstance(scores, fx.Node) or op_kind(scores, modules) != "matmul":
            continue
        probs = node
        while len(probs.users) == 1 and op_kind(next(iter(probs.users)), modules) == "pass":
            probs = next(iter(probs.users))
        consumer = next((u for u in probs.users if op_kind(u, modules) == "matmul" and u.args[0] is probs), None)
        if consumer is None:
            continue
        q, kt, v = scores.args[0], scores.args[1], consumer.args[1]
        kt_shape = tensor_shape(kt)
        if kt_shape is None or len(kt_shape) < 2:
            continue
        k_shape = (*kt_shape[:-2], kt_shape[-1], kt_shape[-2])
        sites.append(_RawSite(consumer, q, k_shape, kt, v, "matmul_softmax", False))
    return sites


def _sdpa_sites(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> list[_RawSite]:
    sites = []
    for node in gm.graph.nodes:
        if op_kind(node, modules) != "sdpa":
            continue
        q, k, v = node.args[:3]
        causal = bool(node.kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False))
        sites.append(_RawSite(node, q, tensor_shape(k), k, v, "sdpa", causal))
    return sites


def _heads_tokens_dim(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(heads, tokens, head_dim) of an SDPA-layout tensor ([B, H, N, D] or [B*H, N, D])."""
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    return 1, shape[-2], shape[-1]


def _is_token_cat(node: fx.Node, tokens: int) -> bool:
    """A concat of >= 2 tensors along an axis whose concatenated size is the token count."""
    parts = node.args[0] if node.args else []
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = tensor_shape(node)
    if not isinstance(parts, (list, tuple)) or len(parts) < 2 or shape is None:
        return False
    part_shapes = [tensor_shape(p) for p in parts]
    if shape[dim] != tokens or any(p is None for p in part_shapes):
        return False
    sizes = [p[dim] for p in part_shapes]
    return all(not isinstance(n, int) or not isinstance(tokens, int) or n < tokens for n in sizes)


def _source(node: fx.Node, tokens: int, modules: dict[str, nn.Module]) -> tuple[str, fx.Node]:
    """Walk from q/k back to ('cat', node) for a token concat, or ('proj', projection input), or ('other', node)."""
    for _ in range(_MAX_WALK):
        kind = op_kind(node, modules)
        if kind == "cat":
            if _is_token_cat(node, tokens):
                return "cat", node
        elif kind == "linear":
            args = _tensor_args(node)
            if node.target is torch.ops.aten.addmm.default and len(args) > 1:
                return "proj", args[1]
            return "proj", args[0]
        elif kind in ("sdpa", "matmul", "softmax") or node.op in ("placeholder", "get_attr"):
            return "other", node
        args = _tensor_args(node)
        if not args:
            return "other", node
        node = args[0]
    return "other", node


def _stream_is_concat(node: fx.Node, tokens: int, modules: dict[str, nn.Module]) -> bool:
    """Is the projection input a concat of streams, seen through norms and modulation (not residual adds)?"""
    full = tensor_shape(node)
    for _ in range(_MAX_WALK):
        kind = op_kind(node, modules)
        if kind == "cat":
            return _is_token_cat(node, tokens)
        if kind in ("linear", "sdpa", "matmul", "softmax") or node.op in ("placeholder", "get_attr"):
            return False
        args = _tensor_args(node)
        if not args:
            return False
        if sum(1 for a in args if tensor_shape(a) == full) >= 2:  # residual add / gating of two streams
            return False
        node = args[0]
    return False


def _classify(raw: _RawSite, modules: dict[str, nn.Module]) -> str:
    q_shape = tensor_shape(raw.q)
    _, q_len, _ = _heads_tokens_dim(q_shape)
    _, kv_len, _ = _heads_tokens_dim(raw.k_shape)
    if q_len != kv_len:
        return "cross"
    q_kind, q_src = _source(raw.q, q_len, modules)
    k_kind, k_src = _source(raw.k_source, kv_len, modules)
    if q_kind == "cat" and k_kind == "cat":
        return "joint"
    if q_kind == "proj" and k_kind == "proj":
        if q_src is not k_src:
            return "cross"
        return "joint" if _stream_is_concat(q_src, q_len, modules) else "self"
    return "self"


def _attention_flops(q_shape: tuple, k_shape: tuple, v_shape: tuple) -> float | None:
    """2 matmuls (QK^T and PV): 2*B*H*Nq*Nk*(Dk + Dv); None when a size is data-dependent."""
    batch = q_shape[0]
    heads, q_len, dk = _heads_tokens_dim(q_shape)
    _, kv_len, dv = _heads_tokens_dim(v_shape)
    dims = (batch, heads, q_len, kv_len, dk, dv)
    if not all(isinstance(d, int) for d in dims):
        return None
    return 2.0 * batch * heads * q_len * kv_len * (dk + dv)


def _size(dim: Any) -> int:
    """Report a data-dependent size as -1."""
    return dim if isinstance(dim, int) else -1


class _SdpaShapeRecorder(TorchFunctionMode):
    """Records (q, k, v) shapes of every SDPA call, in call order: the sizes a graph left data-dependent."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.shapes.append(tuple(tuple(t.shape) for t in args[:3]))
        return func(*args, **(kwargs or {}))


def run_forward_counted(model: nn.Module, kwargs: dict[str, Any]) -> tuple[float, list[tuple[tuple[int, ...], ...]]]:
    """One eager forward: (total FLOPs from PyTorch's FlopCounterMode, SDPA call shapes in order)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter, _SdpaShapeRecorder() as recorder:
        model(**kwargs)
    return float(counter.get_total_flops()), recorder.shapes


def find_attention_sites(target: Target, traced: TracedGraph | None = None) -> list[SiteInfo]:
    """All attention call sites of ``target.model``, in execution order, classified."""
    kwargs = target.inputs(1)
    traced = traced or trace_model(target.model, kwargs)
    gm = traced.graph_module
    modules = dict(gm.named_modules())
    raw = sorted(_sdpa_sites(gm, modules) + _pattern_sites(gm, modules), key=lambda s: _node_order(gm)[s.node])
    if not raw:
        raise NoAttentionError(
            f"no attention found in {type(target.model).__name__}: no scaled_dot_product_attention call and no "
            "matmul -> softmax -> matmul pattern; lincompress needs a model with softmax attention"
        )
    total, sdpa_shapes = run_forward_counted(target.model, kwargs)
    sdpa_raw = [r for r in raw if r.pattern == "sdpa"]
    runtime = dict(zip(map(id, sdpa_raw), sdpa_shapes)) if len(sdpa_shapes) == len(sdpa_raw) else {}
    counters: dict[str, int] = {}
    sites = []
    for r in raw:
        owner, owner_cls = owner_path(r.node)
        index = counters.get(owner, 0)
        counters[owner] = index + 1
        q_shape, k_shape, v_shape = runtime.get(id(r)) or (tensor_shape(r.q), r.k_shape, tensor_shape(r.v))
        heads, q_len, head_dim = _heads_tokens_dim(q_shape)
        _, kv_len, _ = _heads_tokens_dim(k_shape)
        flops = _attention_flops(q_shape, k_shape, v_shape) or 0.0
        sites.append(SiteInfo(
            name=f"{owner}#{index}", owner=owner, owner_class=owner_cls, call_index=index, pattern=r.pattern,
            kind=_classify(r, modules), num_heads=heads, head_dim=head_dim, q_len=_size(q_len), kv_len=_size(kv_len),
            flops=flops, flops_share=flops / total if total > 0 else 0.0, causal=r.causal,
        ))
    return sites


def _node_order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(gm.graph.nodes)}
