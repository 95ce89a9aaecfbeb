"""Tests of the fused Triton linear-attention kernels.

CPU: the kernels run under ``TRITON_INTERPRET=1`` in one subprocess (the flag must be
set before kernels are defined and must not leak into other tests), at tiny sizes with
odd token counts (1, 37, 129) and head dims (3, 17), both layouts, every feature map of
the op spec (Hedgehog included), both query-side backward variants (fused and split),
both normalisations of Hedgehog's output pass (``tc_norm``),
fp32 and fp16. bf16 is checked on GPU only: Triton's interpreter computes bf16
``tl.dot`` wrongly (garbage even for a single 16x16 product), which says nothing about
the kernels. GPU (``-m gpu``): real sizes, bf16, poisoned outputs, and dispatch of the
registered op through autograd and ``torch.compile``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from lincompress.ops import spec  # noqa: E402

RUNNER = Path(__file__).with_name("interpret_runner.py")
TOLERANCE = {"float32": 1e-5, "float16": 5e-3}
FUSED_MAPS = tuple(name for name, s in spec.FEATURE_MAPS.items() if s.kernel_id is not None)


def _case(case_id: str, **overrides) -> dict:
    base = dict(
        layout="bhnd", feature_map="elu1", dtype="float32", batch=2, heads=2, n_q=37, n_kv=37, dk=24, dv=40,
        eps=1e-6, strided=False, block_n=16, block_dv=0, split=0, tc_norm=0, seed=0,
    )  # fmt: skip
    return {**base, **overrides, "id": case_id}


def _interpret_cases() -> list[dict]:
    cases = []
    for i, fm in enumerate(FUSED_MAPS):  # every map: N 1/37/129 and D 3/17 across its cases, both layouts
        cases += [
            _case(f"{fm}-bhnd-n37x129-d17", feature_map=fm, n_q=37, n_kv=129, dk=17, dv=24, seed=3 * i),
            _case(f"{fm}-bnhd-n129x37-d3-split", feature_map=fm, layout="bnhd", n_q=129, n_kv=37, dk=3, dv=17,
                  split=1, batch=1, seed=3 * i + 1),
            _case(f"{fm}-bnhd-fp16-n1x37-d17", feature_map=fm, layout="bnhd", dtype="float16", n_q=1, n_kv=37,
                  dk=17, dv=16, split=i % 2, seed=3 * i + 2),
        ]  # fmt: skip
    cases += [
        _case("hedgehog-single-query-token", feature_map="hedgehog", n_q=1, n_kv=3, dk=3, dv=3, batch=1, heads=1),
        _case("strided-views", strided=True, feature_map="relu"),
        _case("strided-views-bnhd-hedgehog", strided=True, layout="bnhd", feature_map="hedgehog", split=1),
        _case("default-configs-one-split", block_n=0, n_q=19, n_kv=70),
        _case("default-configs-hedgehog", block_n=0, n_q=19, n_kv=70, feature_map="hedgehog", layout="bnhd"),
        _case("value-dim-blocks", dk=200, dv=136, n_q=17, n_kv=23, batch=1),
        _case("value-dim-blocks-hedgehog", feature_map="hedgehog", block_dv=16, n_q=21, n_kv=45, heads=1),
        _case("value-dim-blocks-split", feature_map="elu1", block_dv=16, split=1, n_q=21, n_kv=45, heads=1),
        _case("zero-feature-rows", feature_map="relu", zero_features=True),
        # Hedgehog's output pass normalised after the products (tc_norm): odd D (column masks),
        # even D (none), fp16 (z scaled into range), a single query token, value-dim blocks
        _case("hedgehog-tc-norm-n37x129-d17", feature_map="hedgehog", n_q=37, n_kv=129, dk=17, dv=24, tc_norm=1),
        _case("hedgehog-tc-norm-bnhd-fp16-d16", feature_map="hedgehog", layout="bnhd", dtype="float16", n_q=129,
              n_kv=37, dk=16, dv=16, tc_norm=1, batch=1),
        _case("hedgehog-tc-norm-n1-dv-blocks", feature_map="hedgehog", n_q=1, n_kv=45, dk=3, dv=40, block_dv=16,
              tc_norm=1, heads=1),
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
@pytest.mark.parametrize(("feature_map", "split"), [("relu", 0), ("elu1", 1), ("hedgehog", 0), ("hedgehog", 1)])
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
def test_gpu_matches_reference(layout, feature_map, split, dtype, dk, dv, n, n_q) -> None:
    from dataclasses import replace

    from lincompress.kernels.linear_attention_triton import (
        linear_attention_backward_triton,
        linear_attention_forward_triton,
        make_plan,
    )
    from lincompress.ops.linear_attention import linear_attention_backward_reference, linear_attention_reference

    torch.manual_seed(dk + dv + n)
    q, k, v = _gpu_inputs(layout, 2, 3, n, dk, dv, dtype, n_q)
    grad_out = torch.randn_like(linear_attention_reference(q, k, v, feature_map, 1e-6, layout))
    _poison_allocator()
    resolved = make_plan(q, k, v, feature_map, layout).configs["bwd_query"]  # fits this shape; only the variant changes
    configs = {"bwd_query": replace(resolved, split=split)}
    out = linear_attention_forward_triton(q, k, v, feature_map, 1e-6, layout)
    grads = linear_attention_backward_triton(grad_out, q, k, v, feature_map, 1e-6, layout, configs=configs)
    args = (feature_map, 1e-6, layout)
    wide = [t.double() for t in (grad_out, q, k, v)]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert _rel(out, linear_attention_reference(*wide[1:], *args)) <= tol
    for got, want in zip(grads, linear_attention_backward_reference(*wide, *args)):
        assert _rel(got, want) <= tol


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tc_norm", [0, 1])
@pytest.mark.parametrize(
    "dtype,dk,n,config",
    [
        (torch.bfloat16, 128, 4099, dict(block_n=64, num_warps=8, num_stages=1, maxnreg=128)),
        (torch.bfloat16, 96, 1000, dict(block_n=64, num_warps=4, num_stages=2)),  # padded columns
        (torch.float16, 64, 70000, dict(block_n=128, num_warps=8, num_stages=3)),  # z past fp16's range
        (torch.bfloat16, 128, 777, dict(block_n=32, num_warps=8, num_stages=3)),  # MMAv2 tiles
    ],
)
def test_gpu_hedgehog_output_pass_both_normalisations(dtype, dk, n, config, tc_norm) -> None:
    from lincompress.kernels.linear_attention_triton import KernelConfig, linear_attention_forward_triton
    from lincompress.ops.linear_attention import linear_attention_reference

    torch.manual_seed(n + tc_norm)
    q, k, v = _gpu_inputs("bnhd", 1, 2, n, dk, dk, dtype)
    _poison_allocator()
    configs = {"output": KernelConfig(**config, tc_norm=tc_norm)}
    out = linear_attention_forward_triton(q, k, v, "hedgehog", 1e-6, "bnhd", configs=configs)
    want = linear_attention_reference(q.double(), k.double(), v.double(), "hedgehog", 1e-6, "bnhd")
    assert _rel(out, want) <= 1e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("feature_map", ["elu1", "hedgehog"])
def test_gpu_dispatch_eager_keeps_state_graphs_recompute(monkeypatch, feature_map) -> None:
    """Eager ``linear_attention`` hands the forward's state to the backward; the op (compile, torch.ops) recomputes it."""
    import lincompress.kernels as kernels
    from lincompress.ops import linear_attention
    from lincompress.ops.linear_attention import linear_attention_backward_reference, linear_attention_reference

    calls = {"fwd": 0, "bwd_with_state": 0, "bwd_recomputed": 0}
    impl = kernels._triton_impl
    forward, backward = impl.forward, impl.backward

    def counted_forward(*args, **kwargs):
        calls["fwd"] += 1
        return forward(*args, **kwargs)

    def counted_backward(grad_out, q, k, v, state, *rest, **kwargs):
        calls["bwd_with_state" if state is not None else "bwd_recomputed"] += 1
        return backward(grad_out, q, k, v, state, *rest, **kwargs)

    monkeypatch.setattr(impl, "forward", counted_forward)
    monkeypatch.setattr(impl, "backward", counted_backward)

    def wrapper(q, k, v):
        return linear_attention(q, k, v, feature_map, 1e-6, "bnhd")

    def op(q, k, v):
        return torch.ops.lincompress.linear_attention(q, k, v, feature_map, 1e-6, "bnhd")

    q, k, v = (t.requires_grad_() for t in _gpu_inputs("bnhd", 1, 4, 1031, 64, 64, torch.bfloat16))
    wide = [t.detach().double() for t in (q, k, v)]
    for fn in (wrapper, torch.compile(wrapper, fullgraph=True), op):
        out = fn(q, k, v)
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        assert _rel(out, linear_attention_reference(*wide, feature_map, 1e-6, "bnhd")) <= 1e-2
        want = linear_attention_backward_reference(grad_out.double(), *wide, feature_map, 1e-6, "bnhd")
        assert all(_rel(g, w) <= 1e-2 for g, w in zip(grads, want))
    assert calls == {"fwd": 3, "bwd_with_state": 1, "bwd_recomputed": 2}
