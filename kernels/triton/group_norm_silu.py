"""GroupNorm + SiLU forward and backward, Triton  (reference.group_norm_silu / _backward).

x is read as (N, C, HW) through strides, so NCHW-contiguous (sC = HW, sHW = 1) and channels_last
(sC = 1, sHW = C) are both read in place. A group (n, g) is the (Cg, HW) block of channels
[g Cg, (g + 1) Cg); it is split along HW into S chunks, one program each (grid (N G, S)), so
small batches still fill the GPU. Every program walks its chunk in (BLOCK_HW, BLOCK_C) tiles.

forward   1. _stats_kernel:    per-chunk (count, mean, M2), a Welford update per tile lane, the
                               lanes combined with Chan et al.'s formula -> partial (N G, S, 3)
          2. _forward_kernel:  combines the S partials of its group in a fixed order (so every
                               program gets the same mean/rstd), normalises, affine, SiLU, stores;
                               the chunk-0 program writes mean, rstd (N G,) for the backward.
backward  1. _backward_partials_kernel: recomputes x_hat and z = w x_hat + b from x (nothing but
                               mean/rstd is saved), dz = dy silu'(z), and per-(n, c, chunk) sums
                               of dz, dz x_hat, x_hat -> partial (3, N G, S, Cg)
          2. group_norm_silu_reduce.backward_stage2: torch sums over chunks and samples
                               (deterministic; (N, C)-sized): dweight, dbias, the per-group
                               means of dx_hat and dx_hat x_hat, dshift
          3. _backward_dx_kernel: dx = rstd (w dz - mean(dx_hat) - x_hat mean(dx_hat x_hat))
No atomics: results are bitwise reproducible for a given shape and device.
Statistics and all arithmetic are float32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..group_norm_silu_reduce import backward_stage2
from ..layout import dense_layout, empty_like_layout, same_layout_or_copy
from . import record_decoration
from .launch import interpreted, next_power_of_2, target_programs

record_decoration()

__all__ = ["forward", "backward", "launch_config"]

GPU_TILE = 2048           # elements per tile on the GPU
GPU_MAX_BLOCK_C = 64
NUM_WARPS = 8             # every kernel: 8 elements per thread of a 2048 tile (ptxas: 4 warps, 16
                          # per thread, needed 168-244 registers on sm_90 and spilled in _stats_kernel)
STATS_WARPS = NUM_WARPS
INTERPRETER_TILE = 1 << 15


@triton.jit
def _tile(x_ptr, shift_ptr, n, ch, c_mask, hw, hw_end, sN, sC, sHW, shN, shC,
          HAS_SHIFT: tl.constexpr):
    """Load the (BLOCK_HW, BLOCK_C) tile of x (+ shift) as float32, with its offsets and mask."""
    mask = (hw < hw_end)[:, None] & c_mask[None, :]
    offs = n.to(tl.int64) * sN + ch.to(tl.int64)[None, :] * sC + hw.to(tl.int64)[:, None] * sHW
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + n * shN + ch * shC, mask=c_mask, other=0.0).to(tl.float32)
        v = v + shift[None, :]
    return v, offs, mask


@triton.jit
def _stats_kernel(x_ptr,        # (N, C, HW) through strides sN, sC, sHW
                  shift_ptr,    # (N, C) through strides shN, shC (only with HAS_SHIFT)
                  partial_ptr,  # (N G, S, 3) float32 out: count, mean, M2 of each chunk
                  G, Cg, HW, HW_PER, S, sN, sC, sHW, shN, shC,
                  HAS_SHIFT: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    ng = tl.program_id(0)
    s = tl.program_id(1)
    n = ng // G
    g = ng - n * G
    hw_start = s * HW_PER
    hw_end = tl.minimum(hw_start + HW_PER, HW)
    count = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for c_start in range(0, Cg, BLOCK_C):
        cc = c_start + tl.arange(0, BLOCK_C)
        c_mask = cc < Cg
        for hw_tile in range(hw_start, hw_end, BLOCK_HW):
            hw = hw_tile + tl.arange(0, BLOCK_HW)
            v, offs, mask = _tile(x_ptr, shift_ptr, n, g * Cg + cc, c_mask, hw, hw_end,
                                  sN, sC, sHW, shN, shC, HAS_SHIFT)
            # Welford, one lane per tile position
            new_count = count + mask.to(tl.float32)
            delta = v - mean
            mean = mean + tl.where(mask, delta / tl.maximum(new_count, 1.0), 0.0)
            m2 = m2 + tl.where(mask, delta * (v - mean), 0.0)
            count = new_count
    # Chan et al.: combine the lanes
    total = tl.sum(tl.sum(count, axis=1), axis=0)
    chunk_mean = tl.sum(tl.sum(count * mean, axis=1), axis=0) / tl.maximum(total, 1.0)
    d = mean - chunk_mean
    chunk_m2 = tl.sum(tl.sum(m2 + count * d * d, axis=1), axis=0)
    out = partial_ptr + (ng * S + s) * 3
    tl.store(out, total)
    tl.store(out + 1, chunk_mean)
    tl.store(out + 2, chunk_m2)


@triton.jit
def _forward_kernel(x_ptr,        # (N, C, HW) through strides sN, sC, sHW
                    y_ptr,        # (N, C, HW) out, same strides as x
                    weight_ptr,   # (C,) contiguous (only with HAS_WEIGHT)
                    bias_ptr,     # (C,) contiguous (only with HAS_BIAS)
                    shift_ptr,    # (N, C) through strides shN, shC (only with HAS_SHIFT)
                    partial_ptr,  # (N G, S, 3) float32 from _stats_kernel
                    mean_ptr,     # (N G,) float32 out
                    rstd_ptr,     # (N G,) float32 out
                    eps, G, Cg, HW, HW_PER, S, sN, sC, sHW, shN, shC,
                    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr,
                    ACTIVATION: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_HW: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    ng = tl.program_id(0)
    s = tl.program_id(1)
    n = ng // G
    g = ng - n * G
    # stage 2 of the reduction: the S chunk statistics of this group, in a fixed order
    ks = tl.arange(0, BLOCK_S)
    k_mask = ks < S
    part = partial_ptr + (ng * S + ks) * 3
    count = tl.load(part, mask=k_mask, other=0.0)
    chunk_mean = tl.load(part + 1, mask=k_mask, other=0.0)
    chunk_m2 = tl.load(part + 2, mask=k_mask, other=0.0)
    total = tl.sum(count, axis=0)
    mean = tl.sum(count * chunk_mean, axis=0) / total
    d = chunk_mean - mean
    var = (tl.sum(chunk_m2, axis=0) + tl.sum(count * d * d, axis=0)) / total  # biased variance
    rstd = 1.0 / tl.sqrt(var + eps)
    if s == 0:
        tl.store(mean_ptr + ng, mean)
        tl.store(rstd_ptr + ng, rstd)
    hw_start = s * HW_PER
    hw_end = tl.minimum(hw_start + HW_PER, HW)
    for c_start in range(0, Cg, BLOCK_C):
        cc = c_start + tl.arange(0, BLOCK_C)
        c_mask = cc < Cg
        ch = g * Cg + cc
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + ch, mask=c_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            b = tl.load(bias_ptr + ch, mask=c_mask, other=0.0).to(tl.float32)
        for hw_tile in range(hw_start, hw_end, BLOCK_HW):
            hw = hw_tile + tl.arange(0, BLOCK_HW)
            v, offs, mask = _tile(x_ptr, shift_ptr, n, ch, c_mask, hw, hw_end,
                                  sN, sC, sHW, shN, shC, HAS_SHIFT)
            z = (v - mean) * rstd
            if HAS_WEIGHT:
                z = z * w[None, :]
            if HAS_BIAS:
                z = z + b[None, :]
            if ACTIVATION:
                z = z * tl.sigmoid(z)
            tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_tile(dy_ptr, x_ptr, weight_ptr, bias_ptr, shift_ptr, mean, rstd, n, ch, c_mask, hw,
                   hw_end, sN, sC, sHW, shN, shC, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_SHIFT: tl.constexpr, ACTIVATION: tl.constexpr):
    """x_hat and dz = dL/dz (z = w x_hat + b, before SiLU) of one tile, zero outside the mask."""
    v, offs, mask = _tile(x_ptr, shift_ptr, n, ch, c_mask, hw, hw_end, sN, sC, sHW, shN, shC, HAS_SHIFT)
    x_hat = tl.where(mask, (v - mean) * rstd, 0.0)
    dz = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION:
        z = x_hat
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + ch, mask=c_mask, other=0.0).to(tl.float32)
            z = z * w[None, :]
        if HAS_BIAS:
            b = tl.load(bias_ptr + ch, mask=c_mask, other=0.0).to(tl.float32)
            z = z + b[None, :]
        sig = tl.sigmoid(z)
        dz = dz * sig * (1.0 + z * (1.0 - sig))  # silu'(z) = s (1 + z (1 - s))
    return x_hat, tl.where(mask, dz, 0.0), offs, mask


@triton.jit
def _backward_partials_kernel(dy_ptr, x_ptr, weight_ptr, bias_ptr, shift_ptr,
                              mean_ptr, rstd_ptr,   # (N G,) float32 from the forward
                              partial_ptr,          # (3, N G, S, Cg) float32 out: sums of dz, dz x_hat, x_hat
                              plane, G, Cg, HW, HW_PER, S, sN, sC, sHW, shN, shC,
                              HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                              HAS_SHIFT: tl.constexpr, ACTIVATION: tl.constexpr,
                              NEED_X_HAT_SUM: tl.constexpr, BLOCK_HW: tl.constexpr,
                              BLOCK_C: tl.constexpr):
    ng = tl.program_id(0)
    s = tl.program_id(1)
    n = ng // G
    g = ng - n * G
    mean = tl.load(mean_ptr + ng)
    rstd = tl.load(rstd_ptr + ng)
    hw_start = s * HW_PER
    hw_end = tl.minimum(hw_start + HW_PER, HW)
    for c_start in range(0, Cg, BLOCK_C):
        cc = c_start + tl.arange(0, BLOCK_C)
        c_mask = cc < Cg
        ch = g * Cg + cc
        sum_dz = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        sum_dz_x_hat = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        sum_x_hat = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        for hw_tile in range(hw_start, hw_end, BLOCK_HW):
            hw = hw_tile + tl.arange(0, BLOCK_HW)
            x_hat, dz, offs, mask = _backward_tile(dy_ptr, x_ptr, weight_ptr, bias_ptr, shift_ptr,
                                                   mean, rstd, n, ch, c_mask, hw, hw_end, sN, sC,
                                                   sHW, shN, shC, HAS_WEIGHT, HAS_BIAS, HAS_SHIFT,
                                                   ACTIVATION)
            sum_dz += dz
            sum_dz_x_hat += dz * x_hat
            if NEED_X_HAT_SUM:
                sum_x_hat += x_hat
        out = partial_ptr + (ng * S + s) * Cg + cc
        tl.store(out, tl.sum(sum_dz, axis=0), mask=c_mask)
        tl.store(out + plane, tl.sum(sum_dz_x_hat, axis=0), mask=c_mask)
        if NEED_X_HAT_SUM:
            tl.store(out + 2 * plane, tl.sum(sum_x_hat, axis=0), mask=c_mask)


@triton.jit
def _backward_dx_kernel(dy_ptr, x_ptr, dx_ptr,   # dx: (N, C, HW) out, same strides as x
                        weight_ptr, bias_ptr, shift_ptr, mean_ptr, rstd_ptr,
                        mean_dx_hat_ptr,         # (N G,) float32: mean over the group of dx_hat
                        mean_dx_hat_x_hat_ptr,   # (N G,) float32: mean of dx_hat x_hat
                        G, Cg, HW, HW_PER, sN, sC, sHW, shN, shC,
                        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr,
                        ACTIVATION: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    ng = tl.program_id(0)
    s = tl.program_id(1)
    n = ng // G
    g = ng - n * G
    mean = tl.load(mean_ptr + ng)
    rstd = tl.load(rstd_ptr + ng)
    mean_dx_hat = tl.load(mean_dx_hat_ptr + ng)
    mean_dx_hat_x_hat = tl.load(mean_dx_hat_x_hat_ptr + ng)
    hw_start = s * HW_PER
    hw_end = tl.minimum(hw_start + HW_PER, HW)
    for c_start in range(0, Cg, BLOCK_C):
        cc = c_start + tl.arange(0, BLOCK_C)
        c_mask = cc < Cg
        ch = g * Cg + cc
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + ch, mask=c_mask, other=0.0).to(tl.float32)
        for hw_tile in range(hw_start, hw_end, BLOCK_HW):
            hw = hw_tile + tl.arange(0, BLOCK_HW)
            x_hat, dz, offs, mask = _backward_tile(dy_ptr, x_ptr, weight_ptr, bias_ptr, shift_ptr,
                                                   mean, rstd, n, ch, c_mask, hw, hw_end, sN, sC,
                                                   sHW, shN, shC, HAS_WEIGHT, HAS_BIAS, HAS_SHIFT,
                                                   ACTIVATION)
            dx_hat = dz
            if HAS_WEIGHT:
                dx_hat = dz * w[None, :]
            dx = rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers

def _view_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """(HW, sN, sC, sHW) of x read as (N, C, HW) in `layout`."""
    C = x.shape[1]
    HW = x[0, 0].numel() if x.shape[0] and C else 1
    HW = max(HW, 1)
    if layout == "channels_last":
        return HW, C * HW, 1, C
    return HW, C * HW, HW, 1


def launch_config(N: int, G: int, Cg: int, HW: int, device: torch.device, *,
                  splits: int | None = None, block_hw: int | None = None,
                  block_c: int | None = None) -> tuple[int, int, int, int]:
    """(S, HW_PER, BLOCK_HW, BLOCK_C): chunks per group and tile sizes.

    S is chosen so that N G S programs fill the device (4 per SM), in whole tiles; the keyword
    overrides exist for tests (several chunks and tiles on tiny shapes).
    """
    tile = INTERPRETER_TILE if interpreted() else GPU_TILE
    max_block_c = tile if interpreted() else GPU_MAX_BLOCK_C
    if block_c is None:
        block_c = min(next_power_of_2(Cg), max_block_c)
    if block_hw is None:
        block_hw = max(1, min(next_power_of_2(HW), tile // block_c))
    tiles = triton.cdiv(HW, block_hw)
    if splits is None:
        splits = triton.cdiv(target_programs(device), max(N * G, 1))
    splits = max(1, min(int(splits), tiles))
    hw_per = triton.cdiv(tiles, splits) * block_hw
    return triton.cdiv(HW, hw_per), hw_per, block_hw, block_c


def _prepare(x, shift):
    layout = dense_layout(x) or "contiguous"
    x = same_layout_or_copy(x, layout)
    shN, shC = (shift.stride(0), shift.stride(1)) if shift is not None else (0, 0)
    return x, layout, shN, shC


def forward(x, weight, bias, shift, groups: int, eps: float, activation: bool, **config):
    """(y, mean, rstd): y like x (dtype, layout), mean/rstd (N * groups,) float32."""
    x, layout, shN, shC = _prepare(x, shift)
    N, C = x.shape[:2]
    G, Cg = groups, C // groups
    HW, sN, sC, sHW = _view_strides(x, layout)
    S, hw_per, block_hw, block_c = launch_config(N, G, Cg, HW, x.device, **config)
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    y = empty_like_layout(x, layout)
    partial = torch.empty((N * G, S, 3), dtype=torch.float32, device=x.device)
    mean = torch.empty((N * G,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((N * G,), dtype=torch.float32, device=x.device)
    num_warps = NUM_WARPS
    grid = (N * G, S)
    _stats_kernel[grid](x, shift if shift is not None else x, partial, G, Cg, HW, hw_per, S,
                        sN, sC, sHW, shN, shC, HAS_SHIFT=shift is not None,
                        BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=STATS_WARPS)
    _forward_kernel[grid](x, y, weight if weight is not None else x, bias if bias is not None else x,
                          shift if shift is not None else x, partial, mean, rstd, float(eps),
                          G, Cg, HW, hw_per, S, sN, sC, sHW, shN, shC,
                          HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                          HAS_SHIFT=shift is not None, ACTIVATION=activation,
                          BLOCK_S=next_power_of_2(S), BLOCK_HW=block_hw, BLOCK_C=block_c,
                          num_warps=num_warps)
    return y, mean, rstd


def backward(dy, x, weight, bias, shift, mean, rstd, groups: int, activation: bool, needs, **config):
    """(dx, dweight, dbias, dshift), each None where `needs` (4 bools) says it is not wanted."""
    x, layout, shN, shC = _prepare(x, shift)
    dy = same_layout_or_copy(dy, layout)
    N, C = x.shape[:2]
    G, Cg = groups, C // groups
    HW, sN, sC, sHW = _view_strides(x, layout)
    S, hw_per, block_hw, block_c = launch_config(N, G, Cg, HW, x.device, **config)
    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    need_dx, need_dweight, need_dbias, need_dshift = (bool(v) for v in needs)
    need_dshift = need_dshift and shift is not None
    plane = N * G * S * Cg
    partial = torch.empty((3, N * G, S, Cg), dtype=torch.float32, device=x.device)
    grid = (N * G, S)
    common = dict(HAS_WEIGHT=w is not None, HAS_BIAS=b is not None, HAS_SHIFT=shift is not None,
                  ACTIVATION=activation, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=NUM_WARPS)
    _backward_partials_kernel[grid](dy, x, w if w is not None else x, b if b is not None else x,
                                    shift if shift is not None else x, mean, rstd, partial, plane,
                                    G, Cg, HW, hw_per, S, sN, sC, sHW, shN, shC,
                                    NEED_X_HAT_SUM=need_dshift, **common)
    # stage 2: deterministic sums over chunks (and samples) of small (N, C)-sized tensors
    mean_dx_hat, mean_dx_hat_x_hat, dweight, dbias, dshift = backward_stage2(
        partial, w, b, shift, rstd, N, G, Cg, HW, need_dweight, need_dbias, need_dshift)
    dx = None
    if need_dx:
        dx = empty_like_layout(x, layout)
        _backward_dx_kernel[grid](dy, x, dx, w if w is not None else x, b if b is not None else x,
                                  shift if shift is not None else x, mean, rstd, mean_dx_hat,
                                  mean_dx_hat_x_hat, G, Cg, HW, hw_per, sN, sC, sHW, shN, shC,
                                  **common)
    return dx, dweight, dbias, dshift
