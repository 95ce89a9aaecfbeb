"""Pass configs: each field validated from its declaration, once; ArgumentError speaks Python or flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lincompress.config import MISSING, Arg, ArgumentError, PassConfig, config_fields, field_default, option


def _pair(text: str) -> list[int]:
    return [int(x) for x in text.split("x")]


@dataclass
class ToyConfig(PassConfig):
    name: str = option(MISSING, help="required")
    steps: int = option(10, low=0, help="steps")
    rate: float = option(0.5, low=0.0, high=1.0, high_open=True, help="rate")
    mode: str = option("a", choices=("a", "b"), help="mode")
    flag: bool = option(False, help="flag")
    limit: float | None = option(None, low=1.0, help="optional")
    tags: list[str] = option(default_factory=list, choices=("x", "y"), help="tags")
    size: list[int] | None = option(None, parse=_pair, help="WxH")
    scratch: str | None = option(None, record=False, help="not recorded")

    def check(self) -> None:
        if self.flag and self.steps == 0:
            raise ArgumentError("{} needs {} > 0", Arg("flag", True), Arg("steps"))


def test_fields_are_coerced_and_validated_on_construction():
    cfg = ToyConfig("t", steps=3.0, rate=0, tags=("x",), size="4x8", scratch=Path("/tmp/w"))
    assert cfg.steps == 3 and isinstance(cfg.steps, int) and cfg.rate == 0.0 and isinstance(cfg.rate, float)
    assert cfg.tags == ["x"] and cfg.size == [4, 8] and cfg.scratch == "/tmp/w"
    assert cfg.to_dict() == {"name": "t", "steps": 3, "rate": 0.0, "mode": "a", "flag": False, "limit": None,
                             "tags": ["x"], "size": [4, 8]}  # scratch: record=False
    assert ToyConfig.from_dict(cfg.to_dict()) == cfg.replace(scratch=None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": -1}, "steps=-1 must be >= 0"),
    ({"steps": "3"}, "steps='3' must be int, got str"),
    ({"steps": 2.5}, "steps=2.5 must be int, got float"),
    ({"rate": 1.0}, r"rate=1.0 is out of range; give a value in \[0, 1\)"),
    ({"mode": "c"}, "mode='c' is unknown; choose one of a, b"),
    ({"flag": 1}, "flag=1 must be bool, got int"),
    ({"limit": 0.5}, "limit=0.5 must be >= 1"),
    ({"tags": "x"}, "tags='x' must be a list of str"),
    ({"tags": ["z"]}, "tags='z' is unknown; choose one of x, y"),
    ({"mode": None}, "mode must be str, not None"),
    ({"flag": True, "steps": 0}, "flag=True needs steps > 0"),
])
def test_bad_values_name_the_argument(kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        ToyConfig("t", **kwargs)


def test_build_gives_one_line_errors_for_the_call_itself():
    with pytest.raises(ArgumentError, match=r"Toy got an unknown argument stpes \(did you mean steps\?\); it takes: name"):
        ToyConfig.build((), {"name": "t", "stpes": 1}, "Toy")
    with pytest.raises(ArgumentError, match="Toy needs name"):
        ToyConfig.build((), {}, "Toy")
    with pytest.raises(ArgumentError, match="Toy takes at most 9 positional arguments"):
        ToyConfig.build(tuple(range(10)), {}, "Toy")
    with pytest.raises(ArgumentError, match="ToyConfig has no field colour; known: flag, limit"):
        ToyConfig.from_dict({"name": "t", "colour": 1})


def test_argument_errors_render_as_python_or_as_flags():
    err = ArgumentError("{} is bad; pass {} or {}, or {} with {}", Arg("target_linear", 1.5), Arg("overwrite", True),
                        Arg("compile", False), Arg("out_dir", Path("out/x")), Arg("sites", ["a#0", "b#0"]))
    assert str(err) == "target_linear=1.5 is bad; pass overwrite=True or compile=False, or out_dir='out/x' with " \
                       "sites=['a#0', 'b#0']"
    flags = {"out_dir": "--out"}
    assert err.render(lambda n: flags.get(n, "--" + n.replace("_", "-"))) == (
        "--target-linear 1.5 is bad; pass --overwrite or --no-compile, or --out out/x with --sites a#0 --sites b#0")


def test_declared_defaults_are_readable_once():
    assert field_default(ToyConfig, "rate") == 0.5 and field_default(ToyConfig, "name") is MISSING
    assert [f.name for f in config_fields(ToyConfig) if f.required] == ["name"]
    with pytest.raises(KeyError):
        field_default(ToyConfig, "nope")
