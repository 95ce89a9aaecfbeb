"""The kernels compile for an H100/H200 (sm_90) without a GPU, with every feature-map and backward variant.

The interpreter tests check the maths but never run Triton's compiler, so code it accepts
could still fail to compile on the GPU. ``tune_linear_attention.static_usage`` compiles
through Triton's own pipeline and ptxas (shipped in the triton wheel) for sm_90.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles, so not under the interpreter")
@pytest.mark.skipif(not CUOBJDUMP.is_file(), reason="this triton build ships no CUDA tools (ptxas/cuobjdump)")
def test_every_kernel_variant_compiles_for_sm90():
    tuner = runpy.run_path(str(Path(__file__).resolve().parents[2] / "benchmarks" / "tune_linear_attention.py"),
                           run_name="tuner_under_test")  # fmt: skip
    keys = [tuner["Key"](fm, 16, 2, 40, "bnhd") for fm in ("relu", "hedgehog")]
    rows = tuner["static_usage"](keys, smoke=True)
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r][:3]
    compiled = {(r["key"].split(":")[0], r["kernel"], r["configs"].get("bwd_query", {}).get("split", 0)) for r in rows}
    for fm in ("relu", "hedgehog"):
        for kernel in ("_state_kernel", "_output_kernel", "_bwd_query_kernel", "_bwd_key_kernel"):
            assert (fm, kernel, 0) in compiled
        assert (fm, "_bwd_query_kernel", 1) in compiled and (fm, "_state_kernel", 1) in compiled  # split variant
    assert all(r["shared_bytes"] <= 232448 for r in rows)  # fits an sm_90 block's shared memory
