"""Graph passes: each is a small object with ``run(state) -> state`` (see ``lincompress.pipeline``).

Imported lazily (PEP 562): ``passes.Recover`` loads the training stack, ``passes.Fix``
does not, so replaying an artifact never imports recovery code it does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FindAttention": "find_attention", "FindAttentionConfig": "find_attention",
    "Hybridize": "hybridize", "HybridizeConfig": "hybridize",
    "HeuristicSelect": "select", "SelectConfig": "select",
    "GreedySelect": "selective_transfer", "GreedySelectConfig": "selective_transfer",
    "SelectiveTransfer": "selective_transfer",
    "Recover": "recover", "Report": "recover",
    "Distill": "distill", "DistillConfig": "distill",
    "Fix": "fix", "FixConfig": "fix",
    "Save": "save", "SaveConfig": "save",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lincompress.passes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lincompress.passes.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
