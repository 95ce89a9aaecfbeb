"""Pass configs: every option's default, type, range, choices and help declared once, on a dataclass field.

    @dataclass
    class HybridizeConfig(PassConfig):
        feature_map: str = feature_map_option()
        eps: float = option(1e-6, low=0.0, low_open=True, help="Added to the linear attention's normaliser.")

``PassConfig.__post_init__`` validates every field from its declaration (type, choices,
range) and then calls ``check()`` for rules across fields, so a config object that exists
is a valid one, however it was made (Python call, CLI, a recipe read from JSON). The CLI
builds its flags from the same fields (``lincompress/commands/_options.py``): adding a
field to a config is all it takes to get ``--the-field``.

Errors about a value are ``ArgumentError``s. Their text names the Python argument
(``target_linear=1.5 is out of range``) and the CLI re-renders the same error with the
command's flag (``--target-linear 1.5 is out of range``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass
from typing import Any, ClassVar, TypeVar, Union

from lincompress.errors import LinCompressError, LinCompressWarning

_NO_VALUE: Any = object()


# --------------------------------------------------------------------------- argument errors


@dataclass(frozen=True)
class Arg:
    """A named argument inside an error message (``name`` or ``name=value``)."""

    name: str
    value: Any = _NO_VALUE

    def python(self) -> str:
        if self.value is _NO_VALUE:
            return self.name
        value = os.fspath(self.value) if isinstance(self.value, os.PathLike) else self.value
        return f"{self.name}={value!r}"

    def flag(self, flag: str) -> str:
        if self.value is _NO_VALUE or self.value is True:
            return flag
        if self.value is False:
            return "--no-" + flag.removeprefix("--")
        if isinstance(self.value, (list, tuple)):
            return " ".join(f"{flag} {v}" for v in self.value) or flag
        return f"{flag} {os.fspath(self.value) if isinstance(self.value, os.PathLike) else self.value}"


class _ArgumentText:
    """A message naming arguments: ``{}`` placeholders in ``template`` are filled with the ``Arg``s.

    ``str(message)`` speaks Python (``steps=-1 must be >= 0``); ``message.render(flag_of)``
    speaks the command line (``--steps -1 must be >= 0``), ``flag_of`` mapping an argument
    name to its flag.
    """

    def __init__(self, template: str, *arguments: Arg) -> None:
        self.template = template
        self.arguments = arguments
        super().__init__(template.format(*(a.python() for a in arguments)))

    def render(self, flag_of: Callable[[str], str]) -> str:
        return self.template.format(*(a.flag(flag_of(a.name)) for a in self.arguments))


class ArgumentError(_ArgumentText, LinCompressError):
    """A bad argument value (see ``_ArgumentText`` for the Python / flag renderings)."""


class ArgumentWarning(_ArgumentText, LinCompressWarning):
    """A valid argument that probably does not do what was meant, e.g. a target that rounds to 0 sites."""


def literal(text: Any) -> str:
    """``text`` made safe to put inside an ``ArgumentError`` template (paths, names with braces)."""
    return str(text).replace("{", "{{").replace("}", "}}")


def default_flag(name: str) -> str:
    """The flag a field gets unless it names its own: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


# --------------------------------------------------------------------------- declaring options


def option(
    default: Any = MISSING, *, help: str, choices: tuple[Any, ...] | None = None,
    cli_choices: Callable[[], tuple[str, ...]] | None = None, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False, cli: bool | str = True, record: bool = True,
    parse: Callable[[str], Any] | None = None, metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A config field with everything the validator and the CLI need.

    choices: allowed values (each element, for list fields).
    cli_choices: names offered by the CLI only, for fields whose values come from a registry
        that the config module must not import (the pass validates the name itself).
    low / high: numeric bounds (inclusive unless ``low_open`` / ``high_open``).
    cli: ``False`` keeps the field off the command line; a string names its flag.
    record: ``False`` leaves the field out of ``to_dict()`` (the recipe an artifact stores):
        how to run, not what was made.
    parse: turns a string (CLI text, or a string given in Python) into the field's value.
    """
    metadata = {"help": help, "choices": choices, "cli_choices": cli_choices, "low": low, "high": high,
                "low_open": low_open, "high_open": high_open, "cli": cli, "record": record, "parse": parse,
                "metavar": metavar}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def device_option() -> Any:
    return option(None, help="Device: cpu, cuda, cuda:N [default: cuda when available].")


def seed_option() -> Any:
    return option(0, help="Random seed.")


def nproc_option() -> Any:
    """Processes (GPUs) a training pass runs on; how to run, so not recorded."""
    return option(None, low=1, record=False, metavar="N",
                  help="Processes (one per GPU) to train on; lincompress optimize starts them itself. With a running "
                       "process group (torchrun: leave this out) it must equal the group's size [default: the "
                       "group's size, else 1].")


def feature_map_option(help: str = "Feature map of the linear attention branch.") -> Any:
    from lincompress.feature_maps import FEATURE_MAPS

    return option("hedgehog", choices=tuple(FEATURE_MAPS), help=help)


# --------------------------------------------------------------------------- the base class


C = TypeVar("C", bound="PassConfig")


@dataclass
class ConfigField:
    """One field of a config, as the validator and the CLI see it."""

    name: str
    type: Any  # the resolved annotation
    default: Any  # MISSING when required
    meta: dict[str, Any]

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def base(self) -> Any:
        """The annotation without ``| None``."""
        return _strip_none(self.type)

    @property
    def optional(self) -> bool:
        return _allows_none(self.type)

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.base) in (list, tuple)

    @property
    def item_type(self) -> Any:
        args = typing.get_args(self.base)
        return args[0] if args else str

    @property
    def choices(self) -> tuple[Any, ...] | None:
        return self.meta.get("choices")


@dataclass
class PassConfig:
    """Base of every pass config: fields from ``option()``, validated on construction."""

    _field_cache: ClassVar[dict[type, list[ConfigField]]] = {}

    def __post_init__(self) -> None:
        for f in config_fields(type(self)):
            setattr(self, f.name, _validate(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Rules across fields; raise ``ArgumentError``. Runs after the per-field checks."""

    def to_dict(self) -> dict[str, Any]:
        """The recorded fields as JSON-ready values (what a recipe stores)."""
        return {f.name: _plain(getattr(self, f.name)) for f in config_fields(type(self)) if f.meta.get("record", True)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in config_fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArgumentError(f"{cls.__name__} has no field {{}}; known: {', '.join(sorted(known)) or 'none'}",
                                Arg(unknown[0]))
        return cls(**data)

    @classmethod
    def build(cls: type[C], args: tuple[Any, ...], kwargs: dict[str, Any], owner: str) -> C:
        """``cls(*args, **kwargs)`` with one-line errors for unknown or missing arguments."""
        names = [f.name for f in config_fields(cls)]
        if len(args) > len(names):
            raise ArgumentError(f"{owner} takes at most {len(names)} positional arguments ({', '.join(names)}), "
                                f"got {len(args)}")
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ArgumentError(f"{owner} got an unknown argument {{}}{hint}; it takes: {', '.join(names) or 'nothing'}",
                                Arg(unknown[0]))
        twice = sorted(set(names[: len(args)]) & set(kwargs))
        if twice:
            raise ArgumentError(f"{owner} got {{}} both by position and by name", Arg(twice[0]))
        given = set(names[: len(args)]) | set(kwargs)
        for f in config_fields(cls):
            if f.required and f.name not in given:
                raise ArgumentError(f"{owner} needs {{}}", Arg(f.name))
        return cls(*args, **kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def config_fields(cls: type[PassConfig]) -> list[ConfigField]:
    """The fields of a config class, annotations resolved (cached per class)."""
    cache = PassConfig._field_cache
    if cls not in cache:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            out.append(ConfigField(f.name, hints.get(f.name, Any), _field_default(f), dict(f.metadata)))
        cache[cls] = out
    return cache[cls]


def field_default(cls: type[PassConfig], name: str) -> Any:
    """The declared default of ``cls.name`` (so other code never repeats it)."""
    for f in config_fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


# --------------------------------------------------------------------------- validation


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
    return tp


def _allows_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce_scalar(name: str, tp: Any, value: Any) -> Any:
    if tp is Any or typing.get_origin(tp) in (Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
    elif typing.get_origin(tp) is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise ArgumentError(f"{{}} must be {_type_name(tp)}, got {type(value).__name__}", Arg(name, value))


def _check_value(f: ConfigField, value: Any) -> None:
    meta = f.meta
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ArgumentError(f"{{}} is unknown; choose one of {', '.join(map(str, choices))}", Arg(f.name, value))
    low, high = meta.get("low"), meta.get("high")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
        too_high = high is not None and (value >= high if meta.get("high_open") else value > high)
        if too_low or too_high:
            if low is not None and high is not None:
                lo, hi = "(" if meta.get("low_open") else "[", ")" if meta.get("high_open") else "]"
                raise ArgumentError(f"{{}} is out of range; give a value in {lo}{low:g}, {high:g}{hi}", Arg(f.name, value))
            bound, rel = (low, ">" if meta.get("low_open") else ">=") if too_low else (high, "<" if meta.get("high_open") else "<=")
            raise ArgumentError(f"{{}} must be {rel} {bound:g}", Arg(f.name, value))


def _validate(f: ConfigField, value: Any) -> Any:
    if value is MISSING:
        raise ArgumentError("{} is required", Arg(f.name))
    parse = f.meta.get("parse")
    if parse is not None and isinstance(value, str) and f.base is not str:
        value = parse(value)
    if value is None:
        if f.optional:
            return None
        raise ArgumentError(f"{{}} must be {_type_name(f.base)}, not None", Arg(f.name))
    if f.is_list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ArgumentError(f"{{}} must be a list of {_type_name(f.item_type)}", Arg(f.name, value))
        items = [_coerce_scalar(f.name, f.item_type, v) for v in value]
        for item in items:
            _check_value(f, item)
        return items
    value = _coerce_scalar(f.name, f.base, value)
    _check_value(f, value)
    return value


def _plain(value: Any) -> Any:
    """JSON-ready copy of a config value."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
