"""The ``lincompress`` command line (click).

Each subcommand lives in its own module under ``lincompress/commands`` and exposes a
click command named ``command``; this file only collects them. User errors
(``LinCompressError``, and click's own usage errors) print as one line and exit 2, never
as a traceback; an ``ArgumentError`` is printed with the subcommand's flag names.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

import lincompress.commands as commands_pkg
from lincompress.commands._options import flag_names
from lincompress.config import ArgumentError, default_flag
from lincompress.errors import LinCompressError


class _FriendlyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ArgumentError as exc:
            sub = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            flags = flag_names(sub) if sub is not None else {}
            self._fail(exc.render(lambda name: flags.get(name) or default_flag(name)), getattr(exc, "exit_code", 2))
        except LinCompressError as exc:
            self._fail(str(exc), getattr(exc, "exit_code", 2))
        except click.UsageError as exc:
            self._fail(exc.format_message())

    @staticmethod
    def _fail(message: str, code: int = 2) -> None:
        """One red line; exit 2 (bad input), or 128 + N for a run stopped by signal N (the shell's convention)."""
        click.secho(f"error: {' '.join(message.split())}", fg="red", err=True)
        sys.exit(code)


@click.group(cls=_FriendlyGroup)
@click.version_option(package_name="lincompress")
def main() -> None:
    """Compress diffusion transformers: softmax -> linear attention (LinVideo)."""


for _info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{commands_pkg.__name__}.{_info.name}")
    if isinstance(getattr(_module, "command", None), click.Command):
        main.add_command(_module.command)
