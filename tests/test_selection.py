"""The target count K = round(target_linear * L), and the warnings when rounding defeats the target."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from lincompress.cli import main
from lincompress.config import ArgumentWarning
from lincompress.selection import heuristic_selection, num_linear

MODEL = str(Path(__file__).parent / "commands" / "tiny_model.py")  # 3 candidate sites


@pytest.mark.parametrize(("target", "sites", "k", "message"), [
    (0.01, 6, 0, r"target_linear=0.01 makes 0 of 6 candidate attention sites linear \(it rounds down\): nothing "
                 r"changes; target_linear=0.167 or more makes 1 linear"),
    (0.95, 6, 6, r"target_linear=0.95 makes all 6 candidate attention sites linear \(it rounds up\).*"
                 r"target_linear=0.833 or less keeps one softmax"),
])
def test_a_target_that_rounds_to_none_or_all_warns_with_the_count(target, sites, k, message):
    with pytest.warns(ArgumentWarning, match=message):
        assert num_linear(target, sites) == k
    with pytest.warns(ArgumentWarning):
        assert len(heuristic_selection([f"s{i}" for i in range(sites)], target, "uniform")) == k


@pytest.mark.parametrize(("target", "sites"), [(0.0, 6), (1.0, 6), (0.5, 6), (0.167, 6), (0.833, 6), (0.9, 1)])
def test_targets_that_mean_what_they_say_do_not_warn(target, sites):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        num_linear(target, sites)


def test_the_cli_prints_the_warning_as_one_line_with_the_flag(tmp_path):
    result = CliRunner().invoke(main, ["optimize", MODEL, "--target-linear", "0.1", "--steps", "0", "--quiet",
                                       "--out", str(tmp_path / "art")])
    assert result.exit_code == 0, result.output
    assert ("warning: --target-linear 0.1 makes 0 of 3 candidate attention sites linear (it rounds down): nothing "
            "changes; --target-linear 0.334 or more makes 1 linear") in result.output
    assert "0 of 3 candidate sites are linear (uniform)\n" in result.output
