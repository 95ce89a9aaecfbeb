"""Tests of the fused Triton linear-attention kernels.

CPU: the kernels run under ``TRITON_INTERPRET=1`` in one subprocess (the flag must be
set before kernels are defined and must not leak into other tests), at tiny sizes with
odd token counts and head dims, both layouts, every feature map, fp32 and fp16.
bf16 is checked on GPU only: Triton's interpreter computes bf16 ``tl.dot`` wrongly
(garbage even for a single 16x16 product), which says nothing about the kernels.
GPU (``-m gpu``): real sizes, bf16, poisoned outputs, and dispatch of the registered
op through autograd and ``torch.compile``.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

RUNNER = Path(__file__).with_name("interpret_runner.py")
TOLERANCE = {"float32": 1e-5, "float16": 5e-3}


def _case(case_id: str, **overrides) -> dict:
    base = dict(
        layout="bhnd", feature_map="elu1", dtype="float32", batch=2, heads=2, n_q=37, n_kv=37, dk=24, dv=40,
        eps=1e-6, strided=False, block_n=16, seed=0,
    )  # fmt: skip
    return {**base, **overrides, "id": case_id}


def _interpret_cases() -> list[dict]:
    grid = itertools.product(("bhnd", "bnhd"), ("identity", "relu", "elu1"), ("float32", "float16"))
    cases = [
        _case(f"{layout}-{fm}-{dtype}", layout=layout, feature_map=fm, dtype=dtype, seed=i)
        for i, (layout, fm, dtype) in enumerate(grid)
    ]
    cases += [
        _case("nq_ne_nkv-dv16", n_q=21, n_kv=45, dk=40, dv=16, layout="bnhd"),
        _case("strided-views", strided=True, feature_map="relu"),
        _case("strided-views-bnhd", strided=True, layout="bnhd"),
        _case("default-configs-one-split", block_n=0, n_q=19, n_kv=70),
        _case("value-dim-blocks", dk=200, dv=136, n_q=17, n_kv=23, batch=1),
        _case("zero-feature-rows", feature_map="relu", zero_features=True),
        _case("single-query-token", n_q=1, n_kv=3, dk=16, dv=16, batch=1, heads=1),
    ]
    return cases


CASES = _interpret_cases()


def _subprocess_env() -> dict[str, str]:
    """This process's environment with its import path, so children import the same lincompress."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.fixture(scope="module")
def interpreted_errors() -> dict[str, dict[str, float]]:
    """Runs every case once in a TRITON_INTERPRET=1 subprocess (one interpreter start-up)."""
    env = {**_subprocess_env(), "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(CASES), capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_interpreted_matches_reference(case: dict, interpreted_errors: dict[str, dict[str, float]]) -> None:
    errors = interpreted_errors[case["id"]]
    tol = TOLERANCE[case["dtype"]]
    assert errors.pop("contiguous_grads") == 1.0
    if case.get("zero_features"):  # all outputs and gradients are exactly zero; anything else is a bug
        assert errors == {"out": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0}
    for name, err in errors.items():
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def test_import_without_triton_keeps_reference() -> None:
    """With triton unimportable the package still imports and registers nothing for CUDA."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, lincompress.kernels as k\n"
        "assert not k.HAS_TRITON\n"
        "q = torch.rand(1, 2, 5, 8)\n"
        "out = torch.ops.lincompress.linear_attention(q, q, q, 'relu', 1e-6, 'bhnd')\n"
        "assert out.shape == (1, 2, 5, 8)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr[-4000:]


# --------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpu_inputs(layout: str, b: int, h: int, n: int, dk: int, dv: int, dtype: torch.dtype, n_q: int | None = None):
    def rand(tokens: int, dim: int) -> torch.Tensor:
        shape = (b, h, tokens, dim) if layout == "bhnd" else (b, tokens, h, dim)
        return torch.randn(shape, device="cuda", dtype=dtype)

    return rand(n if n_q is None else n_q, dk), rand(n, dk), rand(n, dv)


def _poison_allocator() -> None:
    """Fill the caching allocator's free blocks with NaN so that unwritten outputs show up."""
    torch.cuda.empty_cache()
    block = torch.full((64 * 2**20,), float("nan"), device="cuda")
    del block


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    assert torch.isfinite(got).all()
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("feature_map", ["relu", "elu1"])
@pytest.mark.parametrize(
    "dtype,dk,dv,n,n_q",
    [
        (torch.bfloat16, 128, 128, 4099, None),
        (torch.bfloat16, 64, 64, 2048, 1000),
        (torch.float16, 128, 128, 777, None),
        (torch.float32, 40, 72, 1500, None),
        (torch.bfloat16, 256, 256, 515, None),
        (torch.bfloat16, 96, 192, 300, None),
    ],
)
def test_gpu_matches_reference(layout, feature_map, dtype, dk, dv, n, n_q) -> None:
    from lincompress.kernels.linear_attention_triton import (
        linear_attention_backward_triton,
        linear_attention_forward_triton,
    )
    from lincompress.ops.linear_attention import linear_attention_backward_reference, linear_attention_reference

    torch.manual_seed(dk + dv + n)
    q, k, v = _gpu_inputs(layout, 2, 3, n, dk, dv, dtype, n_q)
    grad_out = torch.randn_like(linear_attention_reference(q, k, v, feature_map, 1e-6, layout))
    _poison_allocator()
    out = linear_attention_forward_triton(q, k, v, feature_map, 1e-6, layout)
    grads = linear_attention_backward_triton(grad_out, q, k, v, feature_map, 1e-6, layout)
    args = (feature_map, 1e-6, layout)
    wide = [t.double() for t in (grad_out, q, k, v)]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert _rel(out, linear_attention_reference(*wide[1:], *args)) <= tol
    for got, want in zip(grads, linear_attention_backward_reference(*wide, *args)):
        assert _rel(got, want) <= tol


@pytest.mark.gpu
@gpu
def test_gpu_op_dispatches_to_triton_in_autograd_and_compile(monkeypatch) -> None:
    import lincompress.kernels as kernels
    from lincompress.ops.linear_attention import linear_attention_backward_reference, linear_attention_reference

    calls = {"fwd": 0, "bwd": 0}
    impl = kernels._triton_impl

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(impl, "linear_attention_forward_triton", counted("fwd", impl.linear_attention_forward_triton))
    monkeypatch.setattr(impl, "linear_attention_backward_triton", counted("bwd", impl.linear_attention_backward_triton))

    def attention(q, k, v):
        return torch.ops.lincompress.linear_attention(q, k, v, "elu1", 1e-6, "bnhd")

    q, k, v = (t.requires_grad_() for t in _gpu_inputs("bnhd", 1, 4, 1031, 64, 64, torch.bfloat16))
    wide = [t.detach().double() for t in (q, k, v)]
    for fn in (attention, torch.compile(attention, fullgraph=True)):
        out = fn(q, k, v)
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        assert _rel(out, linear_attention_reference(*wide, "elu1", 1e-6, "bnhd")) <= 1e-2
        want = linear_attention_backward_reference(grad_out.double(), *wide, "elu1", 1e-6, "bnhd")
        assert all(_rel(g, w) <= 1e-2 for g, w in zip(grads, want))
    assert calls == {"fwd": 2, "bwd": 2}
