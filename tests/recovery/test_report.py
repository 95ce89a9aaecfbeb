"""The recovery report draws its plots without touching the user's matplotlib backend or pyplot state."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def test_plots_leave_the_backend_and_pyplot_alone(repo, tmp_path):
    pytest.importorskip("matplotlib")
    code = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        from lincompress.recovery import report
        assert "matplotlib.pyplot" not in sys.modules
        records = [{{"step": s, "loss": 1.0 / s, "objective": 1.0 / s, "scores": {{"a#0": 0.5, "b#0": 1 - 0.01 * s}}}}
                   for s in range(1, 6)]
        from pathlib import Path
        written = report._plots(records, Path({str(tmp_path)!r}))
        assert written == [report.LOSS_PNG, report.SCORES_PNG], written
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    for name in ("recovery_loss.png", "selection_scores.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
