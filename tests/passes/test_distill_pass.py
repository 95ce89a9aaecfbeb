"""passes.Distill: its place in a pipeline, joint training, and the recorded sampler through optimize, resume, eval, bench, export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lincompress import Pipeline, passes
from lincompress.artifacts import read_artifact
from lincompress.cli import main
from lincompress.pipeline import PipelineError
from lincompress.recovery.sampling import few_step_grid
from lincompress.sampler import read_sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recovery"))
from tiny_targets import recovery_target  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_wan" / "model.py"
FAST = dict(samples=1, teacher_steps=2, batch_size=1, fake_updates=1, progress=False, compare_without_recovery=False)


def test_distill_runs_before_fix_and_after_a_selection(tmp_path):
    with pytest.raises(PipelineError, match=r"distill \(pass 5 of 5\) must run before passes.Fix\(\)"):
        Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix(),
                  passes.Distill(student_steps=2, distill_steps=1, **FAST)]).run(recovery_target(depth=2))
    with pytest.raises(PipelineError, match="distill .* needs a selection of linear sites or a learned-selection setup"):
        Pipeline([passes.FindAttention(), passes.Hybridize(), passes.Distill(distill_steps=1, **FAST)]).run(
            recovery_target(depth=2))


def test_one_stage_joint_distillation_learns_the_selection(tmp_path):
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.SelectiveTransfer(0.5),
                      passes.Distill(student_steps=2, distill_steps=3, work_dir=tmp_path, **FAST), passes.Fix()]
                     ).run(recovery_target(depth=4))
    assert len(state.selection) == 2 and state.selective is None and "distilled" in state.facts
    step = next(s for s in state.recipe if s.name == "distill")
    assert step.metadata["selection"] == state.selection
    assert step.metadata["sampler"]["sigmas"] == pytest.approx(few_step_grid(2.0, 2).tolist())  # the target's shift 2
    assert state.metrics["distillation"]["steps"] == 3 and state.metrics["distillation"]["objective"] == "dmd2"
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "report.md").is_file()


def test_zero_distill_steps_records_the_sampler_without_training():
    target = recovery_target(depth=2)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    state = Pipeline([passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.0),
                      passes.Distill(student_steps=3, distill_steps=0), passes.Fix()]).run(target)
    assert state.selection == [] and "distill_dir" not in state.outputs and not state.modified_parameters
    assert state.recipe[-2].metadata["sampler"]["steps"] == 3
    assert all(torch.equal(state.model.state_dict()[k], v) for k, v in before.items())  # the untrained teacher, 3 steps
    with pytest.raises(PipelineError, match="needs a selection of linear sites"):  # a joint run must train
        Pipeline([passes.FindAttention(), passes.Hybridize(), passes.SelectiveTransfer(0.5),
                  passes.Distill(distill_steps=0)]).run(recovery_target(depth=2))


# --------------------------------------------------------------------------- the command line


def _optimize(out: Path, *extra: str):
    args = ["optimize", str(TINY), "--target-linear", "0.5", "--out", str(out), "--student-steps", "2", "--steps", "2",
            "--samples", "1", "--teacher-steps", "2", "--fake-updates", "1", "--device", "cpu", "--quiet", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("distill") / "art"
        result = _optimize(out, "--keep-work")  # the resume test continues from its checkpoints
    finally:
        torch.set_num_threads(threads)
    return out, result.output


def test_optimize_writes_a_two_stage_artifact_with_its_sampler(distilled):
    out, output = distilled
    assert "few-step student after 2 dmd2 steps: samples in 2 steps" in " ".join(output.split())
    manifest = json.loads((out / "lincompress.json").read_text())
    assert [s["pass"] for s in manifest["recipe"]] == ["hybridize", "selective-transfer", "recover", "distill", "fix"]
    distill = manifest["recipe"][3]
    assert distill["config"]["distill_steps"] == 2  # default: as many as --steps
    assert manifest["sampler"] == distill["metadata"]["sampler"]
    sampler = read_sampler(out)
    assert sampler.steps == 2 and sampler.sigmas == pytest.approx((1.0, 0.75, 0.0))  # tiny_wan's shift 3
    assert read_artifact(out).sampler == sampler
    assert (out / "distill" / "report.md").is_file() and (out / "report.md").is_file()
    assert set(manifest["modified_parameters"])  # the distilled base weights travel with the artifact


def test_resume_continues_the_stage_it_was_in(distilled, tmp_path):
    out, _ = distilled
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(out, copy)
    weights = (copy / "weights.safetensors").read_bytes()
    # both stages finished: neither is trained again, the same artifact comes out
    _optimize(copy, "--resume", "--keep-work")
    assert (copy / "weights.safetensors").read_bytes() == weights
    # the distillation stage stopped half-way (its checkpoint at step 1): only it continues
    work = copy / ".lincompress-work" / "distill" / "checkpoints"
    assert json.loads((work / "latest.json").read_text())["step"] == 2
    shutil.rmtree(copy / ".lincompress-work" / "distill")
    _optimize(copy, "--resume", "--keep-work", "--checkpoint-every", "1", "--distill-steps", "1")
    recovery_ckpt = copy / ".lincompress-work" / "checkpoints" / "latest.json"
    assert json.loads(recovery_ckpt.read_text())["step"] == 2  # the finished recovery stage was not re-run
    manifest = json.loads((copy / "lincompress.json").read_text())
    assert manifest["metrics"]["recovery"]["resumed_from"] == 2
    assert manifest["metrics"]["distillation"]["resumed_from"] is None and manifest["metrics"]["distillation"]["steps"] == 1
    _optimize(copy, "--resume", "--distill-steps", "2")  # continue it to 2 steps: as the uninterrupted run
    assert not (copy / ".lincompress-work").exists()  # done: the work directory goes (no --keep-work)
    manifest = json.loads((copy / "lincompress.json").read_text())
    assert manifest["metrics"]["distillation"]["resumed_from"] == 1
    assert (copy / "weights.safetensors").read_bytes() == weights  # bit-exact


def test_eval_samples_the_student_with_its_recorded_sampler(distilled, tmp_path, monkeypatch):
    import lincompress.evaluation.runner as runner

    grids = []
    original = runner.euler_sample

    def spy(velocity, noise, sigmas, **kwargs):
        grids.append([round(float(s), 6) for s in sigmas])
        return original(velocity, noise, sigmas, **kwargs)

    monkeypatch.setattr(runner, "euler_sample", spy)
    out, _ = distilled
    result = CliRunner().invoke(main, ["eval", str(TINY), "--artifact", str(out), "--samples", "1", "--steps", "4",
                                       "--out", str(tmp_path), "--device", "cpu", "--no-pictures"])
    assert result.exit_code == 0, result.output
    assert "compressed 2-step recorded sampler" in " ".join(result.output.split())
    assert len(grids[0]) == 5 and grids[1] == [1.0, 0.75, 0.0]  # teacher at its 4 steps, the student at its own 2
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["settings"]["student_sampler"] == {"steps": 2, "sigmas": [1.0, 0.75, 0.0], "recorded": True}
    assert "recorded 2-step sampler" in (tmp_path / "eval.md").read_text()


def test_bench_times_the_artifact_with_its_sampler(distilled):
    from lincompress.benchmarking import bench

    out, _ = distilled
    report = bench(TINY, artifact=out, steps=3, reps=1, warmup=0, sampling_reps=1, device="cpu")
    original, student = report["rows"]
    assert original["sampling_steps"] == 3 and student["sampling_steps"] == 2
    assert "2-step sampler" in student["variant"] and student["sampler"].startswith("recorded few-step sampler")


def test_exports_record_the_sampler(distilled, tmp_path):
    pytest.importorskip("onnxruntime")
    from lincompress.exporters._common import ExportSource
    from lincompress.exporters.onnx import export_onnx

    out, _ = distilled
    info = export_onnx(ExportSource.from_artifact(out), tmp_path / "model.onnx", dynamic=False)
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert info["sampler"]["steps"] == 2 and sidecar["sampler"] == json.loads((out / "lincompress.json").read_text())["sampler"]


@pytest.mark.parametrize(("args", "message"), [
    (["--student-steps", "0"], "--student-steps 0 must be >= 1"),
    (["--fake-updates", "3"], "--fake-updates 3 configures the few-step distillation stage; give --student-steps to run it"),
    (["--student-steps", "4", "--steps", "0"],
     "--student-steps 4 trains a distillation stage for --steps steps; give --steps > 0, or --distill-steps"),
    (["--student-steps", "2", "--distill-grad-steps", "3"], "--distill-grad-steps 3 must be <= --student-steps 2"),
    (["--student-steps", "two"], "Invalid value for '--student-steps'"),
    (["--student-steps", "2", "--distill-objective", "gan"], "Invalid value for '--distill-objective'"),
    (["--student-steps", "2", "--nproc", "2"],  # refused before any worker starts
     "the distillation stage (--student-steps) trains on one process only (it is not data-parallel: DMD2's fake-score "
     "network and its optimizer would train apart on every process), and --nproc 2 asks for several; run distillation on one process: leave out --nproc"),
])
def test_bad_distillation_flags_are_one_line_errors(args, message):
    result = CliRunner().invoke(main, ["optimize", "M", "--out", "o", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_distillation_on_several_processes_is_refused_before_any_work(monkeypatch, tmp_path):
    import lincompress
    from lincompress.config import ArgumentError
    from lincompress.distill_config import DistillConfig
    from lincompress.distributed import context

    with pytest.raises(ArgumentError, match=r"^the distillation stage \(student_steps\) trains on one process only .*"
                                            r"nproc=2 asks for several; run distillation on one process: leave out nproc$"):
        lincompress.compress(tmp_path / "missing.py", student_steps=2, nproc=2, steps=1)  # before the model loads
    assert DistillConfig(nproc=2, distill_steps=0).nproc == 2  # recording the sampler trains nothing: allowed
    ran = []

    class Spy:
        name = "spy"

        def run(self, state):
            ran.append(self.name)
            return state

    pipeline = Pipeline([Spy(), passes.FindAttention(), passes.Hybridize(), passes.HeuristicSelect(0.5),
                         passes.Distill(student_steps=2, distill_steps=1, **FAST), passes.Fix()])
    monkeypatch.setattr(context, "world_size", lambda: 2)  # one of 2 processes of a process group
    with pytest.raises(ArgumentError, match=r"this process is one of 2 of a process group .*; run distillation in a "
                                            r"single process$"):
        pipeline.run(recovery_target(depth=2))
    assert ran == []  # the preflight refused it before the first pass ran
