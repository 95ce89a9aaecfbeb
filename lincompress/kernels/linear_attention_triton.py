"""Fused Triton kernels for ``lincompress::linear_attention`` (forward and backward).

The op is memory-bound: per head it reads q, k, v once and writes o once, while the
state ``S = sum_j phi(k_j) v_j^T`` is only ``Dk x Dv``. So every pass streams tokens,
keeps the small state on chip and applies the feature map in registers (fp32), so
Hedgehog (``phi(x) = [softmax(x), softmax(-x)]``, a row max and sum per token) costs
the same HBM traffic as relu although its feature dim is 2 x D. The state of a
two-part map is kept as two ``D x Dv`` halves (``PARTS = 2``), each with its own
tensor-core products, so no 2D-wide tile is ever formed.

forward
  1. ``_state_kernel``   split-N reduction: each program sums ``phi(K)^T V`` and
     ``sum phi(K)`` over one contiguous chunk of tokens into an fp32 partial, S and z
     packed in one row so that a single ``torch.sum`` reduces both (deterministic,
     unlike atomics; a few MB at most).
  2. ``_output_kernel``  ``o = phi(Q) S / (phi(Q) z + eps)``; each program keeps S on
     chip and streams its chunk of query tokens. For Hedgehog it can normalise after the
     products (config ``tc_norm``): the exponentials go to the tensor cores unnormalised,
     the row sums and ``phi(Q) z`` come out of one small extra product.
backward (S and z come from the forward on the eager path, else pass 1 recomputes them)
  3. ``_bwd_query_kernel`` streams q and dO: writes dq and fp32 partials of
     ``dS = (phi(Q)/den)^T dO`` and ``dz = phi(Q)^T dDen``.
  4. ``_bwd_key_kernel``   streams k and v: writes ``dk = vjp_phi(V dS^T + dz)`` and
     ``dv = phi(K) dS``.

The backward uses ``G = dO S^T`` (contraction over Dv) instead of re-forming O:
``sum_v dO*O = (phi(q).G)/den``, so ``dDen = -(phi(q).G)/den^2`` and
``dphi(q) = G/den + dDen z``; ``vjp_phi`` pulls that back through the map (for
Hedgehog analytically through both softmaxes; see ``spec.FeatureMapSpec.vjp``).

Both layouts are handled through strides (no copies). Matrix products take operands in
the input dtype (bf16/fp16: tensor cores) or exact fp32 ("ieee"), always accumulating
in fp32. z is summed from the same dot-dtype phi(K) as S, so numerator and denominator
see the same rounded features. Hedgehog's exponentials run in base 2 with log2(e) folded
into one FMA (no denormal fix-ups) and one division per token; a head dim that is a power
of two (``EVEN_D``) compiles without column masks. Launch parameters (token tile, warps, stages, programs
per SM, value-dim tile, register cap, normalisation) come from ``tuned_configs.py`` per (feature map, head dims,
layout), written by ``benchmarks/tune_linear_attention.py`` on the GPU; untuned shapes
use ``DEFAULT_CONFIGS`` and, for fp32 or head dims over 128, small safe tiles.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping

import torch
import triton
import triton.language as tl
from torch import Tensor

from lincompress.ops import spec

CONFIGS_ENV = "LINCOMPRESS_LINEAR_ATTENTION_CONFIGS"  # a tuner JSON to use instead of the committed table
KERNELS: tuple[str, ...] = ("state", "output", "bwd_query", "bwd_state", "bwd_key")
FEATURE_IDS: dict[str, int] = {n: s.kernel_id for n, s in spec.FEATURE_MAPS.items() if s.kernel_id is not None}
_DOT_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}

# The kernels' branch per feature map (FEATURE constexpr == the spec's kernel_id).
_RELU = tl.constexpr(spec.FEATURE_MAPS["relu"].kernel_id)
_ELU1 = tl.constexpr(spec.FEATURE_MAPS["elu1"].kernel_id)
_HEDGEHOG = tl.constexpr(spec.FEATURE_MAPS["hedgehog"].kernel_id)


# --------------------------------------------------------------------------- feature maps


LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e))


@triton.jit
def _hedgehog_exp(x, offs_d, D, EVEN_D: tl.constexpr):
    """Unnormalised Hedgehog parts (exp(x - max x), exp(min x - x)) of an fp32 [tokens, BLOCK_D] tile.

    One row max and one row min (softmax(-x) = exp(min - x) / sum), the exponentials in
    base 2 with log2(e) folded in: ``x*c - max*c`` is one FMA, and ``ex2`` needs none of
    the denormal fix-ups that ``exp`` costs (five instructions per element instead of
    two). Padded columns are zero; ``EVEN_D`` (D == BLOCK_D) drops their masks at compile time.
    """
    if EVEN_D:
        hi = tl.max(x, axis=1) * LOG2E
        lo = tl.min(x, axis=1) * LOG2E
    else:
        col_ok = (offs_d < D)[None, :]
        hi = tl.max(tl.where(col_ok, x, float("-inf")), axis=1) * LOG2E
        lo = tl.min(tl.where(col_ok, x, float("inf")), axis=1) * LOG2E
    ea = tl.exp2(x * LOG2E - hi[:, None])
    eb = tl.exp2(lo[:, None] - x * LOG2E)
    if not EVEN_D:
        ea = tl.where(col_ok, ea, 0.0)
        eb = tl.where(col_ok, eb, 0.0)
    return ea, eb


@triton.jit
def _hedgehog_features(x, row_ok, offs_d, D, EVEN_D: tl.constexpr):
    """(softmax(x), softmax(-x)) of an fp32 [tokens, BLOCK_D] tile, zero outside ``row_ok``.

    One division per row: 1/sa = sb/(sa sb), 1/sb = sa/(sa sb) (sa, sb in [1, D]); padded
    rows are zeroed through that per-row scale, not per element.
    """
    ea, eb = _hedgehog_exp(x, offs_d, D, EVEN_D)
    sa = tl.sum(ea, axis=1)
    sb = tl.sum(eb, axis=1)
    inv = tl.where(row_ok, 1.0 / (sa * sb), 0.0)
    return ea * (sb * inv)[:, None], eb * (sa * inv)[:, None]


@triton.jit
def _features(x, row_ok, offs_d, D, EVEN_D: tl.constexpr, FEATURE: tl.constexpr):
    """phi of an fp32 [tokens, BLOCK_D] tile as (part a, part b), zero outside the valid rows and columns.

    Hedgehog: (softmax(x), softmax(-x)). One-part maps return their features twice (part b
    is then unused and compiled away).
    """
    if FEATURE == _HEDGEHOG:
        pa, pb = _hedgehog_features(x, row_ok, offs_d, D, EVEN_D)
    else:
        y = x
        if FEATURE == _RELU:
            y = tl.maximum(x, 0.0)
        if FEATURE == _ELU1:
            y = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
        pa = tl.where(row_ok[:, None] & (offs_d < D)[None, :], y, 0.0)
        pb = pa
    return pa, pb


@triton.jit
def _features_vjp(ga, gb, pa, pb, FEATURE: tl.constexpr):
    """dx from d phi = (ga, gb), given the features (pa, pb) of x (so x need not stay live).

    Hedgehog: J_softmax g = p * (g - <g, p>) per part, the second part with a minus sign.
    relu: phi' = [phi > 0]; elu+1: phi = x+1 > 1 for x > 0 (phi' = 1), phi = exp(x) <= 1
    otherwise (phi' = exp(x) = phi); at x = 0 both give 1, as the reference does.
    """
    if FEATURE == _HEDGEHOG:
        dx = pa * (ga - tl.sum(ga * pa, axis=1)[:, None]) - pb * (gb - tl.sum(gb * pb, axis=1)[:, None])
    else:
        p = pa.to(tl.float32)
        d_phi = tl.full(p.shape, 1.0, tl.float32)
        if FEATURE == _RELU:
            d_phi = tl.where(p > 0, 1.0, 0.0)
        if FEATURE == _ELU1:
            d_phi = tl.where(p > 1, 1.0, p)
        dx = ga * d_phi
    return dx


# --------------------------------------------------------------------------- memory helpers


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
def _load_matrix(base, row0, offs_d, offs_dv, D, DV, DOT_DTYPE: tl.constexpr):
    """Rows ``row0 + offs_d`` (< row0 + D), columns ``offs_dv`` of a head's fp32 [FD, Dv] state, as a dot operand."""
    mask = (offs_d[:, None] < D) & (offs_dv[None, :] < DV)
    ptrs = base + (row0 + offs_d)[:, None] * DV + offs_dv[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def _load_vector(base, FD, DV, row0, offs_d, D):
    """Entries ``row0 + offs_d`` of the fp32 vector (z or dz) stored after a head's [FD, Dv] matrix."""
    return tl.load(base + FD * DV + row0 + offs_d, mask=offs_d < D, other=0.0)


@triton.jit
def _store_part(base, row0, acc, vec, offs_d, offs_dv, D, DV, FD, vec_limit):
    """One part of a partial state: matrix rows ``row0 + offs_d``, then its vector (entries < vec_limit)."""
    mask = (offs_d[:, None] < D) & (offs_dv[None, :] < DV)
    tl.store(base + (row0 + offs_d)[:, None] * DV + offs_dv[None, :], acc, mask=mask)
    tl.store(base + FD * DV + row0 + offs_d, vec, mask=offs_d < vec_limit)


@triton.jit
def _unit_column(BLOCK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """[BLOCK, 16] matrix [1, 0, ..., 0]: ``x^T @ it`` puts the column sums of x in column 0.

    The state kernel sums phi(K) over tokens this way, on the tensor cores next to the
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
    k_ptr, v_ptr, part_ptr, scal_ptr,
    H, N, D, DV, tokens_per_split,
    sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
    FEATURE: tl.constexpr, PARTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, GRAD: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Partial S[:, v-block] and z over one token chunk -> part[bh, split] = (S, z).

    ``GRAD``: the backward's dS pass of the split query side, same reduction with k = q,
    v = dO * inv_den and z = sum phi(q) dDen (per-token inv_den, dDen from ``scal_ptr``).
    """
    pid_bh, pid_split, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_splits = tl.num_programs(1)
    k_base = _head_base(k_ptr, pid_bh, H, sk_b, sk_h)
    v_base = _head_base(v_ptr, pid_bh, H, sv_b, sv_h)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    acc_a = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    if PARTS == 2:
        acc_b = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    if GRAD:
        zv_a = tl.zeros([BLOCK_D], tl.float32)
        zv_b = tl.zeros([BLOCK_D], tl.float32)
        scal_base = scal_ptr + pid_bh.to(tl.int64) * N
        bhn = tl.num_programs(0).to(tl.int64) * N
    else:
        z_a = tl.zeros([BLOCK_D, 16], tl.float32)
        z_b = tl.zeros([BLOCK_D, 16], tl.float32)
        unit = _unit_column(BLOCK_N, DOT_DTYPE)
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        row_ok = offs_n < N
        k_offs, k_mask = _tile_offsets(offs_n, offs_d, N, D, sk_n, sk_d)
        v_offs, v_mask = _tile_offsets(offs_n, offs_dv, N, DV, sv_n, sv_d)
        x = tl.load(k_base + k_offs, mask=k_mask, other=0.0).to(tl.float32)
        pa, pb = _features(x, row_ok, offs_d, D, EVEN_D, FEATURE)  # padding must not add phi(0) to z
        if GRAD:
            inv_den = tl.load(scal_base + offs_n, mask=row_ok, other=0.0)
            d_den = tl.load(scal_base + bhn + offs_n, mask=row_ok, other=0.0)
            v = (tl.load(v_base + v_offs, mask=v_mask, other=0.0).to(tl.float32) * inv_den[:, None]).to(DOT_DTYPE)
        else:
            v = tl.load(v_base + v_offs, mask=v_mask, other=0.0).to(DOT_DTYPE)
        pa_t = tl.trans(pa.to(DOT_DTYPE))
        acc_a = tl.dot(pa_t, v, acc_a, input_precision=PRECISION)
        if GRAD:
            zv_a += tl.sum(pa * d_den[:, None], axis=0)
        else:
            z_a = tl.dot(pa_t, unit, z_a, input_precision=PRECISION)  # column 0: sum phi(K)
        if PARTS == 2:
            pb_t = tl.trans(pb.to(DOT_DTYPE))
            acc_b = tl.dot(pb_t, v, acc_b, input_precision=PRECISION)
            if GRAD:
                zv_b += tl.sum(pb * d_den[:, None], axis=0)
            else:
                z_b = tl.dot(pb_t, unit, z_b, input_precision=PRECISION)
    if not GRAD:
        zv_a = tl.sum(z_a, axis=1)
        zv_b = tl.sum(z_b, axis=1)
    fd = PARTS * D
    base = part_ptr + (pid_bh * n_splits + pid_split).to(tl.int64) * (fd * DV + fd)
    z_limit = tl.where(pid_v == 0, D, 0)  # z is complete in every v-block; v-block 0 stores it
    _store_part(base, 0, acc_a, zv_a, offs_d, offs_dv, D, DV, fd, z_limit)
    if PARTS == 2:
        _store_part(base, D, acc_b, zv_b, offs_d, offs_dv, D, DV, fd, z_limit)


@triton.jit
def _sum_columns(t, cols, lo: tl.constexpr, hi: tl.constexpr):
    """Row sums of columns [lo, hi) of a small [tokens, 16] product."""
    return tl.sum(tl.where((cols[None, :] >= lo) & (cols[None, :] < hi), t, 0.0), axis=1)


@triton.jit
def _z_columns(z, z_scale, cols, DOT_DTYPE: tl.constexpr):
    """[BLOCK_D, 16] dot operand: columns 0 and 1 hold z * z_scale in two halves (hi + lo: a
    half-precision operand then carries z to about fp32 accuracy), column 2 ones, the rest zero.

    ``e @ it`` gives, per token, e.z (columns 0-1) and sum e (column 2) on the tensor cores.
    ``z_scale`` (a power of 2, <= 1/n_kv) keeps z <= 1, inside fp16's range.
    """
    zs = z * z_scale
    z_hi = zs.to(DOT_DTYPE).to(tl.float32)
    c = cols[None, :]
    col = tl.where(c == 0, z_hi[:, None], tl.where(c == 1, (zs - z_hi)[:, None], tl.where(c == 2, 1.0, 0.0)))
    return col.to(DOT_DTYPE)


@triton.jit
def _output_kernel(
    q_ptr, state_ptr, o_ptr,
    H, N, D, DV, tokens_per_split, eps, z_scale,
    sq_b, sq_h, sq_n, sq_d, so_b, so_h, so_n, so_d,
    FEATURE: tl.constexpr, PARTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, NUM_DV_BLOCKS: tl.constexpr, TC_NORM: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """o = phi(q) S / (phi(q) z + eps) for one chunk of query tokens; S stays on chip.

    ``TC_NORM`` (two-part maps): normalise after the products instead of before. With
    e_a = exp(x - max), e_b = exp(min - x), so phi = [e_a / s_a, e_b / s_b], the tensor
    cores give n_a = e_a S_a, n_b = e_b S_b and, through ``_z_columns``, t_a = e_a.z_a and
    s_a (likewise b); then o = (n_a s_b + n_b s_a) / (t_a s_b + t_b s_a + eps s_a s_b).
    No row sums on the CUDA cores and one division per token; the numerator and the
    denominator see the same rounded features. It pays where the products run as wgmma
    (64+ token tiles on sm_90); on small tiles each warp would hold all of e_a and e_b.
    """
    pid_bh, pid_split = tl.program_id(0), tl.program_id(1)
    q_base = _head_base(q_ptr, pid_bh, H, sq_b, sq_h)
    o_base = _head_base(o_ptr, pid_bh, H, so_b, so_h)
    fd = PARTS * D
    s_base = state_ptr + pid_bh.to(tl.int64) * (fd * DV + fd)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    z_a = _load_vector(s_base, fd, DV, 0, offs_d, D)
    if NUM_DV_BLOCKS == 1:
        s_a = _load_matrix(s_base, 0, offs_d, offs_dv, D, DV, DOT_DTYPE)
    if PARTS == 2:
        z_b = _load_vector(s_base, fd, DV, D, offs_d, D)
        if TC_NORM:
            cols = tl.arange(0, 16)
            zc_a = _z_columns(z_a, z_scale, cols, DOT_DTYPE)
            zc_b = _z_columns(z_b, z_scale, cols, DOT_DTYPE)
        if NUM_DV_BLOCKS == 1:
            s_b = _load_matrix(s_base, D, offs_d, offs_dv, D, DV, DOT_DTYPE)
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        q_offs, q_mask = _tile_offsets(offs_n, offs_d, N, D, sq_n, sq_d)
        x = tl.load(q_base + q_offs, mask=q_mask, other=0.0).to(tl.float32)
        if TC_NORM:  # padded rows are never stored: no row mask
            ea, eb = _hedgehog_exp(x, offs_d, D, EVEN_D)
            pa_dot = ea.to(DOT_DTYPE)
            pb_dot = eb.to(DOT_DTYPE)
            t_a = tl.dot(pa_dot, zc_a, input_precision=PRECISION)
            t_b = tl.dot(pb_dot, zc_b, input_precision=PRECISION)
            sum_a = _sum_columns(t_a, cols, 2, 3)
            sum_b = _sum_columns(t_b, cols, 2, 3)
            w = z_scale / (_sum_columns(t_a, cols, 0, 2) * sum_b + _sum_columns(t_b, cols, 0, 2) * sum_a
                           + (eps * z_scale) * sum_a * sum_b)  # fmt: skip
            w_a = sum_b * w
            w_b = sum_a * w
        else:
            pa, pb = _features(x, offs_n < N, offs_d, D, EVEN_D, FEATURE)
            if PARTS == 2:  # one row reduction for both parts
                den = tl.sum(pa * z_a[None, :] + pb * z_b[None, :], axis=1)
                pb_dot = pb.to(DOT_DTYPE)
            else:
                den = tl.sum(pa * z_a[None, :], axis=1)
            inv_den = 1.0 / (den + eps)
            pa_dot = pa.to(DOT_DTYPE)
        for c in tl.static_range(NUM_DV_BLOCKS):
            offs_c = c * BLOCK_DV + offs_dv
            if NUM_DV_BLOCKS == 1:
                s_ac = s_a
            else:
                s_ac = _load_matrix(s_base, 0, offs_d, offs_c, D, DV, DOT_DTYPE)
            if PARTS == 2:
                if NUM_DV_BLOCKS == 1:
                    s_bc = s_b
                else:
                    s_bc = _load_matrix(s_base, D, offs_d, offs_c, D, DV, DOT_DTYPE)
            if TC_NORM:
                n_a = tl.dot(pa_dot, s_ac, input_precision=PRECISION)
                n_b = tl.dot(pb_dot, s_bc, input_precision=PRECISION)
                o = n_a * w_a[:, None] + n_b * w_b[:, None]
            else:
                o = tl.dot(pa_dot, s_ac, input_precision=PRECISION)
                if PARTS == 2:
                    o = tl.dot(pb_dot, s_bc, o, input_precision=PRECISION)
                o = o * inv_den[:, None]
            o_offs, o_mask = _tile_offsets(offs_n, offs_c, N, DV, so_n, so_d)
            tl.store(o_base + o_offs, o.to(o_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _bwd_query_kernel(
    q_ptr, do_ptr, state_ptr, dq_ptr, part_ptr, scal_ptr,
    H, N, D, DV, tokens_per_split, eps,
    sq_b, sq_h, sq_n, sq_d, sg_b, sg_h, sg_n, sg_d, sdq_b, sdq_h, sdq_n, sdq_d,
    FEATURE: tl.constexpr, PARTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, NUM_DV_BLOCKS: tl.constexpr, ACCUMULATE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Query side of the backward over one token chunk: dq, and either partial dS[:, v-block]
    and dz (``ACCUMULATE``) or, per token, inv_den and dDen into ``scal_ptr`` ([2, BH, N])
    for the ``GRAD`` state pass (no accumulators here: less register pressure).

    With several value-dim blocks every program needs G = dO S^T over all of Dv, so it
    recomputes it; only the v-block-0 program stores dq and dz.
    """
    pid_bh, pid_split, pid_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_splits = tl.num_programs(1)
    q_base = _head_base(q_ptr, pid_bh, H, sq_b, sq_h)
    do_base = _head_base(do_ptr, pid_bh, H, sg_b, sg_h)
    dq_base = _head_base(dq_ptr, pid_bh, H, sdq_b, sdq_h)
    fd = PARTS * D
    s_base = state_ptr + pid_bh.to(tl.int64) * (fd * DV + fd)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    z_a = _load_vector(s_base, fd, DV, 0, offs_d, D)
    if NUM_DV_BLOCKS == 1:
        s_a = _load_matrix(s_base, 0, offs_d, offs_dv, D, DV, DOT_DTYPE)
    if PARTS == 2:
        z_b = _load_vector(s_base, fd, DV, D, offs_d, D)
        if NUM_DV_BLOCKS == 1:
            s_b = _load_matrix(s_base, D, offs_d, offs_dv, D, DV, DOT_DTYPE)
    if ACCUMULATE:
        ds_a = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
        dz_a = tl.zeros([BLOCK_D], tl.float32)
        if PARTS == 2:
            ds_b = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
            dz_b = tl.zeros([BLOCK_D], tl.float32)
    else:
        scal_base = scal_ptr + pid_bh.to(tl.int64) * N
        bhn = tl.num_programs(0).to(tl.int64) * N
    dq_cols = tl.where(pid_v == 0, D, 0)  # only v-block 0 stores dq and dz
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        q_offs, q_mask = _tile_offsets(offs_n, offs_d, N, D, sq_n, sq_d)
        x = tl.load(q_base + q_offs, mask=q_mask, other=0.0).to(tl.float32)
        pa, pb = _features(x, offs_n < N, offs_d, D, EVEN_D, FEATURE)
        if NUM_DV_BLOCKS == 1:  # G = dO S^T, per part
            g_offs, g_mask = _tile_offsets(offs_n, offs_dv, N, DV, sg_n, sg_d)
            grad = tl.load(do_base + g_offs, mask=g_mask, other=0.0).to(DOT_DTYPE)
            g_a = tl.dot(grad, tl.trans(s_a), input_precision=PRECISION)
            if PARTS == 2:
                g_b = tl.dot(grad, tl.trans(s_b), input_precision=PRECISION)
        else:
            g_a = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            if PARTS == 2:
                g_b = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            for c in tl.static_range(NUM_DV_BLOCKS):
                offs_c = c * BLOCK_DV + tl.arange(0, BLOCK_DV)
                gc_offs, gc_mask = _tile_offsets(offs_n, offs_c, N, DV, sg_n, sg_d)
                grad_c = tl.load(do_base + gc_offs, mask=gc_mask, other=0.0).to(DOT_DTYPE)
                s_ac = _load_matrix(s_base, 0, offs_d, offs_c, D, DV, DOT_DTYPE)
                g_a = tl.dot(grad_c, tl.trans(s_ac), g_a, input_precision=PRECISION)
                if PARTS == 2:
                    s_bc = _load_matrix(s_base, D, offs_d, offs_c, D, DV, DOT_DTYPE)
                    g_b = tl.dot(grad_c, tl.trans(s_bc), g_b, input_precision=PRECISION)
            if ACCUMULATE:
                g_offs, g_mask = _tile_offsets(offs_n, offs_dv, N, DV, sg_n, sg_d)
                grad = tl.load(do_base + g_offs, mask=g_mask, other=0.0).to(DOT_DTYPE)
        den = tl.sum(pa * z_a[None, :], axis=1)
        phi_g = tl.sum(pa * g_a, axis=1)
        if PARTS == 2:
            den += tl.sum(pb * z_b[None, :], axis=1)
            phi_g += tl.sum(pb * g_b, axis=1)
        inv_den = 1.0 / (den + eps)
        d_den = -phi_g * inv_den * inv_den
        ga = g_a * inv_den[:, None] + d_den[:, None] * z_a[None, :]
        if PARTS == 2:
            gb = g_b * inv_den[:, None] + d_den[:, None] * z_b[None, :]
        else:
            gb = ga
        dq = _features_vjp(ga, gb, pa, pb, FEATURE)
        dq_offs, dq_mask = _tile_offsets(offs_n, offs_d, N, dq_cols, sdq_n, sdq_d)
        tl.store(dq_base + dq_offs, dq.to(dq_ptr.dtype.element_ty), mask=dq_mask)
        if ACCUMULATE:
            # dz by a column reduction: on the tensor cores, as in the state kernel, this pass was
            # 50% slower on H100 (register pressure), so it stays a plain sum here.
            dz_a += tl.sum(pa * d_den[:, None], axis=0)
            ds_a = tl.dot(tl.trans((pa * inv_den[:, None]).to(DOT_DTYPE)), grad, ds_a, input_precision=PRECISION)
            if PARTS == 2:
                dz_b += tl.sum(pb * d_den[:, None], axis=0)
                ds_b = tl.dot(tl.trans((pb * inv_den[:, None]).to(DOT_DTYPE)), grad, ds_b, input_precision=PRECISION)
        else:
            row_ok = offs_n < N
            tl.store(scal_base + offs_n, inv_den, mask=row_ok)
            tl.store(scal_base + bhn + offs_n, d_den, mask=row_ok)
    if ACCUMULATE:
        base = part_ptr + (pid_bh * n_splits + pid_split).to(tl.int64) * (fd * DV + fd)
        _store_part(base, 0, ds_a, dz_a, offs_d, offs_dv, D, DV, fd, dq_cols)
        if PARTS == 2:
            _store_part(base, D, ds_b, dz_b, offs_d, offs_dv, D, DV, fd, dq_cols)


@triton.jit
def _bwd_key_kernel(
    k_ptr, v_ptr, d_state_ptr, dk_ptr, dv_ptr,
    H, N, D, DV, tokens_per_split,
    sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
    sdk_b, sdk_h, sdk_n, sdk_d, sdv_b, sdv_h, sdv_n, sdv_d,
    FEATURE: tl.constexpr, PARTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, NUM_DV_BLOCKS: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Key side of the backward: dk = vjp_phi(V dS^T + dz), dv = phi(K) dS for one token chunk."""
    pid_bh, pid_split = tl.program_id(0), tl.program_id(1)
    k_base = _head_base(k_ptr, pid_bh, H, sk_b, sk_h)
    v_base = _head_base(v_ptr, pid_bh, H, sv_b, sv_h)
    dk_base = _head_base(dk_ptr, pid_bh, H, sdk_b, sdk_h)
    dv_base = _head_base(dv_ptr, pid_bh, H, sdv_b, sdv_h)
    fd = PARTS * D
    ds_base = d_state_ptr + pid_bh.to(tl.int64) * (fd * DV + fd)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    dz_a = _load_vector(ds_base, fd, DV, 0, offs_d, D)
    if NUM_DV_BLOCKS == 1:
        ds_a = _load_matrix(ds_base, 0, offs_d, offs_dv, D, DV, DOT_DTYPE)
    if PARTS == 2:
        dz_b = _load_vector(ds_base, fd, DV, D, offs_d, D)
        if NUM_DV_BLOCKS == 1:
            ds_b = _load_matrix(ds_base, D, offs_d, offs_dv, D, DV, DOT_DTYPE)
    start, end = _split_range(pid_split, tokens_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_offs, k_mask = _tile_offsets(offs_n, offs_d, N, D, sk_n, sk_d)
        x = tl.load(k_base + k_offs, mask=k_mask, other=0.0).to(tl.float32)
        pa, pb = _features(x, offs_n < N, offs_d, D, EVEN_D, FEATURE)
        pa_dot = pa.to(DOT_DTYPE)
        ga = tl.zeros([BLOCK_N, BLOCK_D], tl.float32) + dz_a[None, :]
        if PARTS == 2:
            pb_dot = pb.to(DOT_DTYPE)
            gb = tl.zeros([BLOCK_N, BLOCK_D], tl.float32) + dz_b[None, :]
        for c in tl.static_range(NUM_DV_BLOCKS):
            offs_c = c * BLOCK_DV + offs_dv
            if NUM_DV_BLOCKS == 1:
                ds_ac = ds_a
            else:
                ds_ac = _load_matrix(ds_base, 0, offs_d, offs_c, D, DV, DOT_DTYPE)
            v_offs, v_mask = _tile_offsets(offs_n, offs_c, N, DV, sv_n, sv_d)
            v = tl.load(v_base + v_offs, mask=v_mask, other=0.0).to(DOT_DTYPE)
            ga = tl.dot(v, tl.trans(ds_ac), ga, input_precision=PRECISION)  # V dS^T
            dv = tl.dot(pa_dot, ds_ac, input_precision=PRECISION)  # phi(K) dS
            if PARTS == 2:
                if NUM_DV_BLOCKS == 1:
                    ds_bc = ds_b
                else:
                    ds_bc = _load_matrix(ds_base, D, offs_d, offs_c, D, DV, DOT_DTYPE)
                gb = tl.dot(v, tl.trans(ds_bc), gb, input_precision=PRECISION)
                dv = tl.dot(pb_dot, ds_bc, dv, input_precision=PRECISION)
            dv_offs, dv_mask = _tile_offsets(offs_n, offs_c, N, DV, sdv_n, sdv_d)
            tl.store(dv_base + dv_offs, dv.to(dv_ptr.dtype.element_ty), mask=dv_mask)
        if PARTS == 2:  # fp32 features: the softmax pull-back subtracts nearly equal terms
            dk = _features_vjp(ga, gb, pa, pb, FEATURE)
        else:  # from the dot-dtype features, so the fp32 ones are dead early
            dk = _features_vjp(ga, ga, pa_dot, pa_dot, FEATURE)
        dk_offs, dk_mask = _tile_offsets(offs_n, offs_d, N, D, sdk_n, sdk_d)
        tl.store(dk_base + dk_offs, dk.to(dk_ptr.dtype.element_ty), mask=dk_mask)


# --------------------------------------------------------------------------- launch configuration


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # plain ints: triton.cdiv is a JIT function whose host call costs microseconds


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of one kernel.

    ``programs_per_sm`` sets how finely N is split; ``block_dv`` tiles the value dim
    (0: the widest tile that keeps an accumulated fp32 state part at <= 128 x 128
    elements, or 128 for kernels that only read the state). ``split`` (bwd_query only):
    1 = the query pass writes per-token scalars and a second state-kernel pass
    (config ``bwd_state``) accumulates dS, dz: two reads of q and dO instead of one,
    but no accumulators next to G in the query pass. ``maxnreg``: register cap per thread
    (0: the compiler's choice); 128 lets two 8-warp programs share an SM at the price of a
    few spilled registers. ``tc_norm`` (output pass of two-part maps only): 1 = normalise
    after the products, the row sums and phi(q).z on the tensor cores (``_output_kernel``).
    """

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int = 2
    block_dv: int = 0
    split: int = 0
    maxnreg: int = 0
    tc_norm: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> "KernelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# Untuned shapes (until tuned_configs.py has an entry). Elementwise maps: CUDA-graph sweeps on an
# H100 at the Wan-1.3B shape (bwd_state, new: no spills for sm_90); two-part maps (Hedgehog):
# configs that compile for sm_90 without register spills (tune_linear_attention.py --static);
# the output pass normalises on the tensor cores, which its 64-token wgmma tiles favour.
DEFAULT_CONFIGS: dict[str, dict[str, KernelConfig]] = {
    "elementwise": {
        "state": KernelConfig(block_n=64, num_warps=4, num_stages=3, programs_per_sm=2),
        "output": KernelConfig(block_n=64, num_warps=8, num_stages=2, programs_per_sm=2),
        "bwd_query": KernelConfig(block_n=64, num_warps=16, num_stages=3, programs_per_sm=2),
        "bwd_state": KernelConfig(block_n=64, num_warps=8, num_stages=2, programs_per_sm=2),
        "bwd_key": KernelConfig(block_n=64, num_warps=16, num_stages=3, programs_per_sm=2),
    },
    "two_part": {
        "state": KernelConfig(block_n=64, num_warps=8, num_stages=2, programs_per_sm=2, block_dv=64),
        "output": KernelConfig(block_n=64, num_warps=8, num_stages=2, programs_per_sm=2, tc_norm=1),
        "bwd_query": KernelConfig(block_n=32, num_warps=8, num_stages=2, programs_per_sm=2, split=1),
        "bwd_state": KernelConfig(block_n=64, num_warps=8, num_stages=2, programs_per_sm=2, block_dv=64),
        "bwd_key": KernelConfig(block_n=32, num_warps=8, num_stages=2, programs_per_sm=2),
    },
}
# fp32 operands or head dims over 128: correctness matters there, and wide tiles overflow shared memory.
SAFE_CONFIG = KernelConfig(block_n=32, num_warps=4, num_stages=1, programs_per_sm=2)


def table_key(feature_map: str, d: int, dv: int, layout: str) -> str:
    """Key of one tuned entry: ``"<feature_map>:<D>x<Dv>:<layout>"``, layout = q's memory order
    (a ``bhnd`` view of ``[B, N, H, D]`` memory, as diffusers' attention passes it, is ``bnhd``)."""
    return f"{feature_map}:{d}x{dv}:{layout}"


def _read_table(path: str | os.PathLike | None) -> dict[str, dict[str, KernelConfig]]:
    """The committed table, overlaid by a tuner JSON (``{"configs": {key: {kernel: fields}}}``) when given."""
    from lincompress.kernels.tuned_configs import TUNED_CONFIGS

    raw = {key: dict(entry) for key, entry in TUNED_CONFIGS.items()}
    if path:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{CONFIGS_ENV}={path}: cannot read a tuner JSON there ({type(exc).__name__}); "
                             "unset it or point it at benchmarks/tune_linear_attention.py's --json") from None
        for key, entry in data.get("configs", {}).items():
            raw.setdefault(key, {}).update(entry)
    return {key: {k: KernelConfig.from_dict(c) for k, c in entry.items() if k in KERNELS} for key, entry in raw.items()}


_TABLE: dict[str, dict[str, KernelConfig]] = _read_table(os.environ.get(CONFIGS_ENV))


def load_config_table(path: str | os.PathLike | None = None) -> None:
    """Re-read the config table (the committed one, plus ``path``'s tuner JSON); clears cached choices."""
    global _TABLE
    _TABLE = _read_table(path)
    _resolved_configs.cache_clear()
    _cached_plan.cache_clear()


@functools.lru_cache(maxsize=256)
def _resolved_configs(feature_map: str, d: int, dv: int, memory: str, exact_dot: bool) -> dict[str, KernelConfig]:
    """Per-kernel configs: the tuned entry for this map (else the one tuned for relu, for one-part
    maps), else the defaults; fp32 or head dims over 128 always take the safe small tiles."""
    if exact_dot or d > 128 or dv > 128:
        return {name: SAFE_CONFIG for name in KERNELS}
    parts = spec.FEATURE_MAPS[feature_map].expansion
    family = "two_part" if parts == 2 else "elementwise"
    chosen = dict(DEFAULT_CONFIGS[family])
    for name in ([feature_map] if parts == 2 else ["relu", feature_map]):
        for key in (table_key(name, d, dv, "bnhd" if memory == "bhnd" else "bhnd"), table_key(name, d, dv, memory)):
            chosen.update(_TABLE.get(key, {}))  # the other memory order first, so this one's entry wins
    return chosen


@dataclass(frozen=True)
class _Shapes:
    """Problem sizes in the kernels' (batch, head, token, feature) terms."""

    batch: int
    heads: int
    n_q: int
    n_kv: int
    d: int  # q/k input feature dim
    dv: int
    parts: int  # 2 for Hedgehog: the state has parts * d rows
    block_d: int

    @property
    def bh(self) -> int:
        return self.batch * self.heads

    @property
    def fd(self) -> int:
        return self.parts * self.d

    def block_dv(self, config: KernelConfig, accumulates: bool) -> int:
        widest = max(16, _next_pow2(self.dv))
        if config.block_dv:
            return min(widest, max(16, _next_pow2(config.block_dv)))
        if not accumulates:  # the state is a read-only operand (shared memory): up to 128 columns
            return min(widest, 128)
        # Keep the fp32 [D, Dv-block] accumulator parts at <= 128x128 elements so they stay in registers.
        return min(widest, max(16, 16384 // (self.parts * self.block_d)))


def _shapes_of(q_shape, k_shape, v_shape, feature_map: str, layout: str) -> _Shapes:
    token_axis = 2 if layout == "bhnd" else 1
    head_axis = 3 - token_axis
    d, dv = q_shape[3], v_shape[3]
    parts = spec.FEATURE_MAPS[feature_map].expansion
    return _Shapes(q_shape[0], q_shape[head_axis], q_shape[token_axis], k_shape[token_axis], d, dv, parts,
                   max(16, _next_pow2(d)))  # fmt: skip


def _ordered(strides: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """(batch, head, token, feature) strides, whatever the memory layout."""
    sb, s1, s2, sd = strides
    return (sb, s1, s2, sd) if layout == "bhnd" else (sb, s2, s1, sd)


def _strides(t: Tensor, layout: str) -> tuple[int, int, int, int]:
    return _ordered(t.stride(), layout)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter / other devices: a few programs per head keep the split path exercised


_SPLIT_COST = 0.01  # relative cost of one more split (its partial state, its reload of S)


@functools.lru_cache(maxsize=1024)  # host time per launch matters: these ops take well under 1 ms
def _split_count(other_programs: int, n_tiles: int, slots: int) -> int:
    """Splits per head that minimise (waves x work per program), with a small cost per split.

    Every program of a launch does the same work, so a launch lasts ceil(programs/slots)
    waves; 40 heads x 7 splits on 264 slots would take two waves for 1.06 waves of work.
    """
    candidates = range(1, max(1, min(n_tiles, 4 * _cdiv(slots, other_programs))) + 1)
    return min(candidates, key=lambda s: _cdiv(other_programs * s, slots) / s * (1 + _SPLIT_COST * s))


def _split(n_tokens: int, block_n: int, other_programs: int, config: KernelConfig, device: torch.device) -> tuple[int, int]:
    """(tokens per split, number of splits): whole tiles per split, balanced over the GPU's slots."""
    n_tiles = _cdiv(max(n_tokens, 1), block_n)
    splits = _split_count(other_programs, n_tiles, _num_sms(device) * config.programs_per_sm)
    tiles = _cdiv(n_tiles, splits)
    return tiles * block_n, _cdiv(n_tiles, tiles)


def _dot_dtype_of(dtypes: tuple[torch.dtype, ...]) -> tuple[tl.dtype, str]:
    """Tensor-core operand dtype: the inputs' half dtype if they share one, else exact fp32."""
    first = dtypes[0]
    if first in (torch.bfloat16, torch.float16) and all(d == first for d in dtypes):
        return _DOT_DTYPES[first], "tf32"  # precision flag unused for half operands
    return tl.float32, "ieee"


def supports(q: Tensor, k: Tensor, v: Tensor, feature_map: str) -> bool:
    """Whether the fused kernels handle these inputs (else callers use the reference)."""
    return (
        feature_map in FEATURE_IDS
        and max(q.shape[-1], v.shape[-1]) <= spec.MAX_KERNEL_HEAD_DIM
        and q.dtype in _DOT_DTYPES and k.dtype in _DOT_DTYPES and v.dtype in _DOT_DTYPES
    )  # fmt: skip


def _check(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str) -> None:
    spec.check_inputs(q, k, v, feature_map, eps, layout)
    if not supports(q, k, v, feature_map):
        raise ValueError(
            f"linear_attention_triton: needs a feature map in {tuple(FEATURE_IDS)}, head dims <= "
            f"{spec.MAX_KERNEL_HEAD_DIM} and fp32/fp16/bf16 inputs"
        )


# --------------------------------------------------------------------------- launchers


_ACCUMULATES = {"state": True, "output": False, "bwd_state": True, "bwd_key": False}


@dataclass(frozen=True)
class _Launch:
    """One kernel's grid dims besides (heads, splits), its constants and its config."""

    config: KernelConfig
    dv_programs: int  # programs along the value dim (1 where a program loops over all value blocks)
    constants: dict


@dataclass(frozen=True)
class _Plan:
    """Everything the launches of one call need besides the tensors (cached per shapes/strides/dtypes)."""

    shapes: _Shapes
    layout: str
    configs: Mapping[str, KernelConfig]
    launches: Mapping[str, _Launch]
    split_query: bool


def _build_plan(shapes: _Shapes, feature: int, layout: str, dot: tuple[tl.dtype, str],
                configs: Mapping[str, KernelConfig]) -> _Plan:  # fmt: skip
    split_query = bool(configs["bwd_query"].split)
    launches = {}
    for kernel, cfg in configs.items():
        accumulates = _ACCUMULATES[kernel] if kernel != "bwd_query" else not split_query
        block_dv = shapes.block_dv(cfg, accumulates)
        constants = dict(FEATURE=feature, PARTS=shapes.parts, BLOCK_N=cfg.block_n, BLOCK_D=shapes.block_d,
                         EVEN_D=shapes.d == shapes.block_d,
                         BLOCK_DV=block_dv, DOT_DTYPE=dot[0], PRECISION=dot[1],
                         num_warps=cfg.num_warps, num_stages=cfg.num_stages)  # fmt: skip
        if cfg.maxnreg:
            constants["maxnreg"] = cfg.maxnreg
        if kernel in ("state", "bwd_state"):
            constants["GRAD"] = kernel == "bwd_state"
        else:
            constants["NUM_DV_BLOCKS"] = _cdiv(shapes.dv, block_dv)
        if kernel == "output":
            constants["TC_NORM"] = bool(cfg.tc_norm) and shapes.parts == 2
        if kernel == "bwd_query":
            constants["ACCUMULATE"] = not split_query
        loops_over_dv = kernel in ("output", "bwd_key") or (kernel == "bwd_query" and split_query)
        launches[kernel] = _Launch(cfg, 1 if loops_over_dv else _cdiv(shapes.dv, block_dv), constants)
    return _Plan(shapes, layout, configs, launches, split_query)


@functools.lru_cache(maxsize=512)  # a model calls the op with a few shapes, many times: plan once per shape
def _cached_plan(q_shape, q_strides, k_shape, v_shape, dtypes, feature_map: str, layout: str) -> _Plan:
    shapes = _shapes_of(q_shape, k_shape, v_shape, feature_map, layout)
    dot = _dot_dtype_of(dtypes)
    _, head_stride, token_stride, _ = _ordered(q_strides, layout)
    memory = "bnhd" if token_stride > head_stride else "bhnd"  # tuned by memory order, whatever the view says
    configs = _resolved_configs(feature_map, shapes.d, shapes.dv, memory, dot[1] == "ieee")
    return _build_plan(shapes, FEATURE_IDS[feature_map], layout, dot, configs)


def make_plan(q: Tensor, k: Tensor, v: Tensor, feature_map: str, layout: str,
              configs: Mapping[str, KernelConfig] | None = None) -> _Plan:  # fmt: skip
    """Sizes, constants and launch configs of one call (``configs`` overrides per kernel, for tuning)."""
    plan = _cached_plan(tuple(q.shape), q.stride(), tuple(k.shape), tuple(v.shape), (q.dtype, k.dtype, v.dtype),
                        feature_map, layout)  # fmt: skip
    if not configs:
        return plan
    return _build_plan(plan.shapes, FEATURE_IDS[feature_map], layout, _dot_dtype_of((q.dtype, k.dtype, v.dtype)),
                       {**plan.configs, **configs})  # fmt: skip


def _new_partials(like: Tensor, shapes: _Shapes, splits: int) -> Tensor:
    """fp32 partial states, one (matrix, vector) pair per head and split, packed per row."""
    return like.new_empty((shapes.bh, splits, shapes.fd * shapes.dv + shapes.fd), dtype=torch.float32)


def _reduce(parts: Tensor) -> Tensor:
    return parts.sum(dim=1) if parts.shape[1] > 1 else parts[:, 0]  # deterministic, unlike atomics


def _launch_reduction(k: Tensor, v: Tensor, plan: _Plan, kernel: str, scalars: Tensor | None) -> Tensor:
    s, launch = plan.shapes, plan.launches[kernel]
    n = k.shape[2 if plan.layout == "bhnd" else 1]
    tokens, splits = _split(n, launch.config.block_n, s.bh * launch.dv_programs, launch.config, k.device)
    parts = _new_partials(k, s, splits)
    _state_kernel[(s.bh, splits, launch.dv_programs)](
        k, v, parts, parts if scalars is None else scalars, s.heads, n,
        s.d, s.dv, tokens, *_strides(k, plan.layout), *_strides(v, plan.layout), **launch.constants,
    )  # fmt: skip
    return _reduce(parts)


def launch_state(k: Tensor, v: Tensor, plan: _Plan) -> Tensor:
    """Pass 1 + reduction: per head (S = phi(K)^T V, z = sum phi(K)) packed as fp32 [BH, FD*Dv + FD]."""
    return _launch_reduction(k, v, plan, "state", None)


@functools.lru_cache(maxsize=64)
def _z_scale(n_kv: int) -> float:
    """2**-ceil(log2 n_kv): z * it <= 1 exactly (each key adds at most 1 to every entry of z)."""
    return 2.0 ** -max(0, n_kv - 1).bit_length()


def launch_output(q: Tensor, state: Tensor, out: Tensor, eps: float, plan: _Plan) -> Tensor:
    """Pass 2: o = phi(Q) S / (phi(Q) z + eps) into ``out``."""
    s, launch = plan.shapes, plan.launches["output"]
    tokens, splits = _split(s.n_q, launch.config.block_n, s.bh, launch.config, q.device)
    _output_kernel[(s.bh, splits)](
        q, state, out, s.heads, s.n_q, s.d, s.dv, tokens, eps, _z_scale(s.n_kv),
        *_strides(q, plan.layout), *_strides(out, plan.layout), **launch.constants,
    )  # fmt: skip
    return out


def launch_bwd_query(grad_out: Tensor, q: Tensor, state: Tensor, eps: float, plan: _Plan) -> tuple[Tensor, Tensor]:
    """Pass 3 (+ the dS pass when split) + reduction: dq, and (dS = (phi(Q)/den)^T dO, dz = phi(Q)^T dDen) in fp32."""
    s, launch = plan.shapes, plan.launches["bwd_query"]
    nvb = launch.dv_programs
    tokens, splits = _split(s.n_q, launch.config.block_n, s.bh * nvb, launch.config, q.device)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if plan.split_query:
        scalars = torch.empty((2, s.bh, s.n_q), dtype=torch.float32, device=q.device)  # inv_den, dDen per token
        parts = scalars
    else:
        parts = _new_partials(q, s, splits)
        scalars = parts
    _bwd_query_kernel[(s.bh, splits, nvb)](
        q, grad_out, state, dq, parts, scalars, s.heads, s.n_q, s.d, s.dv, tokens, eps,
        *_strides(q, plan.layout), *_strides(grad_out, plan.layout), *_strides(dq, plan.layout),
        **launch.constants,
    )  # fmt: skip
    if plan.split_query:
        return dq, _launch_reduction(q, grad_out, plan, "bwd_state", scalars)
    return dq, _reduce(parts)


def launch_bwd_key(k: Tensor, v: Tensor, d_state: Tensor, plan: _Plan) -> tuple[Tensor, Tensor]:
    """Pass 4: dk = vjp_phi(V dS^T + dz), dv = phi(K) dS."""
    s, launch = plan.shapes, plan.launches["bwd_key"]
    tokens, splits = _split(s.n_kv, launch.config.block_n, s.bh, launch.config, k.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _bwd_key_kernel[(s.bh, splits)](
        k, v, d_state, dk, dv, s.heads, s.n_kv, s.d, s.dv, tokens,
        *_strides(k, plan.layout), *_strides(v, plan.layout), *_strides(dk, plan.layout), *_strides(dv, plan.layout),
        **launch.constants,
    )  # fmt: skip
    return dk, dv


def forward(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str,
            configs: Mapping[str, KernelConfig] | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """(out, state) without input checks (the op's backend; callers checked ``supports``)."""
    plan = make_plan(q, k, v, feature_map, layout, configs)
    out = v.new_empty((q.shape[0], q.shape[1], q.shape[2], plan.shapes.dv))
    if out.numel() == 0:
        return out, None
    state = launch_state(k, v, plan)
    return launch_output(q, state, out, float(eps), plan), state


def backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, state: Tensor | None, feature_map: str, eps: float,
             layout: str, configs: Mapping[str, KernelConfig] | None = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) without input checks; ``state`` from ``forward`` (None: recomputed)."""
    if q.numel() == 0 or k.numel() == 0:  # no tokens on one side: every gradient is zero
        return tuple(torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    plan = make_plan(q, k, v, feature_map, layout, configs)
    if state is None:
        state = launch_state(k, v, plan)
    dq, d_state = launch_bwd_query(grad_out, q, state, float(eps), plan)
    dk, dv = launch_bwd_key(k, v, d_state, plan)
    return dq, dk, dv


def linear_attention_forward_triton(
    q: Tensor, k: Tensor, v: Tensor, feature_map: str = spec.DEFAULT_FEATURE_MAP, eps: float = spec.DEFAULT_EPS,
    layout: str = spec.DEFAULT_LAYOUT, configs: Mapping[str, KernelConfig] | None = None,
) -> Tensor:  # fmt: skip
    """Forward of ``lincompress::linear_attention`` with the fused kernels; out in v's layout/dtype."""
    _check(q, k, v, feature_map, eps, layout)
    return forward(q, k, v, feature_map, eps, layout, configs)[0]


def linear_attention_backward_triton(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, feature_map: str = spec.DEFAULT_FEATURE_MAP,
    eps: float = spec.DEFAULT_EPS, layout: str = spec.DEFAULT_LAYOUT, configs: Mapping[str, KernelConfig] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Backward of ``lincompress::linear_attention``: (dq, dk, dv), contiguous, inputs' dtypes."""
    _check(q, k, v, feature_map, eps, layout)
    return backward(grad_out, q, k, v, None, feature_map, eps, layout, configs)
