"""benchmarks/checkpoint.py at its --tiny size: saves twice, verifies + loads bit-exactly, writes the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import checkpoint  # noqa: E402


def test_tiny_run_measures_save_and_load_and_writes_json(tmp_path, one_thread):
    out = tmp_path / "checkpoint.json"
    results = checkpoint.main(["--tiny", "--device", "cpu", "--json", str(out), "--dir", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    saves, load = results["rows"][:2], results["rows"][2]
    assert [r["what"] for r in saves] == ["save step 1", "save step 2 (replaces step 1)"]
    assert all(r["seconds"] > 0 and r["bytes"] > 4 * results["params"] * 3 for r in saves)  # params + 2 moments
    assert 0 < saves[0]["hash_seconds"] and load["bit_exact"] is True and results["device"] == "cpu"
    assert sorted(p.name for p in (tmp_path / "work" / "checkpoints").iterdir()) == ["latest.json", "step-0000002"]
