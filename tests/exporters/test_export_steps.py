"""Every exporter pipeline step declares that it needs a fixed model, so Pipeline rejects a bad order up front."""

from __future__ import annotations

import pytest
from zoo import ZOO

from lincompress import Pipeline, exporters, passes
from lincompress.pipeline import PipelineError

STEPS = {
    "onnx": lambda tmp: exporters.ONNX(tmp / "model.onnx"),
    "aoti": lambda tmp: exporters.AOTInductor(tmp / "model.pt2"),
    "tensorrt": lambda tmp: exporters.TensorRT(tmp / "trt"),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_exporter_step_requires_a_fixed_model(name, tmp_path):
    step = STEPS[name](tmp_path)
    assert step.name == name and step.requires == ("fixed",)
    spy_ran = []

    class Spy:  # runs first: the order check must fail before it
        name = "spy"

        def run(self, state):
            spy_ran.append(True)
            return state

    with pytest.raises(PipelineError, match=rf"^{name} \(pass 4 of 4\) needs a fixed model; put passes.Fix\(\) before it"):
        Pipeline([Spy(), passes.FindAttention(), passes.Hybridize(), step]).run(ZOO["handwritten"].build())
    assert not spy_ran and not list(tmp_path.iterdir())
    target = ZOO["handwritten"].build()  # with Fix before it the order is fine (checked only, nothing exported)
    state = Pipeline([passes.FindAttention()]).run(target)
    Pipeline([passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix(), step]).check(state)


FIRST_FILE = {"onnx": "model.onnx", "aoti": "model.pt2.json", "tensorrt": "trt/model.onnx"}


@pytest.mark.parametrize("name", list(STEPS))
def test_exporter_step_never_replaces_a_user_file_and_refuses_before_any_work(name, tmp_path):
    from lincompress.outputs import OutputError

    user_file = tmp_path / FIRST_FILE[name]
    user_file.parent.mkdir(parents=True, exist_ok=True)
    user_file.write_bytes(b"the user's own file")
    target = ZOO["handwritten"].build()
    state = Pipeline([passes.FindAttention()]).run(target)
    for overwrite in (False, True):  # not even with overwrite=True: it is not ours
        step = STEPS[name](tmp_path)
        step.overwrite = overwrite
        with pytest.raises(OutputError, match=r"was not written by lincompress .* would be overwritten; move it away"):
            Pipeline([passes.Hybridize(), passes.HeuristicSelect(0.5), passes.Fix(), step]).check(state)
    assert user_file.read_bytes() == b"the user's own file"


def test_onnx_step_records_its_files_and_replaces_them_only_with_overwrite(tmp_path, fixed_state):
    from lincompress.outputs import RECORD, OutputDir, OutputError

    path = tmp_path / "model.onnx"
    neighbour = tmp_path / "notes.txt"  # a user's file beside the export: allowed, never touched
    neighbour.write_text("mine")
    fixed_state("handwritten", "relu", extra_steps=(exporters.ONNX(path),))
    record = OutputDir(tmp_path)
    assert record.is_ours("model.onnx") and record.is_ours("model.onnx.json") and not record.is_ours("notes.txt")
    assert (tmp_path / RECORD).is_file()
    with pytest.raises(OutputError, match=r"model.onnx, .*model.onnx.json exist; pass overwrite=True or choose another path$"):
        exporters.ONNX(path).check(None)
    exporters.ONNX(path, overwrite=True).check(None)  # ours: may be replaced
    path.write_bytes(b"changed by the user")  # changed since we wrote it: the user's now
    with pytest.raises(OutputError, match=r"was not written by lincompress \(or was changed since\)"):
        exporters.ONNX(path, overwrite=True).check(None)
    assert neighbour.read_text() == "mine"
