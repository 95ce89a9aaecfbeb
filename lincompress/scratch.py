"""Temporary work directories of training passes given no ``work_dir``: removed after success, kept after a failure.

``passes.Recover`` / ``passes.Distill`` without ``work_dir`` train in a fresh directory of the
system's temporary directory (``lincompress-recover-*``, ``lincompress-distill-*``: checkpoints,
teacher cache, metrics, report). Nobody chose it, so nobody would clean it up: ``Pipeline.run``
removes it once every pass has succeeded (and drops the ``state.outputs`` that point into it;
``passes.Report(out_dir)`` in the same pipeline keeps the report). When a pass fails or is
interrupted it is kept if it holds anything, and the exception says where and how to continue
from it (``work_dir=..., resume=True``) -- what the CLI does with ``--out``'s ``.lincompress-work``.
A ``work_dir`` the caller names is theirs: it is never removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lincompress.config import Arg

if TYPE_CHECKING:
    from lincompress.pipeline import State


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


def remove(state: State) -> None:
    """After success: delete the temporary work directories and forget the outputs inside them."""
    if not state.scratch:
        return
    from lincompress.distributed.context import DistributedContext

    group = DistributedContext.current()
    group.barrier()  # no rank reads them any more
    for path in state.scratch:
        if group.is_main:
            shutil.rmtree(path, ignore_errors=True)
        for key, value in list(state.outputs.items()):
            if Path(value) == path or path in Path(value).parents:
                del state.outputs[key]
    state.scratch.clear()


def keep(state: State, exc: BaseException) -> None:
    """After a failure: an empty temporary work directory goes; one with work stays, named in ``exc``."""
    from lincompress.distributed.context import is_main

    for path in state.scratch:
        if not any(files for _, _, files in os.walk(path)):
            if is_main():
                shutil.rmtree(path, ignore_errors=True)
            continue
        if str(path) not in str(exc):  # (an interruption's own message already says how to continue)
            work_dir, resume = continue_args(path)
            exc.add_note(f"lincompress: the work of this run is kept in {path} (checkpoints, teacher cache); "
                         f"pass {work_dir.python()} and {resume.python()} to continue it, or delete it")
    state.scratch.clear()
