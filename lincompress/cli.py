"""The ``lincompress`` command line (click).

Each subcommand lives in its own module under ``lincompress/commands`` and exposes a
click command named ``command``; this file only collects them. User errors
(``LinCompressError``, and click's own usage errors) print as one line and exit 2, never
as a traceback; an ``ArgumentError`` is printed with the subcommand's flag names. A
``LinCompressWarning`` prints as one ``warning:`` line (an ``ArgumentWarning`` with flag names), by rank 0
alone under ``--nproc`` / torchrun (``commands/_warnings.py``).
In a worker of ``--nproc N`` (``lincompress.distributed.launch``) failures are recorded for the
launcher, which prints the first one; under torchrun they go to its failure summary too.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import click

import lincompress.commands as commands_pkg
from lincompress.commands._options import ARGV, flag_names
from lincompress.commands._warnings import shown_warnings
from lincompress.config import ArgumentError, default_flag
from lincompress.distributed import launch
from lincompress.errors import LinCompressError


class _FriendlyGroup(click.Group):
    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        given = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[ARGV] = given
        return ctx

    def invoke(self, ctx: click.Context):
        def flag_of(name: str) -> str:  # the subcommand is known once super().invoke has parsed it
            sub = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            return (flag_names(sub) if sub is not None else {}).get(name) or default_flag(name)

        try:
            with shown_warnings(flag_of):  # ours: one yellow line, with flags, by rank 0
                return super().invoke(ctx)
        except ArgumentError as exc:
            self._fail(exc.render(flag_of), getattr(exc, "exit_code", 2))
        except LinCompressError as exc:
            self._fail(str(exc), getattr(exc, "exit_code", 2))
        except click.UsageError as exc:
            self._fail(exc.format_message())
        except Exception as exc:
            if not launch.env_world_size() > 1:
                raise
            details = traceback.format_exc()  # a worker of several: record it (the launcher prints the first)
            if launch.report_failure(f"{type(exc).__name__}: {exc}", 1, details):
                sys.exit(1)
            raise

    @staticmethod
    def _fail(message: str, code: int = 2) -> None:
        """One red line; exit 2 (bad input), or 128 + N for a run stopped by signal N (the shell's convention)."""
        line = " ".join(message.split())
        if launch.env_world_size() > 1 and launch.report_failure(line, code):
            sys.exit(code)  # a launched worker on the launcher's terminal: the launcher prints the root cause
        click.secho(f"error: {line}", fg="red", err=True)
        sys.exit(code)


@click.group(cls=_FriendlyGroup)
@click.version_option(package_name="lincompress")
def main() -> None:
    """Compress diffusion transformers: softmax -> linear attention (LinVideo)."""


for _info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{commands_pkg.__name__}.{_info.name}")
    if isinstance(getattr(_module, "command", None), click.Command):
        main.add_command(_module.command)
