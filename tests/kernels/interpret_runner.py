"""Runs the Triton linear-attention kernels under ``TRITON_INTERPRET=1`` (CPU) and reports errors.

Started as a subprocess by ``test_linear_attention_triton.py`` so that the interpreter
flag, which Triton reads when kernels are defined, never leaks into the rest of the
test session. Reads a JSON list of cases on stdin and prints one JSON object mapping
case id to relative errors (vs a float64 reference) of out, dq, dk, dv.
"""

from __future__ import annotations

import json
import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("interpret_runner.py must run with TRITON_INTERPRET=1")

import torch  # noqa: E402

from lincompress.kernels.linear_attention_triton import (  # noqa: E402
    KernelConfig,
    linear_attention_backward_triton,
    linear_attention_forward_triton,
)
from lincompress.ops.linear_attention import (  # noqa: E402
    linear_attention_backward_reference,
    linear_attention_reference,
)

from lincompress.kernels.linear_attention_triton import KERNELS  # noqa: E402

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _tensor(batch: int, heads: int, tokens: int, dim: int, case: dict, gen: torch.Generator) -> torch.Tensor:
    """Random input in the case's layout; ``strided`` makes it a transposed (non-contiguous) view."""
    if case["strided"]:  # stored in the other layout, viewed in this one: strides, not copies
        other = (batch, tokens, heads, dim) if case["layout"] == "bhnd" else (batch, heads, tokens, dim)
        return torch.randn(other, generator=gen).to(_DTYPES[case["dtype"]]).transpose(1, 2)
    shape = (batch, heads, tokens, dim) if case["layout"] == "bhnd" else (batch, tokens, heads, dim)
    return torch.randn(shape, generator=gen).to(_DTYPES[case["dtype"]])


def _inputs(case: dict) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(case["seed"])
    b, h = case["batch"], case["heads"]
    q = _tensor(b, h, case["n_q"], case["dk"], case, gen)
    k = _tensor(b, h, case["n_kv"], case["dk"], case, gen)
    v = _tensor(b, h, case["n_kv"], case["dv"], case, gen)
    if case["feature_map"] == "identity":  # identity expects features already mapped to >= 0
        q, k = q.abs(), k.abs()
    if case.get("zero_features"):  # relu(negative) == 0: every query and key feature row is zero
        q, k = -q.abs(), -k.abs()
    grad_out = linear_attention_reference(q, k, v, case["feature_map"], case["eps"], case["layout"])
    return q, k, v, torch.randn(grad_out.shape, generator=gen).to(grad_out.dtype)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    diff = (got.double() - want).norm().item()
    return diff / max(want.norm().item(), 1e-30) if want.norm() > 0 else diff


def run_case(case: dict) -> dict[str, float]:
    q, k, v, grad_out = _inputs(case)
    args = (case["feature_map"], case["eps"], case["layout"])
    configs = None
    if case["block_n"]:
        config = KernelConfig(block_n=case["block_n"], block_dv=case["block_dv"], split=case["split"],
                              tc_norm=case["tc_norm"])
        configs = {name: config for name in KERNELS}
    out = linear_attention_forward_triton(q, k, v, *args, configs=configs)
    grads = linear_attention_backward_triton(grad_out, q, k, v, *args, configs=configs)
    q64, k64, v64, g64 = (t.double() for t in (q, k, v, grad_out))
    want_out = linear_attention_reference(q64, k64, v64, *args)
    want_grads = linear_attention_backward_reference(g64, q64, k64, v64, *args)
    errors = {"out": _rel_err(out, want_out)}
    errors.update({name: _rel_err(g, w) for name, g, w in zip(("dq", "dk", "dv"), grads, want_grads)})
    errors["contiguous_grads"] = float(all(g.is_contiguous() for g in grads))
    return errors


def main() -> None:
    cases = json.load(sys.stdin)
    json.dump({case["id"]: run_case(case) for case in cases}, sys.stdout)


if __name__ == "__main__":
    main()
