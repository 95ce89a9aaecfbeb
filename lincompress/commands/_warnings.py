"""How the CLI shows warnings: one yellow ``warning:`` line each, with flag names, printed by rank 0 only.

Under ``--nproc N`` or ``torchrun`` every worker runs the same command and meets the same
warnings; like the progress bar and the summary, they are said once, by rank 0 (the rank of
the process group, or torchrun's ``RANK`` before one exists). ``shown_warnings`` is the one
place the CLI turns library warnings into lines: a ``LinCompressWarning`` (an ``ArgumentWarning``
rendered with the command's flags) and a ``ResolutionWarning`` (its text with ``--height``...).
Other warnings (torch's, a user's model code) keep Python's own display on every rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from lincompress.config import ArgumentWarning
from lincompress.errors import LinCompressWarning
from lincompress.target import ResolutionWarning, resolution_warning


def speaks() -> bool:
    """Does this process print what every rank would print alike? Rank 0 (or a process of its own) does."""
    from lincompress.distributed.context import initialized, rank
    from lincompress.distributed.launch import env_rank

    return (rank() if initialized() else env_rank()) == 0


def warning_line(text: str) -> None:
    """``warning: <text>`` on stderr as one yellow line, by rank 0."""
    if speaks():
        click.secho(f"warning: {' '.join(text.split())}", fg="yellow", err=True)


@contextmanager
def shown_warnings(flag_of: Callable[[str], str]) -> Iterator[None]:
    """Inside the block, every warning of ours is shown when it happens, as one line with flags (rank 0 only).

    ``flag_of`` maps a Python argument name to the command's flag.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("always", LinCompressWarning)
        warnings.simplefilter("always", ResolutionWarning)
        shown = warnings.showwarning

        def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
            if isinstance(message, ResolutionWarning):
                warning_line(resolution_warning(message.target, flags=True) or str(message))
            elif isinstance(message, ArgumentWarning):
                warning_line(message.render(flag_of))
            elif issubclass(category, LinCompressWarning):
                warning_line(str(message))
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield
