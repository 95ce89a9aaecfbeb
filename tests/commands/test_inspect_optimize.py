"""The CLI as a user runs it: `lincompress inspect` and `lincompress optimize` on the shipped tiny example."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from lincompress.cli import main



def test_inspect_json(repo):
    result = CliRunner().invoke(main, ["inspect", str(repo / "examples/tiny_wan/model.py"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    kinds = [s["kind"] for s in report["sites"]]
    assert kinds.count("self") == 6 and kinds.count("cross") == 6
    assert report["trace_method"] == "export"


def test_inspect_table(repo):
    result = CliRunner().invoke(main, ["inspect", str(repo / "examples/tiny_wan/model.py")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "blocks.0.attn1#0" in result.output and "6 candidate sites" in result.output


def test_optimize_writes_an_artifact(repo, tmp_path):
    out = tmp_path / "lin70"
    result = CliRunner().invoke(main, ["optimize", str(repo / "examples/tiny_wan/model.py"), "--target-linear", "0.7",
                                       "--out", str(out), "--steps", "0"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "lincompress.json").read_text())
    assert manifest["num_linear"] == 4 and manifest["num_candidates"] == 6


def test_optimize_passes_adm_grad_steps_to_the_objective(repo, tmp_path, monkeypatch):
    from lincompress.recovery import trainer as trainer_module

    seen = []
    original = trainer_module.Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.objective)

    monkeypatch.setattr(trainer_module.Trainer, "__init__", spy)
    out = tmp_path / "adm"
    result = CliRunner().invoke(main, ["optimize", str(repo / "examples/tiny_wan/model.py"), "--target-linear", "0.5",
                                       "--out", str(out), "--steps", "1", "--samples", "1", "--teacher-steps", "2",
                                       "--adm-grad-steps", "1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert [o.name for o in seen] == ["adm"] and seen[0].grad_steps == 1
    assert seen[0].onpolicy > 0  # the measured default keeps the on-policy term


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "missing/model.py"], "does not exist"),
        (["optimize", "examples/tiny_wan/model.py", "--target-linear", "1.7", "--out", "x"], "out of range"),
        (["optimize", "examples/tiny_wan/model.py", "--height", "32", "--steps", "0", "--out", "x"],
         "--height 32 applies to diffusers pipelines; tiny-wan is a Target"),
    ],
)
def test_user_errors_are_one_line_without_traceback(repo, args, message):
    result = subprocess.run([sys.executable, "-c", "from lincompress.cli import main; main()", *args], cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
