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
