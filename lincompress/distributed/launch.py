"""``--nproc N``: start N processes through torch.distributed's elastic launcher, and report their failures.

``launch(argv, nproc)`` runs ``python -m lincompress <argv>`` in ``nproc`` worker processes
(``torch.distributed.launcher.elastic_launch``, standalone rendezvous on this host, no
restarts: what ``torchrun --standalone --nproc-per-node N -m lincompress <argv>`` does) and
waits. Rank 0 writes to this terminal (progress bar, summary); the other ranks' output goes to
log files. A failing worker records its one-line message (or its traceback) in a failure file;
when one rank fails the launcher stops the others, and prints the *first* failure -- the root
cause, by time -- as the one line a single-process run prints, with its exit code (2 for bad
input, 128 + N for a stop by signal N). SIGINT / SIGTERM / SIGHUP to the launcher are passed to
every worker, which checkpoint and stop as one process does; a second signal kills them. Workers
die with the launcher (``PR_SET_PDEATHSIG``), so ``kill -9`` of the launcher leaves no process
training behind.

Inside a worker (launched here or by ``torchrun``), ``init_from_env`` creates the default process
group from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from lincompress.errors import LinCompressError

LAUNCHED = "LINCOMPRESS_LAUNCHED"  # "1" in workers started by launch(): the launcher prints their failures
FAILURES = "LINCOMPRESS_FAILURES"  # directory of rank-<r>.json failure records
LAUNCHER_PID = "LINCOMPRESS_LAUNCHER_PID"
SHUTDOWN_TIMEOUT_S = 900  # how long workers may take to checkpoint after the launcher is signalled


class LaunchFailed(LinCompressError):
    """A worker failed; the message is the root cause's, ``exit_code`` its exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun (or our launcher) set it; 1 outside a launched worker."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    """``RANK`` as torchrun (or our launcher) set it; 0 outside a launched worker."""
    try:
        return max(0, int(os.environ.get("RANK", "0")))
    except ValueError:
        return 0


def in_launched_worker() -> bool:
    """Is this process a worker that ``launch`` started (so the launcher reports its failures)?"""
    return os.environ.get(LAUNCHED) == "1"


def should_launch(nproc: int | None) -> bool:
    """``--nproc N > 1`` in a process that is not already one of N (torchrun, a process group)."""
    from lincompress.distributed.context import initialized

    return nproc is not None and nproc > 1 and env_world_size() == 1 and not initialized()


# --------------------------------------------------------------------------- inside a worker


def init_from_env(device: str | None = None) -> bool:
    """Create the default process group from torchrun's environment (no-op outside one, or when it exists).

    Backend: NCCL for CUDA tensors plus gloo for CPU objects when training on CUDA, gloo on CPU.
    Returns True when this call created the group (then ``destroy_process_group`` is the caller's).
    """
    import torch.distributed as dist

    from lincompress.devices import resolve_device
    from lincompress.distributed.context import backend_for, initialized, local_rank

    if initialized() or env_world_size() == 1:
        return False
    where = resolve_device(device)
    if where.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend_for(where), timeout=timedelta(minutes=30))
    return True


@contextmanager
def process_group_from_env(device: str | None = None) -> Iterator[None]:
    """``init_from_env`` for the length of a command; the group it created is destroyed after."""
    import torch.distributed as dist

    created = init_from_env(device)
    try:
        yield
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def die_with_launcher() -> None:
    """In a launched worker: get SIGKILL when the launcher dies (Linux ``PR_SET_PDEATHSIG``); no-op elsewhere."""
    parent = os.environ.get(LAUNCHER_PID)
    if not in_launched_worker() or parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the launcher was gone before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def report_failure(message: str, exit_code: int, details: str | None = None) -> bool:
    """Record this worker's failure for the launcher (and torchrun's summary); True when the launcher prints it.

    ``details``: a traceback (an unexpected error), None for a user error's one line.
    """
    rank = int(os.environ.get("RANK", "0"))
    record = {"rank": rank, "message": message, "exit_code": int(exit_code), "time_ns": time.time_ns(),
              "details": details}
    folder = os.environ.get(FAILURES)
    if folder:
        _write_json(Path(folder) / f"rank-{rank}.json", record)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:  # the format torchrun's failure summary reads
        _write_json(Path(error_file), {"message": {"message": message, "extraInfo": {
            "py_callstack": details or message, "timestamp": str(int(time.time()))}}, "lincompress": record})
    return in_launched_worker() and os.environ.get("LOCAL_RANK", "0") == "0"


def _write_json(path: Path, data: Any) -> None:
    from lincompress import atomic

    try:
        atomic.write_json(path, data)
    except OSError:
        pass  # reporting must never hide the failure itself


# --------------------------------------------------------------------------- the launcher


def _failures(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("rank-*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("time_ns", 0))


def _log_of(logs: Path, rank: int) -> str | None:
    found = sorted(glob.glob(str(logs / "*" / "attempt_*" / str(rank) / "stderr.log")))
    return found[-1] if found else None


def root_cause(records: list[dict[str, Any]], logs: Path | None = None) -> LaunchFailed | None:
    """The first failure by time, as the error the launcher ends with (a traceback goes to stderr first)."""
    if not records:
        return None
    first = min(records, key=lambda r: r.get("time_ns", 0))
    message = first["message"]
    if first.get("details"):
        sys.stderr.write(first["details"].rstrip() + "\n")
        log = _log_of(logs, first["rank"]) if logs is not None and first["rank"] else None
        message = f"process {first['rank']} failed: {message}" + (f" (its output: {log})" if log else "")
    return LaunchFailed(message, first.get("exit_code", 1))


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Worker processes inherit ``os.environ`` as it is when they start."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet_elastic() -> Iterator[None]:
    """The agent logs every shutdown step (each of its loggers has its own level); the launcher reports the outcome."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def check_devices(nproc: int, device: str | None) -> None:
    """Before starting anything: training on CUDA takes one GPU per process, and this host must have them."""
    from lincompress.config import Arg, ArgumentError
    from lincompress.devices import resolve_device

    if resolve_device(device).type != "cuda":
        return  # CPU processes (gloo): any number
    count = torch.cuda.device_count()
    if count < nproc:
        raise ArgumentError(f"{{}} needs one CUDA GPU per process and this host has {count}; give {{}} or fewer, or {{}}",
                            Arg("nproc", nproc), Arg("nproc", count), Arg("device", "cpu"))


def launch(argv: list[str], nproc: int, device: str | None = None) -> None:
    """Run ``python -m lincompress <argv>`` in ``nproc`` processes on this host; raise ``LaunchFailed`` on failure.

    ``device``: the run's device option, checked first (``check_devices``).
    """
    import dataclasses

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_devices(nproc, device)
    work = Path(tempfile.mkdtemp(prefix="lincompress-nproc-"))
    logs, failures = work / "logs", work / "failures"
    failures.mkdir()
    options: dict[str, Any] = dict(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"lincompress-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=str(logs), redirects={r: Std.ALL for r in range(1, nproc)}))
    if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}:
        options["shutdown_timeout"] = SHUTDOWN_TIMEOUT_S
    env = {LAUNCHED: "1", FAILURES: str(failures), LAUNCHER_PID: str(os.getpid()),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # torchrun's default for several workers
    failed: LaunchFailed | None = None
    try:
        with _environment(env), _quiet_elastic():
            elastic_launch(LaunchConfig(**options), sys.executable)("-m", "lincompress", *argv)
    except ChildFailedError as exc:
        failed = root_cause(_failures(failures), logs)
        if failed is None:  # nothing recorded: killed (out of memory?) or died before the CLI ran
            rank, failure = exc.get_first_failure()
            how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
                   else f"exited with status {failure.exitcode}")
            log = _log_of(logs, rank) if rank else None
            failed = LaunchFailed(f"process {rank} of {nproc} {how}" + (f"; its output: {log}" if log else ""),
                                  failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode)
    except SignalException as exc:  # this launcher was signalled; the workers got the signal and stopped
        signum = int(exc.sigval)
        failed = root_cause(_failures(failures), logs) or LaunchFailed(
            f"stopped by {signal.Signals(signum).name}; the {nproc} processes were stopped (the last checkpoint is "
            "kept); run the same command with --resume to continue", 128 + signum)
    keep = failed is not None and "its output:" in str(failed)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    if failed is not None:
        raise failed
