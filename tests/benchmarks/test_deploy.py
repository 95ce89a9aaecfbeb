"""benchmarks/deploy.py: a package that crashes its loader is that row's error; rows merge across split runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import deploy  # noqa: E402


def test_a_package_that_fails_to_load_becomes_the_row_error(tmp_path):
    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"not a zip archive")
    result = deploy.run_package_isolated(bogus, {"hidden_states": torch.zeros(1, 2)}, reps=1, workdir=tmp_path)
    assert "forward_ms" not in result and "output" not in result
    assert result["error"] == "the package failed to load/run in a fresh process (exit 1)"
    assert any("not a loadable AOTInductor package" in line for line in result["stderr_tail"])


def test_speedups_use_each_modes_softmax_row():
    rows = [{"mode": "eager", "target_linear": 0.0, "forward_ms": 600.0},
            {"mode": "compile", "target_linear": 0.0, "forward_ms": 500.0},
            {"mode": "compile", "target_linear": 0.7, "forward_ms": 250.0},
            {"mode": "aoti", "target_linear": 0.7, "error": "crashed"},
            {"mode": "aoti", "target_linear": 1.0, "forward_ms": 200.0, "speedup_vs_same_mode_softmax": 9.0}]
    deploy.fill_speedups(rows)
    assert rows[2]["speedup_vs_same_mode_softmax"] == pytest.approx(2.0)
    assert rows[2]["speedup_vs_eager_softmax"] == pytest.approx(2.4)
    assert "speedup_vs_eager_softmax" not in rows[3]
    assert "speedup_vs_same_mode_softmax" not in rows[4]  # no aoti softmax row: a stale value is dropped
    assert rows[4]["speedup_vs_eager_softmax"] == pytest.approx(3.0)


def test_merge_keeps_only_the_modes_not_measured_again(tmp_path):
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps({"rows": [{"mode": "eager", "target_linear": 0.0}, {"mode": "compile", "target_linear": 0.0}]}))
    args = argparse.Namespace(merge=True, json=str(path), modes=["eager", "aoti"])
    assert deploy.kept_rows(args) == [{"mode": "compile", "target_linear": 0.0}]
    assert deploy.kept_rows(argparse.Namespace(merge=False, json=str(path), modes=["eager"])) == []


def test_aoti_config_overrides_are_parsed_and_checked():
    configs = deploy.aoti_inductor_configs(["aot_inductor.package_constants_in_so=False"])
    assert configs["aot_inductor.package_constants_in_so"] is False
    with pytest.raises(SystemExit, match="no inductor config"):
        deploy.aoti_inductor_configs(["aot_inductor.no_such_knob=1"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        deploy.aoti_inductor_configs(["aot_inductor.package_constants_in_so"])
