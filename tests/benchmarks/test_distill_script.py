"""benchmarks/distill.py end to end at toy sizes (its GPU run on the shapes teacher is the lead's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import distill  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def test_distill_script_runs_its_rows_and_merges_separate_processes(tmp_path):
    out = tmp_path / "a.json"
    payload = distill.main(["--smoke", "--rows", "teacher4,stage1-4,dmd2", "--targets", "0.5",
                            "--model", str(REPO / "examples" / "tiny_wan" / "model.py"), "--out", str(out)])
    runs = {(r["row"], r["target_linear"]): r for r in payload["runs"]}
    assert set(runs) == {("teacher4", None), ("stage1-4", 0.5), ("dmd2", 0.5)}
    assert all("error" not in r for r in runs.values()), [r.get("error") for r in runs.values()]
    assert runs[("teacher4", None)]["num_linear"] == 0 and runs[("dmd2", 0.5)]["num_linear"] == 3
    assert all(r["sampler_steps"] == 2 for r in runs.values())  # the smoke student's steps, recorded and used by eval
    dmd2 = runs[("dmd2", 0.5)]
    assert dmd2["distillation"]["objective"] == "dmd2" and dmd2["distillation"]["steps"] == 1
    assert {"psnr_db", "ssim", "velocity_rel_mse"} <= set(dmd2["fidelity"])
    assert set(payload["expected_seconds"]) == {"teacher4@None", "stage1-4@0.5", "dmd2@0.5"}
    other = dict(json.loads(out.read_text()), runs=[dict(dmd2, row="adm", label="stage 1 + adm distillation")])
    (tmp_path / "b.json").write_text(json.dumps(other))
    merged = distill.main(["--merge", str(out), str(tmp_path / "b.json"), "--out", str(tmp_path / "all.json")])
    assert {r["row"] for r in merged["runs"]} == {"teacher4", "stage1-4", "dmd2", "adm"}
    assert "stage 1 + dmd2 distillation" in merged["table_md"]
    bad = dict(other, settings=dict(other["settings"], distill_steps=7))
    (tmp_path / "c.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match="distill_steps"):
        distill.main(["--merge", str(out), str(tmp_path / "c.json"), "--out", str(tmp_path / "x.json")])
    # rows that train no distillation stage (teacher4, stage1-4) join distillation rows of any distillation settings
    base = dict(json.loads(out.read_text()), settings=dict(other["settings"], distill_steps=7),
                runs=[r for r in payload["runs"] if r["row"] != "dmd2"])
    (tmp_path / "d.json").write_text(json.dumps(base))
    joined = distill.main(["--merge", str(tmp_path / "d.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "y.json")])
    assert {r["row"] for r in joined["runs"]} == {"teacher4", "stage1-4", "adm"}
    assert joined["settings"]["distill_steps"] == other["settings"]["distill_steps"]


def test_distillation_cost_script_times_a_dmd2_step_with_its_fake_score(tmp_path):
    import distill_cost

    results = distill_cost.main(["--tiny", "--rows", "dmd2", "--json", str(tmp_path / "cost.json")])
    (row,) = results["rows"]
    assert "error" not in row, row.get("error")
    assert row["objective"] == "dmd2" and row["fake_score_trained_parameters"] == row["parameters"]  # fake_train all
    assert row["s_per_step"] > row["fake_updates_s_per_step"] > 0 and len(row["steps_s"]) == 1
