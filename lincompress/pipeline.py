"""The pass pipeline: a list of small objects, each ``run(state) -> state``.

``State`` carries everything passes hand to each other (the target, the model being
rewritten, the discovered sites, the selection, settings and metrics), so a pass
only needs to know the fields it reads and writes. Third-party passes are plain
objects with a ``name`` and a ``run``; see ``lincompress.registry`` to make them
available by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from lincompress.discovery import SiteInfo
from lincompress.errors import LinCompressError
from lincompress.target import Target


@dataclass
class State:
    target: Target
    model: nn.Module
    sites: list[SiteInfo] = field(default_factory=list)
    selection: list[str] | None = None  # names of the sites that become linear
    base_hash: str | None = None
    trace_method: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    modified_parameters: set[str] = field(default_factory=set)  # base parameters changed by training
    outputs: dict[str, Path] = field(default_factory=dict)  # files written by passes/exporters
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def candidates(self) -> list[SiteInfo]:
        return [s for s in self.sites if s.candidate]

    def require_sites(self, who: str) -> None:
        if not self.sites:
            raise LinCompressError(f"{who} needs discovered attention sites; run passes.FindAttention() before it")


@runtime_checkable
class Pass(Protocol):
    name: str

    def run(self, state: State) -> State: ...


class Pipeline:
    """Runs passes in order and records what each took; ``run(target)`` returns the final State."""

    def __init__(self, passes: list[Pass]) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"{p!r} is not a pass: it needs a `name` and a `run(state) -> state` method")
        self.passes = list(passes)

    def run(self, target: Target | State) -> State:
        state = target if isinstance(target, State) else State(target=target, model=target.model)
        for p in self.passes:
            start = time.perf_counter()
            state = p.run(state)
            if not isinstance(state, State):
                raise TypeError(f"pass {p.name!r} returned {type(state).__name__}, not a lincompress State")
            state.history.append({"pass": p.name, "seconds": round(time.perf_counter() - start, 3)})
        return state
