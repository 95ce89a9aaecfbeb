"""The guidance evidence scripts run end to end at toy sizes (their GPU runs are the lead's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import guidance  # noqa: E402
import guidance_latency  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def test_latency_script_counts_half_the_forwards_for_the_distilled_student(tmp_path):
    out = tmp_path / "latency.json"
    results = guidance_latency.main(["--tiny", "--json", str(out)])
    rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["teacher (softmax), CFG"]["forwards_per_video"] == 2 * results["steps"]
    assert rows["student 0.7 linear, CFG"]["forwards_per_video"] == 2 * results["steps"]
    assert rows["student 0.7 linear, distilled"]["forwards_per_video"] == results["steps"]
    assert all(r["output_finite"] and r["latency_s"] > 0 for r in rows.values())
    assert results["num_linear"] == round(0.7 * results["num_candidates"]) and "VAE" in results["excluded"]


def test_shapes_guidance_script_trains_and_evaluates_a_distilled_student(tmp_path):
    out = tmp_path / "guidance.json"
    guidance.main(["--smoke", "--modes", "distilled", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["guidance_scale"] == 2.0 and payload["smoke"]
    (run,) = payload["runs"]
    assert "error" not in run, run.get("error")
    assert run["mode"] == "distilled" and run["guidance"]["student_forwards_per_step"] == 1
    assert run["guidance"]["teacher_forwards_per_step"] == 2 and run["num_linear"] >= 1
    assert {"psnr_db", "ssim", "velocity_rel_mse"} <= set(run["fidelity"])
    assert "world_score" in run["world"] and "world_score" in payload["teacher_unguided_world"]
    table = guidance.markdown_table(payload)
    assert "student distilled" in table and "teacher, unguided" in table

    other = dict(payload, runs=[dict(run, mode="cfg")])  # a second file, as from a separate GPU job
    (tmp_path / "cfg.json").write_text(json.dumps(other))
    merged = guidance.main(["--merge", str(out), str(tmp_path / "cfg.json"), "--out", str(tmp_path / "all.json")])
    assert sorted(r["mode"] for r in merged["runs"]) == ["cfg", "distilled"]
    bad = dict(payload, guidance_scale=3.0)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match="guidance scale"):
        guidance.main(["--merge", str(out), str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.json")])


def test_the_written_out_wan_loop_is_wanpipelines_loop():
    import torch

    import e2e

    config = e2e.TINY_CONFIGS["tiny"]
    model = e2e.build_wan(config, torch.device("cpu"), torch.float32)
    embeds = torch.randn(1, config.text_tokens, config.model["text_dim"], generator=torch.Generator().manual_seed(0))
    size = guidance_latency.PIXELS["tiny"]
    for mode in ("cfg", "distilled"):
        config_ = guidance_latency.GuidanceConfig(scale=5.0, negative_prompt="", student=mode)
        ours = guidance_latency.generate(guidance_latency.WanLoop(model), embeds, config_, size, 3, 0)
        theirs = guidance_latency.generate(guidance_latency.make_pipeline(model), embeds, config_, size, 3, 0)
        torch.testing.assert_close(ours, theirs)
