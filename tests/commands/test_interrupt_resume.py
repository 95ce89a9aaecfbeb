"""Real interruptions of ``lincompress optimize``: SIGTERM and kill -9 of the process, then ``--resume``.

The resumed run must end with the same weights (checksum) and report the same numbers as a
run that was never interrupted; ``--resume`` with nothing to resume is a one-line error.
Each case starts the command as its own process on the diffusers-free tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MODEL = Path(__file__).with_name("tiny_model.py")
REPO = Path(__file__).resolve().parents[2]
STEPS = 10
ARGS = ["--target-linear", "0.67", "--steps", str(STEPS), "--samples", "1", "--teacher-steps", "2",
        "--checkpoint-every", "2", "--quiet"]
RUN_FACTS = ("seconds", "resumed_from")  # wall time and where it resumed may differ; nothing else may


def _env(delay: float = 0.0) -> dict[str, str]:
    # one thread everywhere: bit-exact results need the same thread count in every process
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "TINY_MODEL_DELAY": str(delay)}


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from lincompress.cli import main; main()", "optimize", str(MODEL),
            *ARGS, "--out", str(out), *extra]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(out, *extra), env=_env(), capture_output=True, text=True, timeout=300)


def _steps_logged(out: Path) -> int:
    try:
        lines = (out / ".lincompress-work" / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return max((json.loads(line)["step"] for line in lines if line.strip().endswith("}")), default=0)


def _checkpointed(out: Path) -> int:
    try:
        return json.loads((out / ".lincompress-work" / "checkpoints" / "latest.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _start_and_stop(out: Path, sig: int, ready, *extra: str) -> subprocess.CompletedProcess:
    """Start the command slowed down, send ``sig`` once ``ready(out)``, and wait for it to end."""
    proc = subprocess.Popen(_command(out, *extra), env=_env(delay=0.02), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ready(out):
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _summary(out: Path) -> tuple[str, dict, list]:
    manifest = json.loads((out / "lincompress.json").read_text())
    recovery = {k: v for k, v in manifest["metrics"]["recovery"].items() if k not in RUN_FACTS}
    log = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
           for line in (out / "metrics.jsonl").read_text().splitlines()]
    return manifest["weights"]["sha256"], recovery, log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[str, dict, list]:
    out = tmp_path_factory.mktemp("uninterrupted") / "art"
    result = _run(out)
    assert result.returncode == 0, result.stderr
    return _summary(out)


def test_sigterm_then_kill_9_then_resume_ends_as_the_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "art"
    # SIGTERM (what `timeout` and schedulers send) mid-run: the step finishes, a checkpoint is written, exit 143
    stopped = _start_and_stop(out, signal.SIGTERM, lambda o: _steps_logged(o) >= 3)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    message = stopped.stderr.strip()
    assert message.startswith("error: stopped by SIGTERM at step ") and "--resume" in message
    assert "Traceback" not in stopped.stderr and len(message.splitlines()) == 1
    at = _checkpointed(out)
    assert 3 <= at < STEPS and f"checkpoint of step {at} saved" in message
    assert not (out / "lincompress.json").exists()

    # kill -9 after the next checkpoint and more steps: nothing can be saved, the last checkpoint is what counts
    killed = _start_and_stop(out, signal.SIGKILL, lambda o: _checkpointed(o) > at and _steps_logged(o) > _checkpointed(o),
                             "--resume")
    assert killed.returncode == -signal.SIGKILL
    last = _checkpointed(out)
    assert at < last < STEPS and _steps_logged(out) > last  # work after the checkpoint was lost ...

    resumed = _run(out, "--resume")  # ... and is redone identically
    assert resumed.returncode == 0, resumed.stderr
    weights, recovery, log = _summary(out)
    want_weights, want_recovery, want_log = uninterrupted
    assert json.loads((out / "lincompress.json").read_text())["metrics"]["recovery"]["resumed_from"] == last
    assert recovery == want_recovery  # velocity errors before / without / after recovery, final loss
    assert log == want_log  # every step's losses, once each
    assert weights == want_weights  # bit-identical weights


def test_resume_with_nothing_to_resume_is_a_one_line_error(tmp_path):
    result = _run(tmp_path / "new", "--resume")
    assert result.returncode == 2
    assert result.stderr.startswith("error: nothing to resume: ") and "run without --resume to start" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
