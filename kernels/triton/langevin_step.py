"""The fused Langevin update, Triton  (reference.langevin_step; Song & Ermon 2019 Eq. 4, the
score samplers' predictor, corrector and denoising steps).

    score  = c1 out                     (float64 registers)
    x_next = (c0 x + c2 score) + c3 z   (z only where c3 != 0, drawn in-kernel or read)

One pass over memory, each program covering BLOCK elements of one sample, so the (N, 4) float64
coefficients are 4 scalar loads per program and c3 = 0 (the denoising step, a noise-free
predictor) skips the noise draw. float64 evaluation, rounded once (float64 -> float32 ->
storage) as every backend does; `out` may alias x.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import config
from ..operands import langevin_step_operands
from . import record_decoration
from .launch import elementwise_grid
from .philox import logical_index, sample_block, stream_normal

record_decoration()

__all__ = ["langevin_step"]


@triton.jit
def _langevin_step_kernel(x_ptr,             # (N, ...) x, memory order of its layout
                          model_output_ptr,  # (N, ...) the model output (score = c1 out)
                          noise_ptr,         # (N, ...) z (only with NOISE_MODE == 1)
                          x_next_ptr,        # (N, ...) output, may alias x
                          coefficients_ptr,  # (N, 4) float64, rows coefficient_stride apart (0: shared)
                          samples_ptr, stream_ptr,  # (N,) int64 (only with HAS_SAMPLES/HAS_STREAM)
                          coefficient_stride, seed_lo, seed_hi, stream_scalar,
                          numel, blocks_per_sample, C, HW,
                          NOISE_MODE: tl.constexpr, HAS_SAMPLES: tl.constexpr,
                          HAS_STREAM: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                          FP64: tl.constexpr, BLOCK: tl.constexpr):
    # one program = BLOCK elements of one sample n: the 4 coefficients are scalars
    n, j, mask, offs = sample_block(numel, blocks_per_sample, BLOCK)
    row = coefficients_ptr + n.to(tl.int64) * coefficient_stride
    x_scale = tl.load(row + 0)
    score_scale = tl.load(row + 1)
    step = tl.load(row + 2)
    noise_scale = tl.load(row + 3)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    out = tl.load(model_output_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    score = score_scale * out
    x_next = x_scale * x + step * score
    if NOISE_MODE == 1:
        if noise_scale != 0.0:  # a scalar branch: the noise is not even read where c3 = 0
            z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float64)
            x_next = x_next + noise_scale * z
    elif NOISE_MODE == 2:
        if noise_scale != 0.0:  # a scalar branch: no Philox for the denoising step
            z = stream_normal(seed_lo, seed_hi, n, logical_index(j, C, HW, CHANNELS_LAST),
                              samples_ptr, stream_ptr, stream_scalar, HAS_SAMPLES, HAS_STREAM,
                              FP64).to(tl.float64)
            x_next = x_next + noise_scale * z
    else:
        if noise_scale != 0.0:  # noise_scale != 0 but no noise source
            x_next = x_next + float("nan")
    tl.store(x_next_ptr + offs, x_next.to(tl.float32).to(x_next_ptr.dtype.element_ty), mask=mask)


def langevin_step(x, model_output, coefficients, noise, seed, samples, stream, out):
    """kernels.langevin_step on Triton (validated inputs; coefficients (N, 4) float64 on device).

    Inputs not in x's layout (NCHW-contiguous or channels_last; anything else is copied once to
    contiguous) are copied to it; `out` in another layout receives a copy of the result.
    """
    ops = langevin_step_operands(x, model_output, noise, coefficients, seed, stream, out)
    g = ops.geometry
    c = ops.coefficients
    batch = ops.x_t.shape[0]
    block, grid = elementwise_grid(batch, g.numel)
    samples = samples.contiguous() if samples is not None else None
    _langevin_step_kernel[grid](
        ops.x_t, ops.model_output, ops.noise if ops.noise is not None else ops.x_t, ops.x_prev, c,
        samples if samples is not None else c, g.stream_tensor if g.stream_tensor is not None else c,
        c.stride(0), g.seed_lo, g.seed_hi, g.stream_scalar, g.numel, grid[0] // batch, g.C, g.HW,
        NOISE_MODE=ops.noise_mode, HAS_SAMPLES=samples is not None,
        HAS_STREAM=g.stream_tensor is not None, CHANNELS_LAST=g.channels_last,
        FP64=config.NORMAL_FP64, BLOCK=block)
    return ops.result(out)
