"""``lincompress optimize --nproc 2`` on CPU (gloo, FSDP2): the same run as one process, killed and resumed.

Each case starts the real command (the launcher and its two workers) on the diffusers-free
tiny model of tests/commands. Equivalence guaranteed (lincompress.recovery.data_parallel):
2 processes with ``--grad-accum 2`` draw exactly what 1 process with ``--grad-accum 4`` draws,
so selection, per-step losses and metrics agree up to float summation order: losses and
metrics to a relative 1e-5, weights to 1e-5 absolute (they agree to ~1e-7 here). Every run
accumulates gradients (FSDP2 reduces after the last micro-batch only) and recomputes each
block's activations in backward (``--gradient-checkpointing``), which changes no number.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from commands.test_interrupt_resume import _checkpointed, _steps_logged  # the single-process test's probes

TESTS = Path(__file__).resolve().parents[1]
MODEL = TESTS / "commands" / "tiny_model.py"
REPO = TESTS.parent
STEPS = 8
ARGS = ["--target-linear", "0.67", "--steps", str(STEPS), "--samples", "3", "--shard-size", "1", "--teacher-steps", "2",
        "--checkpoint-every", "2", "--device", "cpu", "--gradient-checkpointing", "--quiet", "--keep-work"]
TWO = ("--nproc", "2", "--grad-accum", "2")  # 2 processes x 2 micro-batches ...
ONE = ("--grad-accum", "4")  # ... make the global batch of 1 process x 4
RUN_FACTS = ("seconds", "resumed_from")  # wall time and where a run resumed may differ; nothing else may
REL = 1e-5


def _env(delay: float = 0.0) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "TINY_MODEL_DELAY": str(delay)}


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lincompress", "optimize", str(MODEL), *ARGS, "--out", str(out), *extra]


def _run(out: Path, *extra: str, model: Path = MODEL) -> subprocess.CompletedProcess:
    command = [part if part != str(MODEL) else str(model) for part in _command(out, *extra)]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)


def _start_and_stop(out: Path, stop, ready, *extra: str) -> subprocess.CompletedProcess:
    """Start the launcher (its own process group), slowed down; ``stop(proc)`` once ``ready(out)``; wait."""
    proc = subprocess.Popen(_command(out, *extra), env=_env(delay=0.02), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not ready(out):
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.01)
    stop(proc)
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _workers_of(out: Path) -> list[str]:
    """Processes still running a command on ``out`` (none may outlive a killed launcher)."""
    found = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if str(out) in line and "lincompress" in line]


def _summary(out: Path) -> dict:
    manifest = json.loads((out / "lincompress.json").read_text())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    from safetensors.torch import load_file

    return {"selection": manifest["selection"], "weights": load_file(str(out / "weights.safetensors")),
            "sha": manifest["weights"]["sha256"], "log": log,
            "recovery": {k: v for k, v in manifest["metrics"]["recovery"].items() if k not in RUN_FACTS}}


def _close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def _same_run(got: dict, want: dict) -> None:
    assert got["selection"] == want["selection"]
    assert [(r["step"], r["num_linear"]) for r in got["log"]] == [(r["step"], r["num_linear"]) for r in want["log"]]
    for a, b in zip(got["log"], want["log"]):
        for key in ("loss", "objective", "adm", "constraint"):
            assert _close(a.get(key), b.get(key)), (a["step"], key, a.get(key), b.get(key))
    assert got["recovery"].keys() == want["recovery"].keys()
    for key, value in want["recovery"].items():
        assert value == got["recovery"][key] if isinstance(value, str) else _close(got["recovery"][key], value), key
    assert got["weights"].keys() == want["weights"].keys()
    assert max(float((got["weights"][k] - want["weights"][k]).abs().max()) for k in want["weights"]) < 1e-5


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "art"
    result = _run(out, *ONE)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("two") / "art"
    result = _run(out, *TWO)
    assert result.returncode == 0, result.stderr
    return out, result


def test_two_processes_make_the_run_of_one_process_with_their_micro_batches(one_process, two_processes):
    out, result = two_processes
    _same_run(_summary(out), _summary(one_process))
    # the teacher cache, made shard by shard on both ranks, is the one-process cache, byte for byte
    shards = sorted((one_process / ".lincompress-work" / "teacher").glob("shard-*.safetensors"))
    assert len(shards) == 3
    for shard in shards:
        assert (out / ".lincompress-work" / "teacher" / shard.name).read_bytes() == shard.read_bytes()
    # rank 0 alone wrote the log and printed the summary
    assert len((out / "metrics.jsonl").read_text().splitlines()) == STEPS
    assert result.stderr.count("artifact written to") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow  # five launches (about 80 s on 2 shared cores); CI runs it too
def test_sigterm_then_kill_9_then_resume_on_two_and_on_one_process(two_processes, tmp_path):
    out = tmp_path / "art"
    # SIGTERM to the launcher: both workers finish the step, agree to stop, checkpoint, exit 143; one line
    stopped = _start_and_stop(out, lambda p: p.send_signal(signal.SIGTERM), lambda o: _steps_logged(o) >= 3,
                              *TWO)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    message = stopped.stderr.strip()
    assert message.startswith("error: stopped by SIGTERM at step ") and "--resume" in message, message
    assert "Traceback" not in stopped.stderr and len(message.splitlines()) == 1
    at = _checkpointed(out)
    assert 3 <= at < STEPS and f"checkpoint of step {at} saved" in message

    # kill -9 of the launcher's process group after the next checkpoint: the workers die with it
    killed = _start_and_stop(out, lambda p: os.killpg(p.pid, signal.SIGKILL),
                             lambda o: _checkpointed(o) > at and _steps_logged(o) > _checkpointed(o),
                             *TWO, "--resume")
    assert killed.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _workers_of(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _workers_of(out), _workers_of(out)
    last = _checkpointed(out)
    assert at < last < STEPS

    on_one = tmp_path / "copy"
    shutil.copytree(out, on_one)
    resumed = _run(out, *TWO, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "lincompress.json").read_text())["metrics"]["recovery"]["resumed_from"] == last
    want = _summary(two_processes[0])
    got = _summary(out)
    assert got["log"] == [{**r, "seconds": g["seconds"]} for r, g in zip(want["log"], got["log"])]  # every step, once
    assert got["recovery"] == want["recovery"] and got["sha"] == want["sha"]  # bit-identical on the same 2 ranks

    # the 2-process checkpoint on 1 process: the same global batch needs --grad-accum 4, and says so
    wrong = _run(on_one, "--resume", "--grad-accum", "2")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "4 micro-batches per step (2 processes x --grad-accum 2)" in wrong.stderr, wrong.stderr
    assert "here --grad-accum 4 on 1 process" in wrong.stderr, wrong.stderr
    single = _run(on_one, "--resume", *ONE)
    assert single.returncode == 0, single.stderr
    _same_run(_summary(on_one), want)


WAN = REPO / "examples" / "tiny_wan" / "model.py"


def test_the_tiny_wan_example_on_two_processes_makes_the_run_of_one(tmp_path):
    """The shipped diffusers example: FSDP2 per WanTransformerBlock (its _no_split_modules), RoPE buffers, 6 sites."""
    runs = {}
    for name, extra in (("one", ONE), ("two", TWO)):
        command = [sys.executable, "-m", "lincompress", "optimize", str(WAN), "--target-linear", "0.5", "--steps", "6",
                   "--samples", "2", "--shard-size", "1", "--teacher-steps", "2", "--checkpoint-every", "6",
                   "--device", "cpu", "--quiet", "--out", str(tmp_path / name), *extra]
        done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs[name] = _summary(tmp_path / name)
    assert len(runs["one"]["selection"]) == 3
    _same_run(runs["two"], runs["one"])


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
API_SCRIPT = """
import sys
import torch.distributed as dist
from safetensors.torch import save_file
import lincompress
from lincompress.distributed import init_from_env, rank

model_py, out = sys.argv[1], sys.argv[2]
assert init_from_env("cpu") and dist.get_world_size() == 2
state = lincompress.compress(model_py, out_dir=out, target_linear=0.67, steps=8, samples=3, shard_size=1,
                             teacher_steps=2, checkpoint_every=2, device="cpu", gradient_checkpointing=True,
                             grad_accum=2, progress=False)
save_file({k: v.contiguous() for k, v in state.model.state_dict().items()}, f"{out}-rank{rank()}.safetensors")
dist.destroy_process_group()
"""


def test_torchrun_runs_the_command_and_a_script_that_calls_compress_over_its_process_group(two_processes, tmp_path):
    from safetensors.torch import load_file

    want = _summary(two_processes[0])
    # the command under the user's own launcher: no --nproc, the group's size (2) is used; rank 0 alone speaks,
    # warnings included (every rank meets the one this model.py raises: the same model, the same weights)
    model = tmp_path / "model.py"
    model.write_text(f"import sys, warnings\nsys.path.insert(0, {str(MODEL.parent)!r})\n"
                     "from tiny_model import build as _build\nfrom lincompress.errors import LinCompressWarning\n\n"
                     "def build():\n    warnings.warn(LinCompressWarning('built on this rank'))\n    return _build()\n")
    cli = subprocess.run([*TORCHRUN, "-m", "lincompress", "optimize", str(model), *ARGS, "--out", str(tmp_path / "cli"),
                          "--grad-accum", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert (cli.stdout + cli.stderr).count("artifact written to") == 1
    assert (cli.stdout + cli.stderr).count("warning: built on this rank") == 1, cli.stderr
    assert _summary(tmp_path / "cli")["sha"] == want["sha"]  # bit-identical to --nproc 2 (the same 2 ranks)

    # Python: every rank calls compress over the group it initialised; rank 0 writes, every rank gets the model
    script, out = tmp_path / "train.py", tmp_path / "api"
    script.write_text(API_SCRIPT)
    api = subprocess.run([*TORCHRUN, str(script), str(MODEL), str(out)], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert api.returncode == 0, api.stderr
    artifact = load_file(str(out / "weights.safetensors"))
    assert json.loads((out / "lincompress.json").read_text())["weights"]["sha256"] == want["sha"]
    assert not (out / ".lincompress-work").exists()  # removed once, by rank 0, after success
    for r in (0, 1):
        model = load_file(f"{out}-rank{r}.safetensors")
        assert all(torch.equal(model[k], v) for k, v in artifact.items()), r  # the trained model on every rank


def test_a_failure_on_one_rank_stops_both_with_its_one_line(tmp_path):
    model = tmp_path / "model.py"
    model.write_text(f"import os, sys\nsys.path.insert(0, {str(MODEL.parent)!r})\nfrom tiny_model import build as _build\n\n"
                     "def build():\n    if os.environ.get('RANK') == '1':\n"
                     "        raise RuntimeError('no weights for rank 1')\n    return _build()\n")
    result = _run(tmp_path / "art", "--nproc", "2", model=model)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {model}: build() raised RuntimeError: no weights for rank 1"], result.stderr
    assert not _workers_of(tmp_path / "art")


@pytest.mark.gpu
def test_two_gpus_make_the_run_of_one_gpu(tmp_path):
    """NCCL, bf16 mixed precision: FSDP2 gathers bf16 parameters where one GPU's autocast casts per op."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    one = _run(tmp_path / "one", "--device", "cuda", *ONE)
    two = _run(tmp_path / "two", "--device", "cuda", *TWO)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    a, b = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert a["selection"] == b["selection"]
    assert [r["num_linear"] for r in a["log"]] == [r["num_linear"] for r in b["log"]]
    for x, y in zip(a["log"], b["log"]):
        assert math.isclose(x["loss"], y["loss"], rel_tol=5e-2, abs_tol=1e-4), (x["step"], x["loss"], y["loss"])
