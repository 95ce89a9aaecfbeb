"""Passes and exporters by name: built-ins, in-process registrations, and Python entry points.

Third-party packages add theirs without touching lincompress::

    [project.entry-points."lincompress.passes"]
    my-pass = "my_pkg.passes:MyPass"

and ``lincompress.registry.get("passes", "my-pass")`` finds them -- so does
``lincompress.apply`` when it replays an artifact whose recipe names ``my-pass``.
Built-ins are listed here (so a source checkout works without being installed) and
imported only when asked for. Lookup order: ``register()``-ed, built-in, entry point.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points, packages_distributions
from typing import Any

from lincompress.errors import LinCompressError

GROUPS = {"passes": "lincompress.passes", "exporters": "lincompress.exporters"}
_SINGULAR = {"passes": "pass", "exporters": "exporter"}
BUILTIN: dict[str, dict[str, str]] = {
    "passes": {
        "find-attention": "lincompress.passes.find_attention:FindAttention",
        "hybridize": "lincompress.passes.hybridize:Hybridize",
        "select": "lincompress.passes.select:HeuristicSelect",
        "greedy-select": "lincompress.passes.selective_transfer:GreedySelect",
        "selective-transfer": "lincompress.passes.selective_transfer:SelectiveTransfer",
        "recover": "lincompress.passes.recover:Recover",
        "distill": "lincompress.passes.distill:Distill",
        "fix": "lincompress.passes.fix:Fix",
        "save": "lincompress.passes.save:Save",
        "report": "lincompress.passes.recover:Report",
    },
    "exporters": {
        "onnx": "lincompress.exporters.onnx:ONNX",
        "tensorrt": "lincompress.exporters.tensorrt:TensorRT",
        "aoti": "lincompress.exporters.aoti:AOTInductor",
    },
}
_LOCAL: dict[str, dict[str, Any]] = {"passes": {}, "exporters": {}}


def _group(kind: str) -> str:
    if kind not in GROUPS:
        raise ValueError(f"unknown registry kind {kind!r}; use one of {sorted(GROUPS)}")
    return kind


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(kind: str, name: str, obj: Any) -> None:
    """Register in-process (tests, notebooks); entry points are the way for packages."""
    _LOCAL[_group(kind)][name] = obj


def unregister(kind: str, name: str) -> None:
    _LOCAL[_group(kind)].pop(name, None)


def names(kind: str) -> list[str]:
    """Every registered name, without importing anything."""
    found = {ep.name for ep in entry_points(group=GROUPS[_group(kind)])}
    return sorted(found | set(BUILTIN[kind]) | set(_LOCAL[kind]))


def available(kind: str) -> dict[str, Any]:
    """Name -> loaded object for everything registered."""
    return {name: get(kind, name) for name in names(kind)}


def get(kind: str, name: str) -> Any:
    if name in _LOCAL[_group(kind)]:
        return _LOCAL[kind][name]
    if name in BUILTIN[kind]:
        return _load(BUILTIN[kind][name])
    for ep in entry_points(group=GROUPS[kind]):
        if ep.name == name:
            return ep.load()
    raise LinCompressError(f"no {_SINGULAR[kind]} named {name!r}; available: {', '.join(names(kind)) or 'none'}")


@lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def package_of(obj: Any) -> str:
    """The installable distribution that provides ``obj`` (a class or function), else its top-level module."""
    top = getattr(obj, "__module__", "").split(".")[0]
    if top == "lincompress":
        return "lincompress"
    dists = _distributions().get(top)
    return dists[0] if dists else top
