"""Fused Triton kernels for ``lincompress::linear_attention`` (forward and backward).

The op is memory-bound: per head it reads q, k, v once and writes o once, while the
state ``S = sum_j f(k_j) v_j^T`` is only ``Dk x Dv``. So every pass streams tokens
and keeps the small state on chip:

forward
  1. ``_state_kernel``   split-N reduction: each program sums ``f(K)^T V`` and
     ``sum f(K)`` over one contiguous chunk of tokens into an fp32 partial, S and z
     packed in one row so that a single ``torch.sum`` reduces both (deterministic,
     unlike atomics; a few MB at most).
  2. ``_output_kernel``  ``o = f(Q) S / (f(Q) z + eps)``; each program keeps S on
     chip and streams its chunk of query tokens.
backward (S and z are recomputed with pass 1; the op saves only q, k, v)
  3. ``_bwd_query_kernel`` streams q and dO: writes dq and fp32 partials of
     ``dS = (f(Q)/den)^T dO`` and ``dz = f(Q)^T dDen``.
  4. ``_bwd_key_kernel``   streams k and v: writes ``dk = (V dS^T + dz) f'(k)`` and
     ``dv = f(K) dS``.

The backward uses ``G = dO S^T`` (contraction over Dv) instead of re-forming O:
``sum_v dO*O = (f(q).G)/den``, so ``dDen = -(f(q).G)/den^2`` and
``df(q) = G/den + dDen z`` (see ``linear_attention_backward_reference``).

Both layouts are handled through strides (no copies). Matrix products take
operands in the input dtype (bf16/fp16: tensor cores) or exact fp32 ("ieee"),
always accumulating in fp32; f is evaluated in fp32. z is summed from the same
dot-dtype f(K) as S, so numerator and denominator see the same rounded features.
Head dims up to 128 run as one value-dim block; up to 256 the value dim is tiled
(correct, not tuned). On an H100 at the Wan-1.3B shape the forward runs at ~64%
and forward+backward at ~48% of the HBM floor (benchmarks/linear_attention.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Mapping

import torch
import triton
import triton.language as tl
from torch import Tensor

from lincompress.ops.linear_attention import ELEMENTWISE_FEATURE_MAPS, LAYOUTS

MAX_HEAD_DIM = 256
_FEATURE_IDS = {name: i for i, name in enumerate(ELEMENTWISE_FEATURE_MAPS)}  # identity=0, relu=1, elu1=2
_DOT_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _feature(x, FEATURE: tl.constexpr):
    """f(x) for identity (0), relu (1), elu(x)+1 (2); x is fp32."""
    y = x
    if FEATURE == 1:
        y = tl.maximum(x, 0.0)
    if FEATURE == 2:
        y = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    return y


@triton.jit
def _feature_grad_from_value(phi, FEATURE: tl.constexpr):
    """f'(x) written in terms of f(x), so x need not stay live in registers.

    relu: f' = [f > 0]; elu+1: f = x+1 > 1 for x > 0 (f' = 1), f = exp(x) <= 1 otherwise
    (f' = exp(x) = f); at x = 0 both give 1, as the reference does.
    """
    g = tl.full(phi.shape, 1.0, tl.float32)
    if FEATURE == 1:
        g = tl.where(phi > 0, 1.0, 0.0)
    if FEATURE == 2:
        g = tl.where(phi > 1, 1.0, phi.to(tl.float32))
    return g


@triton.jit
def _head_base(ptr, pid_bh, H, stride_b, stride_h):
    """Pointer to token 0, feature 0 of head ``pid_bh``; 64-bit offsets for large tensors."""
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    return ptr + b * stride_b + h * stride_h


@triton.jit
def _tile_offsets(offs_n, offs_d, N, D, stride_n, stride_d):
    """Offsets and in-bounds mask of a [tokens, features] tile."""
    offs = offs_n.to(tl.int64)[:, None] * stride_n + offs_d[None, :] * stride_d
    mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    return offs, mask


@triton.jit
def _load_state(s_ptr, offs_dk, offs_dv, DK, DV, DOT_DTYPE: tl.constexpr):
    """A [Dk, Dv-block] slice of a head's fp32 state (S or dS), zero padded, as a dot operand."""
    mask = (offs_dk[:, None] < DK) & (offs_dv[None, :] < DV)
    return tl.load(s_ptr + offs_dk[:, None] * DV + offs_dv[None, :], mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def _store_state(part_ptr, part, acc, vec, offs_dk, offs_dv, DK, DV, vec_cols):
    """Writes one partial state: the [Dk, Dv] matrix, then the Dk vector (first vec_cols entries)."""
    base = part_ptr + part.to(tl.int64) * (DK * DV + DK)
    mask = (offs_dk[:, None] < DK) & (offs_dv[None, :] < DV)
    tl.store(base + offs_dk[:, None] * DV + offs_dv[None, :], acc, mask=mask)
    tl.store(base + DK * DV + offs_dk, vec, mask=offs_dk < vec_cols)


@triton.jit
def _unit_column(BLOCK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """[BLOCK, 16] matrix [1, 0, ..., 0]: ``x^T @ it`` puts the column sums of x in column 0.

    The state kernel sums f(K) over tokens this way, on the tensor cores next to the
    S product, instead of a cross-warp reduction on every tile (13% faster pass on H100).
    """
    cols = tl.arange(0, 16)[None, :] + tl.zeros([BLOCK, 16], tl.int32)
    return tl.where(cols == 0, 1.0, 0.0).to(DOT_DTYPE)


@triton.jit
def _split_range(pid_split, tokens_per_split, N):
    """[start, end) tokens of this program's chunk."""
    start = pid_split * tokens_per_split
    return start, tl.minimum(start + tokens_per_split, N)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _state_kernel(
    k_ptr, v_ptr, part_ptr,
    H, N, DK, DV, tokens_per_split,
    sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
    FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Partial S[:, v-block] and z over one token chunk -> part[bh, split] = (S, z)."""
    pid_bh, pid_split, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_splits = tl.num_programs(1)
    k_base = _head_base(k_ptr, pid_bh, H, sk_b, sk_h)
    v_base = _head_base(v_ptr, pid_bh, H, sv_b, sv_h)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    acc = tl.zeros([BLOCK_DK, BLOCK_DV], tl.float32)
    z_cols = tl.zeros([BLOCK_DK, 16], tl.float32)
    unit = _unit_column(BLOCK_N, DOT_DTYPE)
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_offs, k_mask = _tile_offsets(offs_n, offs_dk, N, DK, sk_n, sk_d)
        v_offs, v_mask = _tile_offsets(offs_n, offs_dv, N, DV, sv_n, sv_d)
        x = tl.load(k_base + k_offs, mask=k_mask, other=0.0).to(tl.float32)
        v = tl.load(v_base + v_offs, mask=v_mask, other=0.0).to(DOT_DTYPE)
        phi = tl.where(k_mask, _feature(x, FEATURE), 0.0)  # padding must not add f(0) to z
        phi_t = tl.trans(phi.to(DOT_DTYPE))
        acc = tl.dot(phi_t, v, acc, input_precision=PRECISION)
        z_cols = tl.dot(phi_t, unit, z_cols, input_precision=PRECISION)  # column 0: sum f(K)
    z_acc = tl.sum(z_cols, axis=1)
    z_limit = tl.where(pid_v == 0, DK, 0)  # z is complete in every v-block; v-block 0 stores it
    _store_state(part_ptr, pid_bh * n_splits + pid_split, acc, z_acc, offs_dk, offs_dv, DK, DV, z_limit)


@triton.jit
def _output_kernel(
    q_ptr, state_ptr, o_ptr,
    H, N, DK, DV, tokens_per_split, eps,
    sq_b, sq_h, sq_n, sq_d, so_b, so_h, so_n, so_d,
    FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    NUM_DV_BLOCKS: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """o = f(q) S / (f(q) z + eps) for one chunk of query tokens; S stays on chip."""
    pid_bh, pid_split = tl.program_id(0), tl.program_id(1)
    q_base = _head_base(q_ptr, pid_bh, H, sq_b, sq_h)
    o_base = _head_base(o_ptr, pid_bh, H, so_b, so_h)
    s_base = state_ptr + pid_bh.to(tl.int64) * (DK * DV + DK)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    z = tl.load(s_base + DK * DV + offs_dk, mask=offs_dk < DK, other=0.0)
    if NUM_DV_BLOCKS == 1:
        s = _load_state(s_base, offs_dk, offs_dv, DK, DV, DOT_DTYPE)
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        q_offs, q_mask = _tile_offsets(offs_n, offs_dk, N, DK, sq_n, sq_d)
        x = tl.load(q_base + q_offs, mask=q_mask, other=0.0).to(tl.float32)
        phi = tl.where(q_mask, _feature(x, FEATURE), 0.0)
        inv_den = 1.0 / (tl.sum(phi * z[None, :], axis=1) + eps)
        phi_dot = phi.to(DOT_DTYPE)
        if NUM_DV_BLOCKS == 1:
            o = tl.dot(phi_dot, s, input_precision=PRECISION) * inv_den[:, None]
            o_offs, o_mask = _tile_offsets(offs_n, offs_dv, N, DV, so_n, so_d)
            tl.store(o_base + o_offs, o.to(o_ptr.dtype.element_ty), mask=o_mask)
        else:
            for c in tl.static_range(NUM_DV_BLOCKS):
                offs_c = c * BLOCK_DV + offs_dv
                s_c = _load_state(s_base, offs_dk, offs_c, DK, DV, DOT_DTYPE)
                o = tl.dot(phi_dot, s_c, input_precision=PRECISION) * inv_den[:, None]
                o_offs, o_mask = _tile_offsets(offs_n, offs_c, N, DV, so_n, so_d)
                tl.store(o_base + o_offs, o.to(o_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _bwd_query_kernel(
    q_ptr, do_ptr, state_ptr, dq_ptr, part_ptr,
    H, N, DK, DV, tokens_per_split, eps,
    sq_b, sq_h, sq_n, sq_d, sg_b, sg_h, sg_n, sg_d, sdq_b, sdq_h, sdq_n, sdq_d,
    FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    NUM_DV_BLOCKS: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Query side of the backward: dq, and partial dS[:, v-block], dz over one token chunk.

    With several value-dim blocks every program needs G = dO S^T over all of Dv, so it
    recomputes it; only the v-block-0 program stores dq and dz (large head dims only).
    """
    pid_bh, pid_split, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_splits = tl.num_programs(1)
    q_base = _head_base(q_ptr, pid_bh, H, sq_b, sq_h)
    do_base = _head_base(do_ptr, pid_bh, H, sg_b, sg_h)
    dq_base = _head_base(dq_ptr, pid_bh, H, sdq_b, sdq_h)
    s_base = state_ptr + pid_bh.to(tl.int64) * (DK * DV + DK)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    z = tl.load(s_base + DK * DV + offs_dk, mask=offs_dk < DK, other=0.0)
    if NUM_DV_BLOCKS == 1:
        s = _load_state(s_base, offs_dk, offs_dv, DK, DV, DOT_DTYPE)
    dq_cols = tl.where(pid_v == 0, DK, 0)  # only v-block 0 stores dq and dz
    ds_acc = tl.zeros([BLOCK_DK, BLOCK_DV], tl.float32)
    dz_acc = tl.zeros([BLOCK_DK], tl.float32)
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        q_offs, q_mask = _tile_offsets(offs_n, offs_dk, N, DK, sq_n, sq_d)
        x = tl.load(q_base + q_offs, mask=q_mask, other=0.0).to(tl.float32)
        phi = tl.where(q_mask, _feature(x, FEATURE), 0.0)
        inv_den = 1.0 / (tl.sum(phi * z[None, :], axis=1) + eps)
        g_offs, g_mask = _tile_offsets(offs_n, offs_dv, N, DV, sg_n, sg_d)
        grad = tl.load(do_base + g_offs, mask=g_mask, other=0.0).to(DOT_DTYPE)
        if NUM_DV_BLOCKS == 1:
            g = tl.dot(grad, tl.trans(s), input_precision=PRECISION)  # G = dO S^T
        else:
            g = tl.zeros([BLOCK_N, BLOCK_DK], tl.float32)
            for c in tl.static_range(NUM_DV_BLOCKS):
                offs_c = c * BLOCK_DV + tl.arange(0, BLOCK_DV)
                gc_offs, gc_mask = _tile_offsets(offs_n, offs_c, N, DV, sg_n, sg_d)
                grad_c = tl.load(do_base + gc_offs, mask=gc_mask, other=0.0).to(DOT_DTYPE)
                s_c = _load_state(s_base, offs_dk, offs_c, DK, DV, DOT_DTYPE)
                g = tl.dot(grad_c, tl.trans(s_c), g, input_precision=PRECISION)
        d_den = -tl.sum(phi * g, axis=1) * inv_den * inv_den
        dq = (g * inv_den[:, None] + d_den[:, None] * z[None, :]) * _feature_grad_from_value(phi, FEATURE)
        dq_offs, dq_mask = _tile_offsets(offs_n, offs_dk, N, dq_cols, sdq_n, sdq_d)
        tl.store(dq_base + dq_offs, dq.to(dq_ptr.dtype.element_ty), mask=dq_mask)
        # dz by a column reduction: on the tensor cores, as in the state kernel, this pass was
        # 50% slower on H100 (register pressure), so it stays a plain sum here.
        dz_acc += tl.sum(phi * d_den[:, None], axis=0)
        scaled_t = tl.trans((phi * inv_den[:, None]).to(DOT_DTYPE))
        ds_acc = tl.dot(scaled_t, grad, ds_acc, input_precision=PRECISION)  # (f(Q)/den)^T dO
    _store_state(part_ptr, pid_bh * n_splits + pid_split, ds_acc, dz_acc, offs_dk, offs_dv, DK, DV, dq_cols)


@triton.jit
def _bwd_key_kernel(
    k_ptr, v_ptr, d_state_ptr, dk_ptr, dv_ptr,
    H, N, DK, DV, tokens_per_split,
    sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
    sdk_b, sdk_h, sdk_n, sdk_d, sdv_b, sdv_h, sdv_n, sdv_d,
    FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    NUM_DV_BLOCKS: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Key side of the backward: dk = (V dS^T + dz) f'(k), dv = f(K) dS for one token chunk."""
    pid_bh, pid_split = tl.program_id(0), tl.program_id(1)
    k_base = _head_base(k_ptr, pid_bh, H, sk_b, sk_h)
    v_base = _head_base(v_ptr, pid_bh, H, sv_b, sv_h)
    dk_base = _head_base(dk_ptr, pid_bh, H, sdk_b, sdk_h)
    dv_base = _head_base(dv_ptr, pid_bh, H, sdv_b, sdv_h)
    ds_base = d_state_ptr + pid_bh.to(tl.int64) * (DK * DV + DK)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    dz = tl.load(ds_base + DK * DV + offs_dk, mask=offs_dk < DK, other=0.0)
    if NUM_DV_BLOCKS == 1:
        ds = _load_state(ds_base, offs_dk, offs_dv, DK, DV, DOT_DTYPE)
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_offs, k_mask = _tile_offsets(offs_n, offs_dk, N, DK, sk_n, sk_d)
        x = tl.load(k_base + k_offs, mask=k_mask, other=0.0).to(tl.float32)
        phi = tl.where(k_mask, _feature(x, FEATURE), 0.0).to(DOT_DTYPE)
        dkf = tl.zeros([BLOCK_N, BLOCK_DK], tl.float32) + dz[None, :]
        for c in tl.static_range(NUM_DV_BLOCKS):
            offs_c = c * BLOCK_DV + offs_dv
            if NUM_DV_BLOCKS == 1:
                ds_c = ds
            else:
                ds_c = _load_state(ds_base, offs_dk, offs_c, DK, DV, DOT_DTYPE)
            v_offs, v_mask = _tile_offsets(offs_n, offs_c, N, DV, sv_n, sv_d)
            v = tl.load(v_base + v_offs, mask=v_mask, other=0.0).to(DOT_DTYPE)
            dkf = tl.dot(v, tl.trans(ds_c), dkf, input_precision=PRECISION)  # V dS^T
            dv = tl.dot(phi, ds_c, input_precision=PRECISION)  # f(K) dS
            dv_offs, dv_mask = _tile_offsets(offs_n, offs_c, N, DV, sdv_n, sdv_d)
            tl.store(dv_base + dv_offs, dv.to(dv_ptr.dtype.element_ty), mask=dv_mask)
        dk = dkf * _feature_grad_from_value(phi, FEATURE)  # from the dot-dtype f(k): x is dead
        dk_offs, dk_mask = _tile_offsets(offs_n, offs_dk, N, DK, sdk_n, sdk_d)
        tl.store(dk_base + dk_offs, dk.to(dk_ptr.dtype.element_ty), mask=dk_mask)


# --------------------------------------------------------------------------- launch configuration


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of one kernel; ``programs_per_sm`` sets how finely N is split."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int = 2


# From CUDA-graph sweeps on an H100 at the Wan-1.3B shape (benchmarks/linear_attention.py --sweep).
DEFAULT_CONFIGS: dict[str, KernelConfig] = {
    "state": KernelConfig(block_n=64, num_warps=4, num_stages=3, programs_per_sm=2),
    "output": KernelConfig(block_n=64, num_warps=8, num_stages=2, programs_per_sm=2),
    "bwd_query": KernelConfig(block_n=64, num_warps=16, num_stages=3, programs_per_sm=2),
    "bwd_key": KernelConfig(block_n=64, num_warps=16, num_stages=3, programs_per_sm=2),
}


@dataclass(frozen=True)
class _Shapes:
    """Problem sizes in the kernels' (batch, head, token, feature) terms."""

    batch: int
    heads: int
    n_q: int
    n_kv: int
    dk: int
    dv: int
    block_dk: int
    block_dv: int

    @property
    def bh(self) -> int:
        return self.batch * self.heads

    @property
    def num_dv_blocks(self) -> int:
        return triton.cdiv(self.dv, self.block_dv)


def _shapes(q: Tensor, k: Tensor, v: Tensor, layout: str) -> _Shapes:
    token_axis = 2 if layout == "bhnd" else 1
    head_axis = 3 - token_axis
    dk, dv = q.shape[3], v.shape[3]
    block_dk = max(16, triton.next_power_of_2(dk))
    # Keep the fp32 [Dk, Dv-block] accumulator at <= 128x128 so it stays in registers.
    block_dv = min(max(16, triton.next_power_of_2(dv)), max(16, 16384 // block_dk))
    return _Shapes(q.shape[0], q.shape[head_axis], q.shape[token_axis], k.shape[token_axis], dk, dv, block_dk, block_dv)


def _strides(t: Tensor, layout: str) -> tuple[int, int, int, int]:
    """(batch, head, token, feature) strides, whatever the memory layout."""
    sb, s1, s2, sd = t.stride()
    return (sb, s1, s2, sd) if layout == "bhnd" else (sb, s2, s1, sd)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter / other devices: a few programs per head keep the split path exercised


def _launch_params(config: KernelConfig, shapes: _Shapes) -> tuple[int, int, int]:
    """(block_n, num_warps, num_stages). Head dims over 128 (or tiled Dv) get small tiles and
    no multi-buffering: correctness there matters, and wide tiles overflow shared memory."""
    if shapes.block_dk > 128 or shapes.num_dv_blocks > 1:
        return 32, 4, 1
    return config.block_n, config.num_warps, config.num_stages


_SPLIT_COST = 0.01  # relative cost of one more split (its partial state, its reload of S)


@functools.lru_cache(maxsize=1024)  # host time per launch matters: these ops take well under 1 ms
def _split_count(other_programs: int, n_tiles: int, slots: int) -> int:
    """Splits per head that minimise (waves x work per program), with a small cost per split.

    Every program of a launch does the same work, so a launch lasts ceil(programs/slots)
    waves; 40 heads x 7 splits on 264 slots would take two waves for 1.06 waves of work.
    """
    candidates = range(1, max(1, min(n_tiles, 4 * triton.cdiv(slots, other_programs))) + 1)
    return min(candidates, key=lambda s: triton.cdiv(other_programs * s, slots) / s * (1 + _SPLIT_COST * s))


def _split(n_tokens: int, block_n: int, other_programs: int, config: KernelConfig, device: torch.device) -> tuple[int, int]:
    """(tokens per split, number of splits): whole tiles per split, balanced over the GPU's slots."""
    n_tiles = triton.cdiv(max(n_tokens, 1), block_n)
    splits = _split_count(other_programs, n_tiles, _num_sms(device) * config.programs_per_sm)
    tiles = triton.cdiv(n_tiles, splits)
    return tiles * block_n, triton.cdiv(n_tiles, tiles)


def _dot_dtype(*tensors: Tensor) -> tuple[tl.dtype, str]:
    """Tensor-core operand dtype: the inputs' half dtype if they share one, else exact fp32."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1 and next(iter(dtypes)) in (torch.bfloat16, torch.float16):
        return _DOT_DTYPES[next(iter(dtypes))], "tf32"  # precision flag unused for half operands
    return tl.float32, "ieee"


def _config(configs: Mapping[str, KernelConfig] | None, name: str) -> KernelConfig:
    return (configs or {}).get(name, DEFAULT_CONFIGS[name])


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the Triton path handles these inputs (else callers use the reference)."""
    dims_ok = max(q.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM
    return dims_ok and all(t.dtype in _DOT_DTYPES for t in (q, k, v))


def _check(q: Tensor, k: Tensor, v: Tensor, feature_map: str, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"linear_attention_triton: layout {layout!r} not in {LAYOUTS}")
    if feature_map not in _FEATURE_IDS:
        raise ValueError(f"linear_attention_triton: feature_map {feature_map!r} not in {ELEMENTWISE_FEATURE_MAPS}")
    if not supports(q, k, v):
        raise ValueError("linear_attention_triton: needs head dims <= 256 and fp32/fp16/bf16 inputs")


# --------------------------------------------------------------------------- launchers


def _new_partials(like: Tensor, shapes: _Shapes, splits: int) -> Tensor:
    """fp32 partial states, one (matrix, vector) pair per head and split, packed per row."""
    return like.new_empty((shapes.bh, splits, shapes.dk * shapes.dv + shapes.dk), dtype=torch.float32)


def _launch_state(
    k: Tensor, v: Tensor, shapes: _Shapes, feature: int, layout: str, dot: tuple[tl.dtype, str],
    configs: Mapping[str, KernelConfig] | None,
) -> Tensor:  # fmt: skip
    """Pass 1 + reduction: per head (S = f(K)^T V, z = sum f(K)) packed as fp32 [BH, Dk*Dv + Dk]."""
    cfg = _config(configs, "state")
    block_n, num_warps, num_stages = _launch_params(cfg, shapes)
    tokens, splits = _split(shapes.n_kv, block_n, shapes.bh * shapes.num_dv_blocks, cfg, k.device)
    parts = _new_partials(k, shapes, splits)
    _state_kernel[(shapes.bh, splits, shapes.num_dv_blocks)](
        k, v, parts,
        shapes.heads, shapes.n_kv, shapes.dk, shapes.dv, tokens,
        *_strides(k, layout), *_strides(v, layout),
        FEATURE=feature, BLOCK_N=block_n, BLOCK_DK=shapes.block_dk, BLOCK_DV=shapes.block_dv,
        DOT_DTYPE=dot[0], PRECISION=dot[1], num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return parts.sum(dim=1)  # deterministic, unlike atomics; one small launch


def linear_attention_forward_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    feature_map: str = "identity",
    eps: float = 1e-6,
    layout: str = "bhnd",
    configs: Mapping[str, KernelConfig] | None = None,
) -> Tensor:
    """Forward of ``lincompress::linear_attention`` with the fused kernels; out in v's layout/dtype."""
    _check(q, k, v, feature_map, layout)
    shapes = _shapes(q, k, v, layout)
    feature = _FEATURE_IDS[feature_map]
    out = v.new_empty((q.shape[0], q.shape[1], q.shape[2], shapes.dv))
    if out.numel() == 0:
        return out
    dot = _dot_dtype(q, k, v)
    state = _launch_state(k, v, shapes, feature, layout, dot, configs)
    cfg = _config(configs, "output")
    block_n, num_warps, num_stages = _launch_params(cfg, shapes)
    tokens, splits = _split(shapes.n_q, block_n, shapes.bh, cfg, q.device)
    _output_kernel[(shapes.bh, splits)](
        q, state, out,
        shapes.heads, shapes.n_q, shapes.dk, shapes.dv, tokens, float(eps),
        *_strides(q, layout), *_strides(out, layout),
        FEATURE=feature, BLOCK_N=block_n, BLOCK_DK=shapes.block_dk, BLOCK_DV=shapes.block_dv,
        NUM_DV_BLOCKS=shapes.num_dv_blocks, DOT_DTYPE=dot[0], PRECISION=dot[1],
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def _launch_bwd_query(
    grad_out: Tensor, q: Tensor, state: Tensor, eps: float, shapes: _Shapes, feature: int, layout: str,
    dot: tuple[tl.dtype, str], configs: Mapping[str, KernelConfig] | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Pass 3 + reduction: dq, and (dS = (f(Q)/den)^T dO, dz = f(Q)^T dDen) packed in fp32."""
    cfg = _config(configs, "bwd_query")
    block_n, num_warps, num_stages = _launch_params(cfg, shapes)
    tokens, splits = _split(shapes.n_q, block_n, shapes.bh * shapes.num_dv_blocks, cfg, q.device)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    parts = _new_partials(q, shapes, splits)
    _bwd_query_kernel[(shapes.bh, splits, shapes.num_dv_blocks)](
        q, grad_out, state, dq, parts,
        shapes.heads, shapes.n_q, shapes.dk, shapes.dv, tokens, float(eps),
        *_strides(q, layout), *_strides(grad_out, layout), *_strides(dq, layout),
        FEATURE=feature, BLOCK_N=block_n, BLOCK_DK=shapes.block_dk, BLOCK_DV=shapes.block_dv,
        NUM_DV_BLOCKS=shapes.num_dv_blocks, DOT_DTYPE=dot[0], PRECISION=dot[1],
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return dq, parts.sum(dim=1)


def _launch_bwd_key(
    k: Tensor, v: Tensor, d_state: Tensor, shapes: _Shapes, feature: int, layout: str,
    dot: tuple[tl.dtype, str], configs: Mapping[str, KernelConfig] | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Pass 4: dk = (V dS^T + dz) f'(k), dv = f(K) dS."""
    cfg = _config(configs, "bwd_key")
    block_n, num_warps, num_stages = _launch_params(cfg, shapes)
    tokens, splits = _split(shapes.n_kv, block_n, shapes.bh, cfg, k.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _bwd_key_kernel[(shapes.bh, splits)](
        k, v, d_state, dk, dv,
        shapes.heads, shapes.n_kv, shapes.dk, shapes.dv, tokens,
        *_strides(k, layout), *_strides(v, layout), *_strides(dk, layout), *_strides(dv, layout),
        FEATURE=feature, BLOCK_N=block_n, BLOCK_DK=shapes.block_dk, BLOCK_DV=shapes.block_dv,
        NUM_DV_BLOCKS=shapes.num_dv_blocks, DOT_DTYPE=dot[0], PRECISION=dot[1],
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return dk, dv


def linear_attention_backward_triton(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    feature_map: str = "identity",
    eps: float = 1e-6,
    layout: str = "bhnd",
    configs: Mapping[str, KernelConfig] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of ``lincompress::linear_attention``: (dq, dk, dv), contiguous, inputs' dtypes."""
    _check(q, k, v, feature_map, layout)
    shapes = _shapes(q, k, v, layout)
    feature = _FEATURE_IDS[feature_map]
    if q.numel() == 0 or k.numel() == 0:  # no tokens on one side: every gradient is zero
        return tuple(torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dot = _dot_dtype(q, k, v)
    state = _launch_state(k, v, shapes, feature, layout, dot, configs)
    dq, d_state = _launch_bwd_query(grad_out, q, state, eps, shapes, feature, layout, dot, configs)
    dk, dv = _launch_bwd_key(k, v, d_state, shapes, feature, layout, dot, configs)
    return dq, dk, dv


def with_overrides(name: str, **fields: int) -> dict[str, KernelConfig]:
    """DEFAULT_CONFIGS with some fields of one kernel's config replaced (for tuning sweeps)."""
    return {**DEFAULT_CONFIGS, name: replace(DEFAULT_CONFIGS[name], **fields)}
