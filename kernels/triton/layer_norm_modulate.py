"""LayerNorm + adaLN modulation forward and backward, Triton  (reference.layer_norm_modulate / _backward).

x is read as (N, L, D) through its (N, L) strides with a contiguous last dim (the dispatcher
copies otherwise); shift and scale are float32 (N, D) through their strides. One token row
(n, l) is one program holding the whole row (BLOCK_D = next power of 2 >= D).

forward   _forward_kernel:      mean, centred variance (two passes over the registers), rstd,
                                y = x_hat (1 + scale[n]) + shift[n]; mean, rstd (N L,) out
backward  _backward_dx_kernel:  x_hat recomputed from x, g = dy (1 + scale[n]),
                                dx = rstd (g - mean_D(g) - x_hat mean_D(g x_hat))
          _backward_modulation_kernel: one program per (n, feature tile) walks the L tokens in
                                order: dshift = sum_L dy, dscale = sum_L dy x_hat (no atomics)
All arithmetic float32 whatever the storage dtype; results bitwise reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import record_decoration
from .launch import interpreted, next_power_of_2

record_decoration()

__all__ = ["forward", "backward", "launch_config"]

NUM_WARPS = 4
GPU_TILE = 4096   # (BLOCK_L, BLOCK_D) tile of the modulation-gradient kernel on the GPU


@triton.jit
def _forward_kernel(x_ptr,       # (N, L, D) through strides sN, sL (last dim contiguous)
                    shift_ptr,   # (N, D) float32 through strides shN, shD
                    scale_ptr,   # (N, D) float32 through strides scN, scD
                    y_ptr,       # (N, L, D) contiguous out, x's dtype
                    mean_ptr,    # (N L,) float32 out
                    rstd_ptr,    # (N L,) float32 out
                    L, D, sN, sL, shN, shD, scN, scD, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    n = row // L
    l = row - n * L
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    x = tl.load(x_ptr + n.to(tl.int64) * sN + l.to(tl.int64) * sL + d, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    centred = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=0) / D          # biased, as the reference
    rstd = 1.0 / tl.sqrt(var + eps)
    shift = tl.load(shift_ptr + n * shN + d * shD, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + n * scN + d * scD, mask=mask, other=0.0)
    y = centred * rstd * (1.0 + scale) + shift
    tl.store(y_ptr + row.to(tl.int64) * D + d, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_dx_kernel(dy_ptr,     # (N, L, D) contiguous
                        x_ptr,      # (N, L, D) through strides sN, sL
                        scale_ptr,  # (N, D) float32 through strides scN, scD
                        mean_ptr, rstd_ptr,   # (N L,) float32 from the forward
                        dx_ptr,     # (N, L, D) contiguous out, x's dtype
                        L, D, sN, sL, scN, scD, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    n = row // L
    l = row - n * L
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    x = tl.load(x_ptr + n.to(tl.int64) * sN + l.to(tl.int64) * sL + d, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row.to(tl.int64) * D + d, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    scale = tl.load(scale_ptr + n * scN + d * scD, mask=mask, other=0.0)
    x_hat = tl.where(mask, (x - mean) * rstd, 0.0)
    g = dy * (1.0 + scale)
    mean_g = tl.sum(g, axis=0) / D
    mean_gx = tl.sum(g * x_hat, axis=0) / D
    dx = rstd * (g - mean_g - x_hat * mean_gx)
    tl.store(dx_ptr + row.to(tl.int64) * D + d, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_modulation_kernel(dy_ptr,    # (N, L, D) contiguous
                                x_ptr,     # (N, L, D) through strides sN, sL
                                mean_ptr, rstd_ptr,   # (N L,) float32
                                dshift_ptr,  # (N, D) float32 out
                                dscale_ptr,  # (N, D) float32 out
                                L, D, sN, sL, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    acc_shift = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    acc_scale = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for l_start in range(0, L, BLOCK_L):
        l = l_start + tl.arange(0, BLOCK_L)
        l_mask = l < L
        mask = l_mask[:, None] & d_mask[None, :]
        rows = n * L + l
        x = tl.load(x_ptr + n.to(tl.int64) * sN + l.to(tl.int64)[:, None] * sL + d[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows.to(tl.int64)[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=l_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=l_mask, other=0.0)
        x_hat = (x - mean[:, None]) * rstd[:, None]
        acc_shift += dy
        acc_scale += tl.where(mask, dy * x_hat, 0.0)
    tl.store(dshift_ptr + n * D + d, tl.sum(acc_shift, axis=0), mask=d_mask)
    tl.store(dscale_ptr + n * D + d, tl.sum(acc_scale, axis=0), mask=d_mask)


def launch_config(L: int, D: int) -> dict:
    """BLOCK_D of the row kernels and (BLOCK_L, BLOCK_D) of the modulation-gradient kernel."""
    row_block = next_power_of_2(D)
    if interpreted():
        return {"BLOCK_D": row_block, "MOD_BLOCK_L": next_power_of_2(L), "MOD_BLOCK_D": row_block}
    mod_d = min(row_block, 128)
    return {"BLOCK_D": row_block, "MOD_BLOCK_L": max(1, min(next_power_of_2(L), GPU_TILE // mod_d)),
            "MOD_BLOCK_D": mod_d}


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()   # the one copy: a strided last dim


def forward(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float):
    """x (N, L, D), shift/scale (N, D) float32 -> y (N, L, D) contiguous, mean, rstd (N L,) float32."""
    x = _rows(x)
    n, length, d = x.shape
    y = torch.empty((n, length, d), device=x.device, dtype=x.dtype)
    mean = torch.empty(n * length, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    cfg = launch_config(length, d)
    _forward_kernel[(n * length,)](x, shift, scale, y, mean, rstd, length, d, x.stride(0), x.stride(1),
                                   shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1), eps,
                                   BLOCK_D=cfg["BLOCK_D"], num_warps=NUM_WARPS)
    return y, mean, rstd


def backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             needs=(True, True, True)):
    """dy (N, L, D) contiguous -> dx (x's dtype, contiguous), dshift, dscale (N, D) float32 (None where not needed)."""
    x = _rows(x)
    n, length, d = x.shape
    cfg = launch_config(length, d)
    dx = dshift = dscale = None
    if needs[0]:
        dx = torch.empty((n, length, d), device=x.device, dtype=x.dtype)
        _backward_dx_kernel[(n * length,)](dy, x, scale, mean, rstd, dx, length, d, x.stride(0), x.stride(1),
                                           scale.stride(0), scale.stride(1), BLOCK_D=cfg["BLOCK_D"],
                                           num_warps=NUM_WARPS)
    if needs[1] or needs[2]:
        dshift = torch.empty((n, d), device=x.device, dtype=torch.float32)
        dscale = torch.empty_like(dshift)
        grid = (n, triton.cdiv(d, cfg["MOD_BLOCK_D"]))
        _backward_modulation_kernel[grid](dy, x, mean, rstd, dshift, dscale, length, d, x.stride(0), x.stride(1),
                                          BLOCK_L=cfg["MOD_BLOCK_L"], BLOCK_D=cfg["MOD_BLOCK_D"],
                                          num_warps=NUM_WARPS)
    return dx, (dshift if needs[1] else None), (dscale if needs[2] else None)
