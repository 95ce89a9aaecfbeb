"""The ``lincompress`` command line (click).

Each subcommand lives in its own module under ``lincompress/commands`` and exposes a
click command named ``command``; this file only collects them. User errors
(``LinCompressError``) print as one line and exit 2, never as a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

import lincompress.commands as commands_pkg
from lincompress.errors import LinCompressError


class _FriendlyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LinCompressError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_FriendlyGroup)
@click.version_option(package_name="lincompress")
def main() -> None:
    """Compress diffusion transformers: softmax -> linear attention (LinVideo)."""


for _info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{commands_pkg.__name__}.{_info.name}")
    if isinstance(getattr(_module, "command", None), click.Command):
        main.add_command(_module.command)
