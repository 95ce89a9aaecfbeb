"""Config fields become CLI flags (one declaration: default, help, choices); errors come back with flag names."""

from __future__ import annotations

from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from lincompress.benchmarking import BenchConfig
from lincompress.cli import main
from lincompress.commands._options import config_options, flag_names, given, objective_fields
from lincompress.config import MISSING, PassConfig, config_fields, option
from lincompress.distill_config import DistillConfig
from lincompress.passes.find_attention import FindAttentionConfig
from lincompress.passes.hybridize import HybridizeConfig
from lincompress.passes.select import SelectConfig
from lincompress.passes.selective_transfer import GreedySelectConfig
from lincompress.recovery_config import RecoveryConfig, SelectiveConfig
from lincompress.target import TargetOptions


@dataclass
class _Config(PassConfig):
    out: str = option(MISSING, help="where")
    steps: int = option(3, help="steps")
    mode: str = option("a", choices=("a", "b"), help="mode")
    fast: bool = option(False, help="fast")
    checks: bool = option(True, help="checks")
    tri: bool | None = option(None, help="tri-state")
    tag: list[str] = option(default_factory=list, help="tag")
    hidden: int = option(1, cli=False, help="not a flag")
    rate: float = option(0.5, cli="--learning-rate", help="renamed flag")


def _command(*configs):
    seen = {}

    @click.command()
    @config_options(*configs)
    def cmd(**options):
        seen.update(given(options))

    return cmd, seen


def test_every_field_is_a_flag_with_its_declared_default_and_only_typed_values_are_forwarded():
    cmd, seen = _command(_Config)
    flags = flag_names(cmd)
    assert flags == {"out": "--out", "steps": "--steps", "mode": "--mode", "fast": "--fast", "checks": "--checks",
                     "tri": "--tri", "tag": "--tag", "rate": "--learning-rate"}
    help_text = CliRunner().invoke(cmd, ["--help"], terminal_width=200).output
    assert "[default: 3]" in help_text and "renamed flag" in help_text and "--no-checks" in help_text
    result = CliRunner().invoke(cmd, ["--out", "o", "--no-checks", "--tag", "x", "--tag", "y", "--learning-rate", "0.1"])
    assert result.exit_code == 0, result.output
    assert seen == {"out": "o", "checks": False, "tag": ["x", "y"], "rate": 0.1}  # defaults stay the library's
    assert _Config(**seen).rate == 0.1
    assert CliRunner().invoke(cmd, ["--out", "o", "--mode", "c"]).exit_code == 2  # choices from the declaration


def test_adding_a_field_is_all_it_takes_to_get_a_flag():
    @dataclass
    class Extended(_Config):
        student_steps: int = option(4, help="a field another engineer adds")

    cmd, seen = _command(Extended)
    assert CliRunner().invoke(cmd, ["--out", "o", "--student-steps", "2"]).exit_code == 0
    assert seen == {"out": "o", "student_steps": 2}


def test_fields_shared_by_configs_are_one_flag_and_must_agree():
    cmd, _ = _command(SelectConfig, SelectiveConfig, GreedySelectConfig)
    assert list(flag_names(cmd)).count("target_linear") == 1

    @dataclass
    class Clash(PassConfig):
        steps: int = option(4, help="another default")

    with pytest.raises(TypeError, match="'steps' is declared differently"):
        config_options(_Config, Clash)


def test_commands_offer_every_config_field_and_every_objective_field():
    optimize = flag_names(main.commands["optimize"])
    for cls in (FindAttentionConfig, HybridizeConfig, SelectConfig, SelectiveConfig, GreedySelectConfig, RecoveryConfig,
                DistillConfig):
        for f in config_fields(cls):
            if f.meta.get("cli", True) is not False and f.name not in ("strategy", "sites"):
                assert f.name in optimize, f"optimize lacks a flag for {cls.__name__}.{f.name}"
    assert optimize["include"] == "--include" and optimize["warmup"] == "--selection-warmup"
    assert optimize["points"] == "--greedy-points" and optimize["out_dir"] == "--out"
    for obj_name, option_name, _ in objective_fields():
        assert option_name in optimize
    assert "adm_grad_steps" in optimize
    bench = flag_names(main.commands["bench"])
    assert {f.name for f in config_fields(BenchConfig)} <= set(bench)
    target_flags = {f.name for f in config_fields(TargetOptions) if f.meta.get("cli", True) is not False}
    assert target_flags == {"prompts_file", "negative_prompt", "guidance_scale", "height", "width", "frames",
                            "max_sequence_length"}
    for command in ("optimize", "inspect", "eval", "bench"):
        flags = flag_names(main.commands[command])
        assert target_flags <= set(flags), f"{command} lacks target flags {target_flags - set(flags)}"
        assert flags["prompts_file"] == "--prompts"
    assert flag_names(main.commands["eval"])["student_guidance"] == "--student-guidance"


@pytest.mark.parametrize(("args", "message"), [
    (["optimize", "M", "--out", "o", "--steps", "0", "--lr", "0.1"],
     "--lr 0.1 configures recovery, which this run does not do (--select uniform, --steps 0)"),
    (["optimize", "M", "--out", "o", "--selection-warmup", "2"], "--selection-warmup 2.0 is out of range"),
    (["optimize", "M", "--out", "o", "--steps", "0", "--select", "learned"],
     "--select learned trains the selection; give --steps > 0 or pick a heuristic --select"),
    (["optimize", "M", "--out", "o", "--adm-grad-steps", "0"], "ADM needs sampler_steps >= 1 and 1 <= grad_steps"),
    (["optimize", "M", "--out", "o", "--objective", "mse", "--adm-grad-steps", "1"],
     "--adm-grad-steps 1 applies to --objective adm only"),
    (["optimize", "M", "--out", "o", "--feature-map", "cosine"], "Invalid value for '--feature-map'"),
    (["bench", "M", "--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
    (["bench", "M", "--steps", "x"], "Invalid value for '--steps'"),
    (["optimize", "M", "--out", "o", "--height", "0"], "--height 0 must be >= 1"),
    (["optimize", "M", "--out", "o", "--guidance-scale", "inf"], "--guidance-scale inf must be a finite number > 0"),
    (["optimize", "M", "--out", "o", "--prompts", "no-such-prompts.txt"],
     "--prompts no-such-prompts.txt does not exist; give a text file with one prompt per line"),
    (["optimize", "M", "--out", "o", "--steps", "0", "--student-guidance", "distilled"],
     "--student-guidance distilled configures recovery, which this run does not do"),
    (["inspect", "M", "--frames", "-1"], "--frames -1 must be >= 1"),
])
def test_errors_name_flags_in_one_line(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
