"""Tensor provenance, recorded the same way on both discovery paths, and the rule that classifies a site by it.

A ``Node`` is one tensor value: the role of the op that made it (the
``attention_ops`` vocabulary), its tensor inputs in argument order, its shape, and,
for a leaf, what it is (a model input, a parameter, a constant). Graph discovery
builds Nodes from a torch.fx / ATen graph; eager discovery records them while one
forward runs. ``Provenance.classify`` reads only Nodes, so both paths classify alike.

The rule, for an attention call with queries q (``Nq`` tokens) and keys k (``Nk``):

* the *stream* of q (of k) is what it was computed from: walking back through the
  ops a value flows through (views, norms, RoPE, casts), the input of the first
  projection (``linear``, or a matmul with a weight), or the first token-axis
  concatenation of differently-sourced streams, whichever comes first;
* a concatenation is ``torch.cat`` along the token axis, or a buffer filled slice by
  slice (``buf[:, :n] = a; buf[:, n:] = b``);
* two parts of a concatenation are *differently sourced* when both depend on a model
  input and lead back to different tensors (following single-data-input chains:
  ``cat(x[:, :a], x[:, a:])`` is one stream; learned register tokens or padding are
  not a stream);
* ``Nq != Nk`` → **cross** (keys from another sequence), unless q and k are projected
  from the same tensor (queries sliced from the keys' tokens after the projections:
  self, or joint by the upstream rule below), or the keys' stream is a concatenation
  one of whose parts is the queries' own stream → **joint** (image queries over
  [image; text] keys);
* q and k both concatenations → **joint** (MMDiT: streams projected separately, then
  concatenated);
* q and k projected from one stream (the same tensor, or two tensors leading back to
  the same one) → **joint** if that stream anywhere upstream in the forward is a
  token-axis concatenation of differently-sourced streams of ``Nq`` tokens (single-
  stream blocks, however far from the concatenation), else **self**;
* q and k projected from different streams → **cross**;
* anything else (a stream that cannot be followed back to a projection or a
  concatenation) is classified by its best guess but marked *unsure*: it is not a
  candidate unless the user names it (``include``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Dim = int | str  # a concrete size, or the text of a data-dependent symbolic size
_MAX_WALK = 64


@dataclass(eq=False)
class Node:
    """One tensor value in a recorded forward (hashable by identity)."""

    role: str
    inputs: tuple[Node, ...] = ()
    shape: tuple[Dim, ...] | None = None
    cat_dim: int | None = None
    leaf: str = ""  # "input" | "param" | "const" for leaves, "" otherwise
    label: str = ""
    data: bool = False  # depends on a model input
    order: int = 0
    floating: bool = True  # a floating-point value (not an index or mask)

    def __repr__(self) -> str:
        return f"Node({self.role}:{self.label}, shape={self.shape})"


@dataclass(frozen=True)
class Verdict:
    kind: str  # "self" | "cross" | "joint"
    sure: bool = True
    note: str = ""


@dataclass
class Provenance:
    """The recorded forward as Nodes in execution order, and the classification rule over them."""

    nodes: list[Node] = field(default_factory=list)
    _joint_cache: dict[Any, set[int]] = field(default_factory=dict)

    def add(self, role: str, inputs: tuple[Node, ...] = (), shape: tuple[Dim, ...] | None = None, *,
            cat_dim: int | None = None, leaf: str = "", label: str = "", floating: bool = True) -> Node:
        data = leaf == "input" or any(i.data for i in inputs)
        if cat_dim is not None and shape is not None and cat_dim < 0:
            cat_dim += len(shape)
        node = Node(role, inputs, shape, cat_dim, leaf, label, data, len(self.nodes), floating)
        self.nodes.append(node)
        self._joint_cache.clear()
        return node

    # -- following values back ---------------------------------------------------------------------

    @staticmethod
    def _through(node: Node) -> Node | None:
        """The input a value flows through: same shape as the output if one is, data-carrying preferred."""
        if not node.inputs:
            return None
        data = [i for i in node.inputs if i.data]
        for candidates in (data, node.inputs):
            for i in candidates:
                if i.shape == node.shape:
                    return i
        return (data or list(node.inputs))[0]

    def root(self, node: Node) -> Node:
        """Follow single-data-input chains back (views, norms, projections): where this stream starts."""
        for _ in range(_MAX_WALK * 4):
            if node.role == "cat":
                return node
            data = [i for i in node.inputs if i.data]
            if len(data) != 1:
                return node
            node = data[0]
        return node

    def _assigned_roots(self, node: Node, tokens: Dim) -> set[int]:
        """Roots of the streams in a buffer filled by a chain of slice assignments ending at ``node``.

        The values written along the token axis count (a value holding all ``tokens``
        tokens, like RoPE's ``out[..., 0::2] = ...``, writes features, not tokens), and so
        does the buffer itself when it already held a stream
        (``buf = cat(text, padding); buf[:, image_slots] = image``).
        """
        roots: set[int] = set()
        for _ in range(_MAX_WALK * 4):
            if node.role != "assign" or not node.inputs:
                break
            roots.update(id(self.root(v)) for v in node.inputs[1:]
                         if v.data and v.floating and v.shape is not None and tokens not in v.shape)
            node = node.inputs[0]
        if node.data and node.floating:
            roots.add(id(self.root(node)))
        return roots

    def is_joint_cat(self, node: Node, tokens: Dim) -> bool:
        """A token-axis concatenation (``tokens`` long) of at least two differently-sourced streams.

        Also a buffer of ``tokens`` tokens filled slice by slice from two such streams.
        """
        if node.role == "assign":
            return node.shape is not None and tokens in node.shape and len(self._assigned_roots(node, tokens)) >= 2
        if node.role != "cat" or node.shape is None or node.cat_dim is None or len(node.inputs) < 2:
            return False
        dim = node.cat_dim
        if dim >= len(node.shape) or node.shape[dim] != tokens:
            return False
        for part in node.inputs:
            size = part.shape[dim] if part.shape is not None and dim < len(part.shape) else None
            if size is None or (isinstance(size, int) and isinstance(tokens, int) and size >= tokens):
                return False
        roots = {id(self.root(p)) for p in node.inputs if p.data}
        return len(roots) >= 2

    def stream(self, node: Node, tokens: Dim) -> tuple[str, Node]:
        """("proj", projection input) | ("cat", joint concatenation) | ("input", model input) | ("unknown", node)."""
        for _ in range(_MAX_WALK):
            role = node.role
            if role == "linear":
                return "proj", node.inputs[0]
            if role == "matmul" and len(node.inputs) >= 2 and not node.inputs[1].data:
                return "proj", node.inputs[0]
            if role == "cat" and self.is_joint_cat(node, tokens):
                return "cat", node
            if role in ("sdpa", "softmax", "matmul"):
                return "unknown", node
            if node.leaf:
                return ("input" if node.leaf == "input" else "unknown"), node
            nxt = self._through(node)
            if nxt is None:
                return "unknown", node
            node = nxt
        return "unknown", node

    def joint_upstream(self, node: Node, tokens: Dim) -> bool:
        """Is ``node`` (anywhere upstream, through values that keep ``tokens`` in their shape) a joint concatenation?"""
        if tokens not in self._joint_cache:
            marked: set[int] = set()
            for n in self.nodes:  # execution order: inputs before users
                if n.shape is None or tokens not in n.shape:
                    continue
                if self.is_joint_cat(n, tokens) or any(id(i) in marked for i in n.inputs):
                    marked.add(id(n))
            self._joint_cache[tokens] = marked
        return id(node) in self._joint_cache[tokens]

    # -- the rule --------------------------------------------------------------------------------------

    def _has_stream(self, src_kind: str, src: Node, root: Node, tokens: Dim) -> bool:
        """Does the (k) stream ``src`` contain the stream whose root is ``root`` as one of its concatenated parts?"""
        if src_kind not in ("cat", "proj", "input") or not self.is_joint_cat(src, tokens):
            return False
        for part in src.inputs:
            if self.root(part) is root:
                return True
            part_kind, part_src = self.stream(part, part.shape[src.cat_dim] if part.shape else tokens)
            if part_kind in ("proj", "input") and self.root(part_src) is root:
                return True
        return False

    def classify(self, q: Node, k: Node, q_len: Dim, kv_len: Dim, *, same_length: bool | None = None,
                 projected: bool = True) -> Verdict:
        """``same_length``: whether q and k have as many tokens at run time (when the graph's sizes are symbolic);
        ``projected=False``: q and k are the streams themselves (the inputs of ``F.multi_head_attention_forward``)."""
        if projected:
            q_kind, q_src = self.stream(q, q_len)
            k_kind, k_src = self.stream(k, kv_len)
        else:
            (q_kind, q_src), (k_kind, k_src) = ("proj", q), ("proj", k)
        followed = ("proj", "input")
        if not (q_len == kv_len if same_length is None else same_length):
            if q_kind in followed and k_kind in followed and q_src is k_src:
                # queries are some of the keys' own tokens, sliced after the projections (QwenImage 2.1)
                return Verdict("joint" if self.joint_upstream(k_src, kv_len) else "self")
            if q_kind in followed and self._has_stream(k_kind, k_src, self.root(q_src), kv_len):
                return Verdict("joint")  # queries of one stream over keys of [that stream; another]
            return Verdict("cross")
        if q_kind == "cat" and k_kind == "cat":
            return Verdict("joint")
        if q_kind in followed and k_kind in followed:
            if q_src is k_src or self.root(q_src) is self.root(k_src):
                return Verdict("joint" if self.joint_upstream(q_src, q_len) else "self")
            return Verdict("cross")
        guess = "joint" if self.joint_upstream(q, q_len) else "self"
        return Verdict(guess, sure=False, note=f"could not follow q ({q_kind}) and k ({k_kind}) back to one projection")
