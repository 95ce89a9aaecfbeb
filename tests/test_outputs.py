"""User files are sacred: every output is checked before any work, and only files lincompress wrote are replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import lincompress
from lincompress import target as target_module
from lincompress.cli import main
from lincompress.errors import LinCompressError
from lincompress.outputs import RECORD, WORK_DIR, OutputDir, OutputError, check_location

MODEL = str(Path(__file__).parent / "commands" / "tiny_model.py")
TRAIN = ["--target-linear", "0.67", "--samples", "1", "--teacher-steps", "2", "--quiet"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _user_dir(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.md").write_text("my own report\n")  # names lincompress would write
    (path / "metrics.jsonl").write_text('{"mine": 1}\n')
    (path / "notes").mkdir(exist_ok=True)
    (path / "notes" / "todo.txt").write_text("buy milk\n")
    return _files(path)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A trained artifact made by the CLI (report files included)."""
    out = tmp_path_factory.mktemp("art") / "art"
    result = _cli("optimize", MODEL, *TRAIN, "--steps", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("flags", [(), ("--overwrite",), ("--resume",), ("--resume-or-start",)])
def test_a_directory_of_user_files_is_refused_before_the_model_is_built(tmp_path, monkeypatch, flags):
    before = _user_dir(tmp_path / "mine")
    built = []
    monkeypatch.setattr(target_module, "load_target", lambda *a, **k: built.append(1))
    result = _cli("optimize", MODEL, *TRAIN, "--steps", "5", "--out", str(tmp_path / "mine"), *flags)
    assert result.exit_code == 2 and not built  # nothing was built, let alone trained
    assert "holds files lincompress did not write (metrics.jsonl, notes/todo.txt, report.md)" in result.output
    assert "choose an empty or new --out" in result.output and "Traceback" not in result.output
    assert _files(tmp_path / "mine") == before  # byte-identical, nothing added


def test_overwrite_replaces_only_what_lincompress_wrote(artifact, tmp_path):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    (out / "notes.txt").write_text("keep me\n")  # the user's file in an artifact directory
    (out / "eval.json").write_text("{}")  # a stale file of ours? no: the user wrote this one
    record = OutputDir(out).record
    assert {"lincompress.json", "weights.safetensors", "report.md", "metrics.jsonl"} <= set(record)
    refused = _cli("optimize", MODEL, "--steps", "0", "--out", str(out), "--quiet")
    assert refused.exit_code == 2 and "already holds an artifact; pass --overwrite or choose another --out" in refused.output
    result = _cli("optimize", MODEL, "--target-linear", "0.34", "--steps", "0", "--out", str(out), "--overwrite",
                  "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "keep me\n" and (out / "eval.json").read_text() == "{}"
    assert json.loads((out / "lincompress.json").read_text())["num_linear"] == 1
    # the replaced artifact's report described another model: being ours, it went; the user's files stayed
    assert not (out / "report.md").exists() and not (out / "recovery_loss.png").exists()
    assert set(OutputDir(out).record) == {"lincompress.json", "weights.safetensors"}


@pytest.mark.parametrize("flag", ["--resume-or-start", "--resume"])
def test_resuming_a_finished_run_says_it_is_done_and_trains_nothing(artifact, tmp_path, monkeypatch, flag):
    """The work dir went with success: the artifact of the same command is the run, finished; nothing is replaced."""
    import shutil

    from lincompress.recovery.trainer import Trainer

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    before = _files(out)
    monkeypatch.setattr(Trainer, "run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    result = _cli("optimize", MODEL, *TRAIN, "--steps", "2", "--out", str(out), flag)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"nothing to resume: {out} already holds the finished artifact of this "
                                          "command (--overwrite trains it again)"]
    assert _files(out) == before and not (out / WORK_DIR).exists()


def test_resuming_into_another_runs_finished_artifact_is_refused_naming_overwrite(artifact, tmp_path):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    before = _files(out)
    for changed, difference in ((["--steps", "3"], "--steps 2 there, --steps 3 here"),
                                (["--steps", "2", "--select", "first"],
                                 "passes hybridize -> selective-transfer -> recover -> fix there, "
                                 "hybridize -> select -> recover -> fix here")):
        result = _cli("optimize", MODEL, *TRAIN, *changed, "--out", str(out), "--resume-or-start")
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [f"error: nothing to resume: {out} holds the finished artifact of another "
                                              f"run ({difference}); pass --overwrite to replace it, or choose another --out"]
    assert _files(out) == before


def test_compress_resuming_a_finished_run_returns_its_state_from_the_artifact(artifact, tmp_path):
    import shutil

    import torch

    artifact = Path(shutil.copytree(artifact, tmp_path / "art"))
    target = lincompress.load_target(MODEL)
    state = lincompress.compress(target, out_dir=artifact, resume="auto", target_linear=0.67, samples=1,
                                 teacher_steps=2, steps=2, progress=False)
    manifest = json.loads((artifact / "lincompress.json").read_text())
    assert state.history == [] and state.fixed and state.selection == manifest["selection"]
    assert state.metrics == manifest["metrics"] and state.outputs["report"] == artifact / "report.md"
    assert state.model is not target.model and not list(target.model.state_dict().keys() - state.model.state_dict())
    inputs = target.inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(state.model(**inputs), lincompress.load(artifact, MODEL)(**inputs))
    with pytest.raises(OutputError, match=r"\(target_linear=0.67 there, target_linear=0.34 here\); pass overwrite=True"):
        lincompress.compress(target, out_dir=artifact, resume=True, target_linear=0.34, samples=1, teacher_steps=2,
                             steps=2, progress=False)


def test_a_file_of_ours_the_user_edited_is_theirs_now(artifact, tmp_path):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    (out / "report.md").write_text("my notes on this run\n")
    result = _cli("optimize", MODEL, *TRAIN, "--steps", "2", "--out", str(out), "--overwrite")
    assert result.exit_code == 2
    assert "report.md was not written by lincompress (or was changed since) and would be overwritten" in result.output
    assert (out / "report.md").read_text() == "my notes on this run\n"


def test_eval_out_refuses_user_files_and_replaces_its_own(artifact, tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "eval.json").write_text('{"my": "numbers"}')
    base = ("eval", MODEL, "--artifact", str(artifact), "--samples", "1", "--steps", "2", "--no-pictures")
    refused = _cli(*base, "--out", str(mine))
    assert refused.exit_code == 2 and "holds files lincompress did not write (eval.json)" in refused.output
    assert (mine / "eval.json").read_text() == '{"my": "numbers"}'
    fresh = tmp_path / "fresh"
    for _ in range(2):  # the second run replaces the first run's results
        result = _cli(*base, "--out", str(fresh))
        assert result.exit_code == 0, result.output
    assert OutputDir(fresh).is_ours("eval.json") and OutputDir(fresh).is_ours("eval.md")
    under = _cli(*base, "--out", str(mine / "eval.json" / "sub"))
    assert under.exit_code == 2 and "lies under" in under.output and "which is a file; choose another --out" in under.output


def test_export_never_overwrites_a_file_it_did_not_write(artifact, tmp_path):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    (out / "model.onnx").write_bytes(b"my own onnx")
    refused = _cli("export", str(out), "--format", "onnx")
    assert refused.exit_code == 2 and "model.onnx was not written by lincompress" in refused.output
    assert (out / "model.onnx").read_bytes() == b"my own onnx"
    # what an export writes is recorded as ours (tests/test_artifacts.py runs a real one), so the next replaces it
    outputs = OutputDir(out, None)
    (out / "model.onnx").unlink()
    with outputs.recording():
        (out / "model.onnx").write_bytes(b"exported")
    assert outputs.is_ours("model.onnx")
    outputs.check(["model.onnx", "model.onnx.json"], replace=True)


def test_bench_json_replaces_only_a_bench_report(tmp_path):
    mine = tmp_path / "results.json"
    mine.write_text('{"my": "data"}')
    result = _cli("bench", MODEL, "--json", str(mine), "--reps", "1", "--warmup", "0", "--steps", "0", "--targets", "1")
    assert result.exit_code == 2 and "results.json exists and is not a lincompress bench report; choose another --json" \
        in " ".join(result.output.split())
    assert mine.read_text() == '{"my": "data"}'
    under = _cli("bench", MODEL, "--json", str(mine / "x.json"), "--reps", "1")
    assert under.exit_code == 2 and "lies under" in under.output


def test_paths_under_a_file_are_one_line_errors_in_the_library(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="lies under .*file, which is a file; choose another out_dir"):
        lincompress.compress(lincompress.load_target(MODEL), steps=0, out_dir=tmp_path / "file" / "art")
    with pytest.raises(OutputError, match="is a file, not a directory; choose another out_dir"):
        lincompress.compress(lincompress.load_target(MODEL), steps=0, out_dir=tmp_path / "file")
    with pytest.raises(OutputError, match="choose another cache_dir"):
        lincompress.compress(lincompress.load_target(MODEL), steps=1, out_dir=tmp_path / "a", cache_dir=str(tmp_path / "file"))
    with pytest.raises(OutputError, match="choose another path"):
        check_location(tmp_path / "file" / "x", None)


def test_an_interrupted_run_and_an_older_artifact_count_as_ours(tmp_path):
    interrupted = tmp_path / "interrupted"
    (interrupted / WORK_DIR / "checkpoints").mkdir(parents=True)
    OutputDir(interrupted).check(["lincompress.json"], replace=False)  # only our work dir: fine
    older = tmp_path / "older"
    older.mkdir()
    for name in ("lincompress.json", "weights.safetensors", "report.md"):
        (older / name).write_text("{}")
    (older / "notes.txt").write_text("mine")
    outputs = OutputDir(older)
    assert outputs.is_ours("report.md") and not outputs.is_ours("notes.txt") and not (older / RECORD).exists()
    with pytest.raises(LinCompressError, match="already holds an artifact"):
        outputs.check(["lincompress.json"], replace=False, what="an artifact", replace_arg=None)
    outputs.check(["lincompress.json"], replace=True)
