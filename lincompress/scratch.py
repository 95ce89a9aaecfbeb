"""Temporary work directories of training passes given no ``work_dir``: removed after success, kept after a failure.

``passes.Recover`` / ``passes.Distill`` without ``work_dir`` train in a fresh directory of the
system's temporary directory (``lincompress-recover-*``, ``lincompress-distill-*``: checkpoints,
teacher cache, metrics, report). Nobody chose it, so nobody would clean it up: ``Pipeline.run``
removes it once every pass has succeeded (and drops the ``state.outputs`` that point into it;
``passes.Report(out_dir)`` in the same pipeline keeps the report). When a pass fails or is
interrupted it is kept if it holds anything, and the exception says where and how to continue
from it (``work_dir=..., resume=True``) -- what the CLI does with ``--out``'s ``.lincompress-work``.
A pass run by hand, outside a ``Pipeline`` (``passes.Recover().run(state)``), cleans up after
itself the same way when it returns or fails (``pass_scope``): nobody else would, and a final
checkpoint at Wan scale is tens of GB. A ``work_dir`` the caller names is theirs: it is never removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from lincompress.config import Arg

if TYPE_CHECKING:
    from lincompress.pipeline import State

_PIPELINE_RUNNING: ContextVar[bool] = ContextVar("lincompress_pipeline_running", default=False)


@contextmanager
def owned_by_pipeline() -> Iterator[None]:
    """While ``Pipeline.run`` runs its passes: the pipeline removes / keeps the temporary directories at its end."""
    token = _PIPELINE_RUNNING.set(True)
    try:
        yield
    finally:
        _PIPELINE_RUNNING.reset(token)


@contextmanager
def pass_scope(state: State) -> Iterator[None]:
    """Around one pass's work: outside a pipeline, the directories it made go after success, stay after a failure."""
    if _PIPELINE_RUNNING.get():
        yield
        return
    before = len(state.scratch)
    with owned_by_pipeline():  # (a pass that runs others inside it: this scope handles their directories too)
        try:
            yield
        except BaseException as exc:
            keep(state, exc, state.scratch[before:])
            raise
    remove(state, state.scratch[before:])


def make(state: State, prefix: str) -> Path:
    """A new temporary work directory, registered in ``state.scratch`` (rank 0 makes it; every rank gets its path)."""
    from lincompress.distributed.context import DistributedContext

    group = DistributedContext.current()  # several processes share one work directory
    path = Path(group.broadcast(tempfile.mkdtemp(prefix=prefix) if group.is_main else None))
    state.scratch.append(path)
    return path


def continue_args(path: Path) -> tuple[Arg, Arg]:
    """The arguments that continue a run from the temporary work directory ``path``."""
    return Arg("work_dir", str(path)), Arg("resume", True)


def remove(state: State, paths: list[Path] | None = None) -> None:
    """After success: delete the temporary work directories (``paths``, default all) and forget the outputs inside."""
    paths = list(state.scratch if paths is None else paths)
    if not paths:
        return
    from lincompress.distributed.context import DistributedContext

    group = DistributedContext.current()
    group.barrier()  # no rank reads them any more
    for path in paths:
        if group.is_main:
            shutil.rmtree(path, ignore_errors=True)
        for key, value in list(state.outputs.items()):
            if Path(value) == path or path in Path(value).parents:
                del state.outputs[key]
    _forget(state, paths)


def keep(state: State, exc: BaseException, paths: list[Path] | None = None) -> None:
    """After a failure: an empty temporary work directory (of ``paths``, default all) goes; one with work stays,
    named in ``exc``."""
    from lincompress.distributed.context import is_main

    paths = list(state.scratch if paths is None else paths)
    for path in paths:
        if not any(files for _, _, files in os.walk(path)):
            if is_main():
                shutil.rmtree(path, ignore_errors=True)
            continue
        if str(path) not in str(exc):  # (an interruption's own message already says how to continue)
            work_dir, resume = continue_args(path)
            exc.add_note(f"lincompress: the work of this run is kept in {path} (checkpoints, teacher cache); "
                         f"pass {work_dir.python()} and {resume.python()} to continue it, or delete it")
    _forget(state, paths)


def _forget(state: State, paths: list[Path]) -> None:
    state.scratch[:] = [p for p in state.scratch if p not in paths]
