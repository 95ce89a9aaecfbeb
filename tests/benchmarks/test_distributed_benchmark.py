"""benchmarks/distributed.py: --smoke runs its jobs end to end on CPU (gloo, 2 processes); results of parts merge."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import distributed  # noqa: E402


@pytest.mark.slow
def test_smoke_times_one_and_two_processes_on_the_same_global_batch(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the jobs' temporary files
    results = distributed.main(["--smoke", "--out", str(tmp_path)])
    assert not list((tmp_path / "tmp").glob("lincompress-*"))  # the jobs removed their work dirs
    saved = json.loads((tmp_path / "distributed_smoke.json").read_text())
    assert saved == results
    smoke = saved["smoke"]
    one, two = smoke["1"], smoke["2"]
    assert one["ok"] and two["ok"], (one, two)
    assert (one["nproc"], one["grad_accum"]) == (1, 2) and (two["nproc"], two["grad_accum"]) == (2, 1)
    assert one["sites"] == two["sites"] == 3 and one["params"] == two["params"]
    assert one["s_per_step"] > 0 and smoke["throughput_ratio"] == pytest.approx(one["s_per_step"] / two["s_per_step"])
    assert smoke["device"] == "cpu" and smoke["nproc"] == 2
    assert "| tiny Wan | 2 |" in distributed.table(saved)


def _row(nproc: int, s_per_step: float, peak: float) -> dict:
    return {"ok": True, "nproc": nproc, "latent": [16, 5, 90, 160], "video_tokens": 18000, "s_per_step": s_per_step,
            "samples_per_s": nproc / s_per_step, "peak_memory_gib_per_gpu": [peak] * nproc}


def test_a_run_of_one_part_keeps_the_other_parts_earlier_result_and_the_table_shows_both(tmp_path):
    path = tmp_path / "distributed.json"
    scaling = {"shape": "Wan2.1-1.3B", "nproc": 2, "device": "NVIDIA H200", "1": _row(1, 20.0, 46.0),
               "2": _row(2, 11.0, 40.0), "throughput_ratio": 20 / 11, "scaling_efficiency": 10 / 11}
    path.write_text(json.dumps({"scaling": scaling, "wan14b": {"attempts": [], "nproc": 2}}))
    wan14b = {"shape": "Wan2.1-14B", "nproc": 4, "attempts": [{"ok": False, "error": "out of memory"}],
              "result": _row(4, 40.0, 120.5)}
    merged = distributed.merge_results(path, {"wan14b": wan14b})
    assert merged == {"scaling": scaling, "wan14b": wan14b}  # the new part replaces its old result, the other stays
    text = distributed.table(merged)
    assert "| Wan-14B | 4 | [16, 5, 90, 160] | 18000 | 40.000 | 0.100 | 120.5, 120.5, 120.5, 120.5 |" in text
    assert "| Wan2.1-1.3B | 1 |" in text and "| Wan2.1-1.3B | 2 |" in text
    assert "Wan2.1-1.3B: 2 GPUs give 1.82x the throughput of 1 (efficiency 91%)" in text
    assert distributed.merge_results(tmp_path / "absent.json", {"wan14b": wan14b}) == {"wan14b": wan14b}


def test_a_job_past_its_timeout_is_stopped_with_its_workers_and_says_so():
    import os
    import time

    job = ("import subprocess, sys, time\n"
           "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
           "print(worker.pid, flush=True)\ntime.sleep(120)\n")
    start = time.monotonic()
    done = distributed._job([sys.executable, "-c", job], dict(os.environ), timeout=2)
    assert time.monotonic() - start < 30 and done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "timed out after 2 s (--job-timeout)"
    worker = Path(f"/proc/{int(done.stdout.split()[0])}/stat")

    def running() -> bool:  # a zombie (exited, not yet reaped by init) is not running
        try:
            return worker.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()


def test_a_failed_jobs_row_names_its_cause_not_torchruns_summary():
    torchrun_tail = ("Traceback (most recent call last):\n  File \"x.py\", line 3\n"
                     "RuntimeError: [../gloo/transport/tcp/pair.cc:534] Connection closed by peer\n"
                     "E1201 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1)\n"
                     "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
                     "============================================================\n")
    assert distributed.job_error(torchrun_tail) == (
        "RuntimeError: [../gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    assert distributed.job_error("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate") == "out of memory"
    assert distributed.job_error("...\ntimed out after 5 s (--job-timeout)") == "timed out after 5 s (--job-timeout)"
    assert distributed.job_error("killed\n=====\n") == "killed"
