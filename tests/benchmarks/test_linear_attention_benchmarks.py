"""The linear-attention GPU benchmarks in their CPU smoke modes, so they cannot rot unnoticed.

benchmarks/linear_attention.py --smoke, tune_linear_attention.py --smoke (Triton interpreter; all
passes, and the forward-only --units run of the GPU segment),
e2e.py --tiny with the Hedgehog rows (fused and unfused), recovery.py --wan13-tiny (fused vs
unfused s/step in one run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def _script(name: str) -> dict:
    return runpy.run_path(str(BENCH / f"{name}.py"), run_name=f"{name}_under_test")


def test_op_benchmark_smoke_rows_errors_and_dispatch_overhead(tmp_path):
    out = tmp_path / "la.json"
    report = _script("linear_attention")["main"](["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["device"] and saved["environment"]["device_type"] == "cpu"
    rows = saved["shapes"][0]["methods"]
    assert {"relu eager", "relu op", "elu1 eager", "hedgehog eager", "hedgehog op", "hedgehog unfused (Dk 2D)"} <= set(rows)
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows.values())
    errors = saved["shapes"][0]["errors_vs_fp32"]
    assert all(e["max_rel"] < 1e-5 for e in errors.values())  # fp32 on CPU: the reference itself
    overhead = report["dispatch_overhead_cpu_us"]
    assert set(overhead) >= {"eager path (linear_attention) fwd+bwd us", "registered op (torch.ops) fwd+bwd us"}
    import torch

    q = torch.randn(1, 1, 3, 4)  # the no-work CPU backend of the overhead measurement was unregistered again
    assert torch.ops.lincompress.linear_attention(q, q, q, "relu", 1e-6, "bhnd").abs().sum() > 0


def test_tuner_smoke_writes_a_table_the_kernels_read(tmp_path):
    pytest.importorskip("triton")
    out, table = tmp_path / "tuning.json", tmp_path / "tuned_configs.py"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "tune_linear_attention.py"), "--smoke", "--maps", "hedgehog", "--top", "1",
         "--json", str(out), "--table", str(table)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["configs"]) == {"hedgehog:16x16:bnhd", "hedgehog:16x16:bhnd"}
    assert report["summary"]["hedgehog:16x16:bnhd"]["max_rel_error"] < 1e-4
    module = _load_table(table)
    from lincompress.kernels.tuned_configs import TUNED_CONFIGS

    assert module.TUNED_CONFIGS == {**TUNED_CONFIGS, **report["configs"]}  # the committed keys are kept
    from lincompress.kernels import linear_attention_triton as lat

    try:  # the tuner JSON, as LINCOMPRESS_LINEAR_ATTENTION_CONFIGS would load it
        lat.load_config_table(out)
        chosen = lat._resolved_configs("hedgehog", 16, 16, "bnhd", False)
        assert chosen["bwd_key"] == lat.KernelConfig.from_dict(report["configs"]["hedgehog:16x16:bnhd"]["bwd_key"])
    finally:
        lat.load_config_table(None)


def _load_table(path: Path):
    spec = importlib.util.spec_from_file_location("tuned_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tuner_forward_units_only_keep_every_backward_entry(tmp_path):
    """``--units state,output`` re-tunes the forward of a committed key and keeps that key's backward kernels."""
    pytest.importorskip("triton")
    from lincompress.kernels.tuned_configs import TUNED_CONFIGS

    tuner = _script("tune_linear_attention")
    committed = {"hedgehog:16x16:bnhd": {k: {"block_n": 99} for k in ("state", "output", "bwd_query", "bwd_key")}}
    tuned = {"hedgehog:16x16:bnhd": {"state": {"block_n": 16}, "output": {"block_n": 32, "tc_norm": 1}}}
    table, kept = tuner["merged_table"](tuned, {**TUNED_CONFIGS, **committed})
    assert table["hedgehog:16x16:bnhd"] == {"state": {"block_n": 16}, "output": {"block_n": 32, "tc_norm": 1},
                                            "bwd_query": {"block_n": 99}, "bwd_key": {"block_n": 99}}  # fmt: skip
    assert all(table[k] == v for k, v in TUNED_CONFIGS.items()) and kept == 2 + sum(map(len, TUNED_CONFIGS.values()))
    with pytest.raises(SystemExit, match="--units"):
        tuner["main"](["--units", "state,backward"])
    out, path = tmp_path / "tuning.json", tmp_path / "tuned_configs.py"  # the GPU segment's command, in smoke mode
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "tune_linear_attention.py"), "--smoke", "--maps", "hedgehog", "--top", "1",
         "--units", "state,output", "--json", str(out), "--table", str(path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["units"] == ["state", "output"] and set(report["configs"]["hedgehog:16x16:bnhd"]) == {"state", "output"}
    assert set(report["summary"]["hedgehog:16x16:bnhd"]["errors_vs_fp32"]) == {"out"}
    assert _load_table(path).TUNED_CONFIGS == {**TUNED_CONFIGS, **report["configs"]}


def test_e2e_tiny_has_fused_and_unfused_hedgehog_rows(tmp_path):
    out = tmp_path / "e2e.json"
    _script("e2e")["main"](["--tiny", "--configs", "tiny:eager", "--feature-maps", "hedgehog", "--targets", "1.0",
                            "--extra", "hedgehog-unfused@1.0", "--extra-modes", "eager", "--time-per-variant-s", "0.01",
                            "--min-reps", "1", "--max-reps", "1", "--json", str(out), "--device", "cpu"])  # fmt: skip
    rows = json.loads(out.read_text())["configs"][0]["rows"]
    assert [r["variant"] for r in rows] == ["softmax", "linear 1 (hedgehog)", "linear 1 (hedgehog-unfused)"]
    assert all(r["output_finite"] and r["forward_ms"] > 0 for r in rows)


def test_recovery_part2_times_unfused_fused_and_compiled_on_a_toy_wan(tmp_path):
    results = _script("recovery")["main"](["--skip-tiny", "--wan13-tiny", "--frames", "1", "--timed-steps", "1",
                                           "--compile-backend", "aot_eager", "--out", str(tmp_path)])  # fmt: skip
    row = results["wan13"]["result"]
    assert row["ok"] and row["paths"] == ["unfused", "fused", "compiled"] and row["k_linear"] == 2
    for phase in ("all_hybrid", "k_frozen_linear"):
        for path in row["paths"]:
            assert row[f"s_per_step_{phase}_{path}"] > 0 and len(row[f"steps_{phase}_{path}"]) == 1
        assert row[f"speedup_{phase}_fused"] > 0 and row[f"speedup_{phase}_compiled"] > 0
    assert row["graphs_compiled"] > 0  # the compiled path really ran through dynamo
    saved = json.loads((tmp_path / "recovery.json").read_text())
    assert saved["device"] == "cpu" and saved["wan13"]["result"]["speedup_all_hybrid_fused"] == row["speedup_all_hybrid_fused"]
