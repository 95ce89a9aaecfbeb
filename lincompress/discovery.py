"""Find the attention in a model and classify each call site.

A site is an attention call inside some module's forward: an SDPA call, or a
hand-written ``matmul -> [scale] -> softmax -> matmul`` chain (the vocabulary of
``attention_ops``). Discovery reads the model the first way that works
(``graph.trace_model``: torch.fx, torch.export, else one recorded eager forward) and
always runs one eager forward under the router's interceptor, which fixes each
site's name ``"<owner path>#<index>"`` (the owner is the innermost module running,
the index counts attention calls inside one run of its forward: the numbers the
router counts), its run-time shapes, its mask and its FLOPs.

Each site is classified by tensor provenance (``provenance.Provenance.classify``,
the same rule on graph and eager paths): q and k projected from one stream → self,
or joint when that stream is (anywhere upstream) a token-axis concatenation of
differently-sourced streams; from different sequences → cross; q and k each a
concatenation → joint. A site the rule cannot follow is *unsure*; unsure sites, and
sites whose mask linear attention cannot honour (additive bias, causal or windowed
patterns), are not candidates unless named in ``include``.

FLOPs: PyTorch's ``FlopCounterMode`` counts CPU SDPA as zero, so every attention call
is counted analytically (``attention_flops``) and replaces what the counter gave it;
shares are then at most 100 % by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import fx, nn

from lincompress.attention_ops import heads_tokens_dim, matmul_operands
from lincompress.eager_trace import EagerRecording, run_forward
from lincompress.config import Arg, ArgumentError, literal
from lincompress.errors import LinCompressError, NoAttentionError
from lincompress.graph import TracedGraph, graph_provenance, op_kind, owner_path, tensor_shape, trace_model
from lincompress.provenance import Provenance, Verdict
from lincompress.target import Target

KINDS: tuple[str, ...] = ("self", "cross", "joint")
CANDIDATE_KINDS: tuple[str, ...] = ("self", "joint")
LINEAR_MASKS: tuple[str, ...] = ("", "padding")  # masks linear attention honours (none, or dropped keys)
# nn.MultiheadAttention computes its projections and attention inside one PyTorch function, which the
# router sees only as a whole: its sites are listed but cannot become linear.
REWRITABLE_PATTERNS: tuple[str, ...] = ("sdpa", "matmul_softmax")


@dataclass
class SiteInfo:
    """One attention call site, as recorded in reports and artifacts.

    Fields after ``causal`` were added later and have defaults, so records written by
    older versions still load; ``from_dict`` ignores keys it does not know (records
    written by newer versions) and names missing required ones in one line.
    """

    name: str  # "<owner path>#<call index>"
    owner: str
    owner_class: str
    call_index: int
    pattern: str  # "sdpa" | "matmul_softmax" | "mha" (F.multi_head_attention_forward: never rewritten)
    kind: str  # "self" | "cross" | "joint"
    num_heads: int
    head_dim: int
    q_len: int
    kv_len: int
    flops: float
    flops_share: float
    causal: bool = False
    sure: bool = True  # False: the provenance rule could not decide; see ``note``
    note: str = ""
    mask: str = ""  # "" none | "padding" (keys dropped) | "bias" (additive scores) | "pattern" (causal/windowed)
    included: bool = False  # named by the user (``include``): a candidate whatever the rule says

    @property
    def candidate(self) -> bool:
        if self.causal or self.pattern not in REWRITABLE_PATTERNS:
            return False
        if self.included:
            return True
        return self.kind in CANDIDATE_KINDS and self.sure and self.mask in LINEAR_MASKS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteInfo:
        if not isinstance(data, dict):
            raise LinCompressError(f"a site record must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise LinCompressError(f"site record {data.get('name', '?')!r} lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


_REQUIRED = ("name", "owner", "owner_class", "call_index", "pattern", "kind", "num_heads", "head_dim", "q_len",
             "kv_len", "flops", "flops_share")


def attention_flops(
    batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, value_dim: int | None = None,
    mode: str = "softmax",
) -> float:
    """Multiply-adds x 2 of one attention call.

    softmax: QK^T and PV, ``2·Nq·Nk·(Dk + Dv)`` per head (``4·Nq·Nk·D`` when Dk = Dv);
    linear: ``S = Σ φ(k) v^T`` and ``φ(q) S``, ``2·N·Dk·Dv`` each (``4·N·D·Dv``), plus the
    normaliser's ``2·N·Dk``.
    """
    dv = head_dim if value_dim is None else value_dim
    if mode == "softmax":
        return 2.0 * batch * heads * q_len * kv_len * (head_dim + dv)
    if mode == "linear":
        return 2.0 * batch * heads * (kv_len * head_dim * dv + q_len * head_dim * dv + q_len * head_dim)
    raise ValueError(f"mode must be 'softmax' or 'linear', got {mode!r}")


def _call_flops(q_shape: tuple, k_shape: tuple, v_shape: tuple) -> float | None:
    """Analytic softmax FLOPs of one call from its shapes; None when a size is data-dependent."""
    heads, q_len, dk = heads_tokens_dim(q_shape)
    _, kv_len, _ = heads_tokens_dim(k_shape)
    dv = v_shape[-1]
    dims = (q_shape[0], heads, q_len, kv_len, dk, dv)
    if not all(isinstance(d, int) for d in dims):
        return None
    return attention_flops(q_shape[0] if len(q_shape) == 4 else 1, heads if len(q_shape) == 4 else q_shape[0],
                           q_len, kv_len, dk, dv)


def _size(dim: Any) -> int:
    """Report a data-dependent size as -1."""
    return dim if isinstance(dim, int) else -1


@dataclass
class _Found:
    """One attention call before it becomes a SiteInfo."""

    owner: str
    owner_class: str
    index: int
    pattern: str
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple
    causal: bool
    verdict: Verdict
    mask: str = ""
    counted_flops: float = 0.0


# -- graph path ---------------------------------------------------------------------------------------


@dataclass
class _GraphSite:
    node: fx.Node  # the node that produces the attention output (sdpa, or the second matmul)
    q: fx.Node
    k_source: fx.Node  # k (sdpa) or k^T (pattern)
    v: fx.Node
    k_shape: tuple
    pattern: str
    causal: bool
    projected: bool = True  # False: q/k are the inputs of an nn.MultiheadAttention module


def _scalar_operand(node: fx.Node) -> bool:
    return all(not isinstance(a, fx.Node) or tensor_shape(a) in ((), None) for a in node.args[1:])


def _graph_sites(gm: fx.GraphModule) -> list[_GraphSite]:
    modules = dict(gm.named_modules())
    sites = []
    for node in gm.graph.nodes:
        kind = op_kind(node, modules)
        if kind == "sdpa":
            q, k, v = node.args[:3]
            causal = bool(node.kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False))
            pattern = "mha" if "multi_head_attention_forward" in str(node.meta.get("stack_trace", "")) else "sdpa"
            sites.append(_GraphSite(node, q, k, v, tensor_shape(k), pattern, causal))
        elif kind == "mha":  # fx keeps nn.MultiheadAttention as one call_module node
            q, k, v = node.args[:3]
            sites.append(_GraphSite(node, q, k, v, tensor_shape(k), "mha", False, projected=False))
        elif kind == "softmax":
            site = _pattern_at(node, modules)
            if site is not None:
                sites.append(site)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(sites, key=lambda s: order[s.node])


def _data_users(node: fx.Node) -> list[fx.Node]:
    """Users that compute with the value (export adds ``_assert_tensor_metadata`` checks as users too)."""
    return [u for u in node.users if not str(u.target).startswith(("aten._assert", "_assert"))]


def _pattern_at(softmax: fx.Node, modules: dict[str, nn.Module]) -> _GraphSite | None:
    """The ``matmul -> [scale|pass]* -> softmax -> [pass]* -> matmul`` chain through this softmax, if any."""
    scores = softmax.args[0]
    while isinstance(scores, fx.Node) and (
        op_kind(scores, modules) == "pass" or (op_kind(scores, modules) == "scale" and _scalar_operand(scores))
    ):
        scores = scores.args[0]
    if not isinstance(scores, fx.Node) or op_kind(scores, modules) != "matmul":
        return None
    probs = softmax
    while len(_data_users(probs)) == 1 and op_kind(_data_users(probs)[0], modules) == "pass":
        probs = _data_users(probs)[0]
    consumer = next((u for u in _data_users(probs) if op_kind(u, modules) == "matmul" and u.args[0] is probs), None)
    if consumer is None:
        return None
    try:
        q, kt = matmul_operands(scores.target, scores.args)
    except IndexError:
        return None
    if "beta" in scores.kwargs and scores.kwargs["beta"] != 0:
        return None
    kt_shape = tensor_shape(kt)
    if kt_shape is None or len(kt_shape) < 2:
        return None
    k_shape = (*kt_shape[:-2], kt_shape[-1], kt_shape[-2])
    return _GraphSite(consumer, q, kt, consumer.args[1], k_shape, "matmul_softmax", False)


def _from_graph(traced: TracedGraph, recording: EagerRecording) -> list[_Found]:
    gm = traced.graph_module
    graph_sites = _graph_sites(gm)
    prov, nodes = graph_provenance(gm, traced.user_inputs)
    calls = recording.calls
    matched = len(calls) == len(graph_sites) and all(c.pattern == g.pattern for c, g in zip(calls, graph_sites))
    found, counters = [], {}
    for i, g in enumerate(graph_sites):
        q_shape, k_shape, v_shape = tensor_shape(g.q), g.k_shape, tensor_shape(g.v)
        _, q_len, _ = heads_tokens_dim(q_shape)
        _, kv_len, _ = heads_tokens_dim(k_shape)
        same_length = None
        if matched:  # the graph's sizes may be symbolic: compare the run-time lengths
            same_length = heads_tokens_dim(calls[i].q_shape)[1] == heads_tokens_dim(calls[i].k_shape)[1]
        verdict = prov.classify(nodes[g.q], nodes[g.k_source], q_len, kv_len, same_length=same_length,
                                projected=g.projected)
        if matched:
            c = calls[i]
            found.append(_Found(c.owner, c.owner_class, c.index, c.pattern, c.q_shape, c.k_shape, c.v_shape,
                                c.causal or g.causal, verdict, c.mask, c.counted_flops))
            continue
        owner, owner_cls = owner_path(g.node)
        index = counters.get(owner, 0)
        counters[owner] = index + 1
        found.append(_Found(owner, owner_cls, index, g.pattern, q_shape, k_shape, v_shape, g.causal, verdict))
    return found


# -- eager path ---------------------------------------------------------------------------------------


def _from_recording(recording: EagerRecording) -> list[_Found]:
    prov: Provenance = recording.provenance
    found = []
    for c in recording.calls:
        _, q_len, _ = heads_tokens_dim(c.q_shape)
        _, kv_len, _ = heads_tokens_dim(c.k_shape)
        verdict = prov.classify(c.q, c.k, q_len, kv_len, projected=c.pattern != "mha")
        found.append(_Found(c.owner, c.owner_class, c.index, c.pattern, c.q_shape, c.k_shape, c.v_shape, c.causal,
                            verdict, c.mask, c.counted_flops))
    return found


# -- sites ----------------------------------------------------------------------------------------------


def _sites(found: list[_Found], recording: EagerRecording) -> list[SiteInfo]:
    """One SiteInfo per (owner, index): an owner run more than once per forward repeats its sites."""
    analytic = [_call_flops(f.q_shape, f.k_shape, f.v_shape) or 0.0 for f in found]
    # the counter gives CPU SDPA 0 FLOPs: replace what it counted for each SDPA call by the analytic count (an
    # mha call's count also holds its projections, so its attention is added); patterns are counted right
    sdpa_counted = sum(f.counted_flops for f in found if f.pattern == "sdpa")
    sdpa_analytic = sum(a for f, a in zip(found, analytic) if f.pattern in ("sdpa", "mha"))
    total = max(recording.total_flops - sdpa_counted + sdpa_analytic, sum(analytic))
    by_name: dict[str, SiteInfo] = {}
    for f, flops in zip(found, analytic):
        name = f"{f.owner}#{f.index}"
        if name in by_name:
            by_name[name].flops += flops
            by_name[name].flops_share = by_name[name].flops / total if total > 0 else 0.0
            continue
        heads, q_len, head_dim = heads_tokens_dim(f.q_shape)
        _, kv_len, _ = heads_tokens_dim(f.k_shape)
        by_name[name] = SiteInfo(
            name=name, owner=f.owner, owner_class=f.owner_class, call_index=f.index, pattern=f.pattern,
            kind=f.verdict.kind, num_heads=_size(heads), head_dim=_size(head_dim), q_len=_size(q_len),
            kv_len=_size(kv_len), flops=flops, flops_share=flops / total if total > 0 else 0.0, causal=f.causal,
            sure=f.verdict.sure, note=f.verdict.note, mask=f.mask,
        )
    return list(by_name.values())


def _apply_include(sites: list[SiteInfo], include: Iterable[str]) -> None:
    names = list(include)
    known = {s.name: s for s in sites}
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = literal(f"{', '.join(unknown[:5])} (its sites: {', '.join(list(known)[:8])}"
                         f"{', ...' if len(known) > 8 else ''})")
        raise ArgumentError("{} names sites the model does not have: " + listed, Arg("include"))
    for name in names:
        site = known[name]
        if site.causal:
            raise LinCompressError(f"site {name} is causal attention; linear attention here is bidirectional, "
                                   "so it cannot be included")
        if site.pattern not in REWRITABLE_PATTERNS:
            raise LinCompressError(f"site {name} is an nn.MultiheadAttention call, whose attention runs inside "
                                   "PyTorch's fused function; it cannot be included (use scaled_dot_product_attention)")
        site.included = True


_NO_COUNT = ("FLOPs share unknown: the forward cannot run under interception (flex_attention), so PyTorch's "
             "FLOP counter cannot count it")


def find_attention_sites(
    target: Target, traced: TracedGraph | None = None, *, include: Iterable[str] = (),
) -> list[SiteInfo]:
    """All attention call sites of ``target.model``, in execution order, classified.

    ``traced``: how the model was read (``graph.trace_model``; read here when omitted).
    ``include``: site names to make candidates whatever the rule says (unsure sites,
    masked sites, or cross-attention the user wants linear); unknown names and causal
    sites are one-line errors.
    """
    kwargs = target.inputs(1)
    traced = traced or trace_model(target.model, kwargs)
    if traced.method == "eager":
        recording = traced.recording
        found = _from_recording(recording)
    else:
        recording = traced.recording if traced.measured else run_forward(target.model, kwargs, provenance=False)
        found = _from_graph(traced, recording or EagerRecording([], 0.0))
    if not found:
        raise NoAttentionError(
            f"no attention found in {type(target.model).__name__}: no scaled_dot_product_attention call and no "
            "matmul -> softmax -> matmul pattern; lincompress needs a model with softmax attention"
        )
    sites = _sites(found, recording or EagerRecording([], 0.0))
    if recording is None:
        for s in sites:
            s.flops_share = 0.0
            s.note = (s.note + "; " if s.note else "") + _NO_COUNT
    _apply_include(sites, include)
    return sites


def token_summary(sites: list[SiteInfo]) -> dict[str, int]:
    """Query tokens per kind: the sequence lengths attention runs over (the cost linear attention removes)."""
    summary: dict[str, int] = {}
    for s in sites:
        summary[s.kind] = max(summary.get(s.kind, 0), s.q_len)
    return summary

