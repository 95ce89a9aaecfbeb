"""Passes and exporters by name, extensible through Python entry points.

Third-party packages add theirs without touching lincompress::

    [project.entry-points."lincompress.passes"]
    my-pass = "my_pkg.passes:MyPass"

and ``lincompress.registry.get("passes", "my-pass")`` (or the CLI) finds them.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from lincompress.errors import LinCompressError

GROUPS = {"passes": "lincompress.passes", "exporters": "lincompress.exporters"}
_SINGULAR = {"passes": "pass", "exporters": "exporter"}
_LOCAL: dict[str, dict[str, Any]] = {"passes": {}, "exporters": {}}


def register(kind: str, name: str, obj: Any) -> None:
    """Register in-process (tests, notebooks); entry points are the way for packages."""
    _LOCAL[_group(kind)][name] = obj


def _group(kind: str) -> str:
    if kind not in GROUPS:
        raise ValueError(f"unknown registry kind {kind!r}; use one of {sorted(GROUPS)}")
    return kind


def available(kind: str) -> dict[str, Any]:
    """Name -> loaded object for everything registered (entry points + in-process)."""
    found = {ep.name: ep for ep in entry_points(group=GROUPS[_group(kind)])}
    loaded = {name: ep.load() for name, ep in found.items()}
    loaded.update(_LOCAL[kind])
    return loaded


def get(kind: str, name: str) -> Any:
    if name in _LOCAL[_group(kind)]:
        return _LOCAL[kind][name]
    for ep in entry_points(group=GROUPS[kind]):
        if ep.name == name:
            return ep.load()
    names = sorted({ep.name for ep in entry_points(group=GROUPS[kind])} | set(_LOCAL[kind]))
    raise LinCompressError(f"no {_SINGULAR[kind]} named {name!r}; available: {', '.join(names) or 'none'}")
