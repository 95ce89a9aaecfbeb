"""Click options generated from pass configs: a config field is a flag, with its default, help and choices.

    @click.command("optimize")
    @config_options(HybridizeConfig, RecoveryConfig)
    def command(**options):
        lincompress.compress(..., **given(options))

Fields are merged by name across configs (``target_linear`` of three selection configs is
one ``--target-linear``; they must agree on type and default). ``given`` keeps only the
options the user typed, so the library's defaults apply otherwise and no default is ever
declared in the CLI. Values are not range-checked here: the config does that, and its
``ArgumentError`` is printed with the command's flag names (``lincompress.cli``).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click
from click.core import ParameterSource

from lincompress.config import ConfigField, PassConfig, config_fields, default_flag

_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}
ARGV = "lincompress.argv"  # click ctx.meta key: the command line as given (what --nproc runs in each process)


def _merged(configs: Iterable[type[PassConfig]], exclude: Iterable[str]) -> list[ConfigField]:
    out: dict[str, ConfigField] = {}
    skip = set(exclude)
    for cls in configs:
        for f in config_fields(cls):
            if f.name in skip or f.meta.get("cli", True) is False:
                continue
            seen = out.get(f.name)
            if seen is None:
                out[f.name] = f
            elif (seen.type, seen.default) != (f.type, f.default):
                raise TypeError(f"CLI option {f.name!r} is declared differently in two configs "
                                f"({seen.type}={seen.default!r} vs {f.type}={f.default!r}); use one shared option")
    return list(out.values())


def _click_type(f: ConfigField, tp: Any) -> Any:
    choices = f.choices
    if choices is None and f.meta.get("cli_choices") is not None:
        choices = f.meta["cli_choices"]()
    if choices is not None and all(isinstance(c, str) for c in choices):
        return click.Choice(list(choices))
    if f.meta.get("parse") is not None:
        return click.STRING  # the config parses the text
    if tp not in _CLICK_TYPES:
        raise TypeError(f"config field {f.name!r} ({tp}) has no command-line form; give it cli=False or parse=")
    return _CLICK_TYPES[tp]


def field_option(f: ConfigField, flag: str | None = None, help_prefix: str = "") -> Callable[[Any], Any]:
    """One click option for one config field (python name = field name)."""
    flag = flag or (f.meta["cli"] if isinstance(f.meta.get("cli"), str) else default_flag(f.name))
    help_text = help_prefix + f.meta.get("help", "")
    kwargs: dict[str, Any] = {"help": help_text, "metavar": f.meta.get("metavar")}
    base = f.base
    if base is bool:
        if f.default is False:
            return click.option(flag, f.name, is_flag=True, default=False, **kwargs)
        return click.option(f"{flag}/--no-{flag.removeprefix('--')}", f.name, default=f.default,
                            show_default=f.default is not None, **kwargs)
    if f.is_list and f.meta.get("parse") is None:
        default = tuple(f.default) if isinstance(f.default, (list, tuple)) else None
        return click.option(flag, f.name, multiple=True, type=_click_type(f, f.item_type), default=default or (),
                            **kwargs)
    show = f.default is not None and f.default is not dataclasses.MISSING and "[default:" not in help_text
    return click.option(flag, f.name, type=_click_type(f, str if f.is_list else base), default=None if f.required else f.default,
                        required=f.required, show_default=show, **kwargs)


def config_options(*configs: type[PassConfig], exclude: Iterable[str] = ()) -> Callable[[Any], Any]:
    """Decorator: one option per field of ``configs`` (fields with ``cli=False`` or in ``exclude`` left out)."""
    fields = _merged(configs, exclude)

    def decorate(fn: Any) -> Any:
        for f in reversed(fields):
            fn = field_option(f)(fn)
        return fn

    return decorate


def given(options: dict[str, Any], ctx: click.Context | None = None) -> dict[str, Any]:
    """The options the user set (command line or environment), lists as lists."""
    ctx = ctx or click.get_current_context()
    out = {}
    for name, value in options.items():
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


# --------------------------------------------------------------------------- per-objective options


def _objectives() -> dict[str, type]:
    from lincompress.recovery.objectives import OBJECTIVES

    return dict(OBJECTIVES)


def _docstring_help(cls: type, name: str) -> str:
    """``name: text`` from the class docstring (continuation lines joined), or ''."""
    doc = cls.__doc__ or ""
    match = re.search(rf"^\s*{re.escape(name)}:\s*(.+(?:\n\s{{6,}}\S.*)*)", doc, re.MULTILINE)
    return " ".join(match.group(1).split()) if match else ""


def objective_fields() -> list[tuple[str, str, ConfigField]]:
    """``(objective, option name, field)`` for every public field of every registered objective."""
    out = []
    for obj_name, cls in _objectives().items():
        if not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            meta = {"help": f.metadata.get("help") or _docstring_help(cls, f.name) or f.name.replace("_", " ")}
            out.append((obj_name, f"{obj_name}_{f.name}", ConfigField(f.name, hints.get(f.name, Any), default, meta)))
    return out


def objective_options() -> Callable[[Any], Any]:
    """Decorator: ``--<objective>-<field>`` for every field of every objective (e.g. ``--adm-grad-steps``)."""
    def decorate(fn: Any) -> Any:
        for obj_name, option_name, f in reversed(objective_fields()):
            named = dataclasses.replace(f, name=option_name, meta={**f.meta, "cli": True})
            fn = field_option(named, help_prefix=f"{obj_name.upper()} objective: ")(fn)
        return fn

    return decorate


def pop_objective_options(options: dict[str, Any]) -> dict[str, tuple[str, str, Any]]:
    """Remove the objective flags from ``options``: ``{option name: (objective, field, value)}`` of those given."""
    given_now = given(options)
    out = {}
    for obj_name, option_name, f in objective_fields():
        options.pop(option_name, None)
        if option_name in given_now:
            out[option_name] = (obj_name, f.name, given_now[option_name])
    return out


def flag_names(command: click.Command) -> dict[str, str]:
    """Python argument name -> the command's flag (for rendering ``ArgumentError``s)."""
    out = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name:
            longs = [o for o in param.opts if o.startswith("--")]
            out[param.name] = longs[0] if longs else param.opts[0]
    return out
