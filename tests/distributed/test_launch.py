"""The launcher's bookkeeping without launching: when to launch, failure records, which failure is the root cause."""

from __future__ import annotations

import json

import pytest

from lincompress.distributed import launch


def test_nproc_launches_only_outside_a_group_of_workers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch.should_launch(2) and not launch.should_launch(1) and not launch.should_launch(None)
    assert launch.init_from_env("cpu") is False  # not a worker: no process group to create
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun (or --nproc) worker runs the command itself
    assert not launch.should_launch(2)


def test_a_worker_records_its_failure_for_the_launcher_and_for_torchruns_summary(monkeypatch, tmp_path):
    monkeypatch.setenv(launch.FAILURES, str(tmp_path))
    monkeypatch.setenv(launch.LAUNCHED, "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    assert launch.report_failure("--steps -1 must be >= 0", 2) is False  # rank 1: its stderr is a log file, print there
    record = json.loads((tmp_path / "rank-1.json").read_text())
    assert record["message"] == "--steps -1 must be >= 0" and record["exit_code"] == 2 and record["details"] is None
    elastic = json.loads((tmp_path / "error.json").read_text())
    assert elastic["message"]["message"] == "--steps -1 must be >= 0"  # what torchrun's summary shows
    assert int(elastic["message"]["extraInfo"]["timestamp"]) > 0
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert launch.report_failure("x", 2) is True  # rank 0 shares the launcher's terminal: the launcher prints


def test_the_root_cause_is_the_first_failure(tmp_path, capsys):
    records = [
        {"rank": 0, "message": "RuntimeError: Connection closed by peer", "exit_code": 1, "time_ns": 20,
         "details": "Traceback ...\nRuntimeError: Connection closed by peer"},
        {"rank": 1, "message": "--lr -1 must be >= 0", "exit_code": 2, "time_ns": 10, "details": None},
    ]
    for r in records:
        (tmp_path / f"rank-{r['rank']}.json").write_text(json.dumps(r))
    failed = launch.root_cause(launch._failures(tmp_path))
    assert str(failed) == "--lr -1 must be >= 0" and failed.exit_code == 2
    assert capsys.readouterr().err == ""  # a user error is its one line, nothing more
    records[0]["time_ns"] = 5  # an internal error first: its traceback, then one line naming the process
    (tmp_path / "rank-0.json").write_text(json.dumps(records[0]))
    failed = launch.root_cause(launch._failures(tmp_path))
    assert str(failed) == "process 0 failed: RuntimeError: Connection closed by peer" and failed.exit_code == 1
    assert "Traceback" in capsys.readouterr().err
    assert launch.root_cause([]) is None


def test_failure_files_that_are_cut_short_are_skipped(tmp_path):
    (tmp_path / "rank-0.json").write_text('{"rank": 0, "mess')
    assert launch._failures(tmp_path) == []


def test_cuda_training_needs_a_gpu_per_process_before_anything_starts(monkeypatch):
    import torch

    from lincompress.config import ArgumentError

    launch.check_devices(4, "cpu")  # CPU processes: any number
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    launch.check_devices(2, None)  # the default device is cuda here: 2 GPUs for 2 processes
    with pytest.raises(ArgumentError) as err:
        launch.check_devices(4, None)
    assert err.value.render(lambda name: "--" + name.replace("_", "-")) == (
        "--nproc 4 needs one CUDA GPU per process and this host has 2; give --nproc 2 or fewer, or --device cpu")
