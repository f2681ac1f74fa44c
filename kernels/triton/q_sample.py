"""Forward noising in one pass, Triton  (reference.q_sample; DDPM Eq. 4).

    x_t = sqrt_alpha_bar[t_n] x0 + sqrt_one_minus_alpha_bar[t_n] eps

One pass over memory (NCHW-contiguous or channels_last, every tensor in x0's layout); each
program covers BLOCK elements of one sample, so t and its table entries are scalar loads and the
sample index costs no per-element division; float32 arithmetic, one rounding at the store.
With DRAW_NOISE, eps comes from the noise stream and is written out for the loss.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..operands import q_sample_operands
from . import record_decoration
from .launch import elementwise_grid
from .. import config
from .philox import logical_index, sample_block, stream_normal

record_decoration()

__all__ = ["q_sample"]


@triton.jit
def _q_sample_kernel(x0_ptr,            # (N, ...) input, memory order of its layout
                     noise_ptr,         # (N, ...) eps input (unused with DRAW_NOISE)
                     x_t_ptr,           # (N, ...) output, same layout
                     noise_out_ptr,     # (N, ...) drawn eps output (only with DRAW_NOISE)
                     t_ptr,             # (N,) contiguous int64/int32 timesteps
                     sqrt_alpha_bar_ptr,            # (T,) float32/float64
                     sqrt_one_minus_alpha_bar_ptr,  # (T,) float32/float64
                     samples_ptr, stream_ptr,       # (N,) contiguous int64 (only with HAS_SAMPLES/HAS_STREAM)
                     seed_lo, seed_hi, stream_scalar, numel, blocks_per_sample, T, C, HW,
                     DRAW_NOISE: tl.constexpr, HAS_SAMPLES: tl.constexpr, HAS_STREAM: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    # one program = BLOCK elements of one sample n: t and the table entries are scalars
    n, j, mask, offs = sample_block(numel, blocks_per_sample, BLOCK)
    t = tl.load(t_ptr + n).to(tl.int64)
    t_ok = (t >= 0) & (t < T)
    t = tl.where(t_ok, t, 0)  # never read outside the tables; the sample becomes NaN below
    sqrt_alpha_bar = tl.load(sqrt_alpha_bar_ptr + t).to(tl.float32)
    sqrt_one_minus_alpha_bar = tl.load(sqrt_one_minus_alpha_bar_ptr + t).to(tl.float32)
    x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if DRAW_NOISE:
        eps = stream_normal(seed_lo, seed_hi, n, logical_index(j, C, HW, CHANNELS_LAST),
                            samples_ptr, stream_ptr, stream_scalar, HAS_SAMPLES, HAS_STREAM, FP64)
        tl.store(noise_out_ptr + offs, eps.to(noise_out_ptr.dtype.element_ty), mask=mask)
    else:
        eps = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x_t = sqrt_alpha_bar * x0 + sqrt_one_minus_alpha_bar * eps
    x_t = tl.where(t_ok, x_t, float("nan"))
    tl.store(x_t_ptr + offs, x_t.to(x_t_ptr.dtype.element_ty), mask=mask)


def q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, noise, seed, samples, stream):
    """kernels.q_sample on Triton (validated inputs). x0 in neither NCHW-contiguous nor
    channels_last layout is copied once to contiguous; noise is brought to x0's layout; t,
    samples and stream (any 1-D view) are made contiguous (the kernel reads them as t_ptr + n)."""
    ops = q_sample_operands(x0, noise, seed, stream)
    g = ops.geometry
    t = t.contiguous()
    samples = samples.contiguous() if samples is not None else None
    batch = ops.x0.shape[0]
    block, grid = elementwise_grid(batch, g.numel)
    _q_sample_kernel[grid](
        ops.x0, ops.x0 if ops.draw else ops.noise, ops.x_t,
        ops.noise_out if ops.draw else ops.x_t, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar,
        samples if samples is not None else t, g.stream_tensor if g.stream_tensor is not None else t,
        g.seed_lo, g.seed_hi, g.stream_scalar, g.numel, grid[0] // batch, sqrt_alpha_bar.numel(),
        g.C, g.HW, DRAW_NOISE=ops.draw, HAS_SAMPLES=samples is not None,
        HAS_STREAM=g.stream_tensor is not None, CHANNELS_LAST=g.channels_last,
        FP64=config.NORMAL_FP64, BLOCK=block)
    return ops.result()
