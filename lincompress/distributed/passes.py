"""Passes that write shared files (``main_process_only = True``: Save, Report) run on rank 0 alone.

``Pipeline.run`` hands such a pass to ``run_on_main`` when a process group of several
processes is running: rank 0 runs it; the others wait, then take its ``state.outputs``
(the artifact path...). A failure on rank 0 reaches every rank as the same exception, so
all of them stop with the same one-line message instead of waiting.
"""

from __future__ import annotations

import pickle
from typing import Any

from lincompress.distributed.context import DistributedContext, PeerFailed


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (an ArgumentError keeps its flag rendering), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return PeerFailed(f"rank 0 failed: {type(exc).__name__}: {exc}")


def run_on_main(p: Any, state: Any) -> Any:
    ctx = DistributedContext.current()
    if ctx.is_main:
        try:
            state = p.run(state)
        except Exception as exc:
            ctx.broadcast(("error", _portable(exc)))
            raise
        ctx.broadcast(("ok", dict(state.outputs)))
        return state
    kind, value = ctx.broadcast(None)
    if kind == "error":
        raise value
    state.outputs.update(value)
    return state
