"""benchmarks/tensorrt_rtx.py: which GPUs TensorRT-RTX serves, and a recorded skip (never a fake engine) elsewhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import tensorrt_rtx  # noqa: E402


@pytest.mark.parametrize("capability, served", [((8, 6), True), ((8, 9), True), ((12, 0), True), ((12, 1), True),
                                                ((9, 0), False), ((8, 0), False), ((7, 5), False)])
def test_capabilities_match_the_eps_own_list(capability, served):
    assert tensorrt_rtx.capability_supported(*capability) is served


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_a_gpu_the_run_is_recorded_as_skipped(tmp_path):
    out = tmp_path / "rtx.json"
    results = tensorrt_rtx.main(["--json", str(out)])
    assert results["skipped"] == "no CUDA GPU here"
    saved = json.loads(out.read_text())
    assert saved["skipped"] == "no CUDA GPU here" and "correctness" not in saved
