"""An objective's nested ``state_dict()`` as flat tensors + a JSON skeleton, for the pickle-free checkpoints.

Objectives with trained state of their own (DMD2's fake-score network and its optimizer)
return torch-style nested dicts: tensors, numbers, strings, lists, tuples and dicts whose
keys may be ints (an optimizer's ``state``). ``flatten_state`` splits such a tree into
``{name: tensor}`` (saved with the checkpoint's tensors) and a JSON-ready skeleton that
keeps every container type and key type, so ``unflatten_state`` gives back exactly the
tree ``load_state_dict`` expects.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lincompress.errors import LinCompressError

_TENSOR, _DICT, _TUPLE = "__tensor__", "__dict__", "__tuple__"


def flatten_state(tree: Any) -> tuple[dict[str, Tensor], Any]:
    """``(tensors, skeleton)``; tensors are detached, named by their path in the tree."""
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            tensors[path] = node.detach()
            return {_TENSOR: path}
        if isinstance(node, dict):
            return {_DICT: [[key, walk(value, f"{path}.{key}" if path else str(key))] for key, value in node.items()]}
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise LinCompressError(f"objective state at {path!r} is a {type(node).__name__}; "
                               "state_dict() may hold tensors, numbers, strings, lists, tuples and dicts only")

    return tensors, walk(tree, "")


def unflatten_state(tensors: dict[str, Tensor], skeleton: Any, device: torch.device | str | None = None) -> Any:
    """The tree ``flatten_state`` split; tensors moved to ``device`` when given."""

    def build(node: Any) -> Any:
        if isinstance(node, dict):
            if _TENSOR in node:
                try:
                    value = tensors[node[_TENSOR]]
                except KeyError:
                    raise LinCompressError(f"the checkpoint lacks the objective tensor {node[_TENSOR]!r}; "
                                           "it is incomplete, delete it to start over") from None
                return value.to(device) if device is not None else value
            if _DICT in node:
                return {key: build(value) for key, value in node[_DICT]}
            if _TUPLE in node:
                return tuple(build(v) for v in node[_TUPLE])
        if isinstance(node, list):
            return [build(v) for v in node]
        return node

    return build(skeleton)
