"""The fused sampler update, Triton  (reference.sampler_step; DDPM Alg. 2 / DDIM Eq. 12).

    out     = uncond + w (cond - uncond)                      (optional CFG, in storage precision
                                                               widened to float32, as the reference)
    x0_hat  = c0 x_t + c1 out ;  eps_hat = c2 x_t + c3 out    (float64 registers)
    x0_hat  = clip(x0_hat, lo, hi)                             (optional)
    x_prev  = c4 x0_hat + c5 x_t + c6 eps_hat + c7 z           (z only where sigma = c7 != 0)
    with HAS_GRAD (classifier guidance): x0_hat += a0 g, eps_hat += a1 g before the clip and
    x_prev += a2 g before the noise, (a0, a1, a2) per sample (N, 3) float64, g read as float32

One pass over memory, each program covering BLOCK elements of one sample, so the coefficients
(N, 8) float64 are 8 scalar loads per program and sigma = 0 skips the noise draw entirely. The rule is
evaluated in float64 because c0, c1 reach ~1/sqrt(alpha_bar) near t = T and float32 would lose
~ulp(c |x|) to cancellation; results are rounded once to the storage dtype. `out` may alias x_t.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

from ..operands import classifier_operands, sampler_step_operands
from . import record_decoration
from .launch import elementwise_grid
from .. import config
from .philox import logical_index, sample_block, stream_normal

record_decoration()

__all__ = ["sampler_step"]



@triton.jit
def _sampler_step_kernel(x_t_ptr,          # (N, ...) x_t, memory order of its layout
                         model_output_ptr,  # (N, ...) model output (the conditional one under CFG)
                         uncond_ptr,        # (N, ...) unconditional output (only with HAS_UNCOND)
                         noise_ptr,         # (N, ...) z (only with NOISE_MODE == 1)
                         x_prev_ptr,        # (N, ...) output, may alias x_t
                         coefficients_ptr,  # (N, 8) float64, rows coefficient_stride apart (0: shared)
                         samples_ptr, stream_ptr,  # (N,) int64 (only with HAS_SAMPLES/HAS_STREAM)
                         grad_ptr,          # (N, ...) classifier gradient g (only with HAS_GRAD)
                         grad_coefficients_ptr,  # (N, 3) float64 (a0, a1, a2) x scale (HAS_GRAD)
                         coefficient_stride, grad_coefficient_stride,
                         seed_lo, seed_hi, stream_scalar, guidance_scale,
                         clip_lo_bits, clip_hi_bits,  # float64 bounds as int64 bit patterns
                         numel, blocks_per_sample, C, HW,
                         HAS_UNCOND: tl.constexpr, CLIP: tl.constexpr, NOISE_MODE: tl.constexpr,
                         HAS_SAMPLES: tl.constexpr, HAS_STREAM: tl.constexpr,
                         CHANNELS_LAST: tl.constexpr, FP64: tl.constexpr, HAS_GRAD: tl.constexpr,
                         BLOCK: tl.constexpr):
    # one program = BLOCK elements of one sample n: the 8 coefficients are scalars (16
    # registers, not 8 float64 per element) and the sample index costs no per-element division
    n, j, mask, offs = sample_block(numel, blocks_per_sample, BLOCK)
    row = coefficients_ptr + n.to(tl.int64) * coefficient_stride
    c0 = tl.load(row + 0)
    c1 = tl.load(row + 1)
    c2 = tl.load(row + 2)
    c3 = tl.load(row + 3)
    c4 = tl.load(row + 4)
    c5 = tl.load(row + 5)
    c6 = tl.load(row + 6)
    sigma = tl.load(row + 7)
    out = tl.load(model_output_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_UNCOND:
        uncond = tl.load(uncond_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = uncond + guidance_scale * (out - uncond)  # reference.classifier_free_guidance
    x_t = tl.load(x_t_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    out = out.to(tl.float64)
    x0_hat = c0 * x_t + c1 * out
    eps_hat = c2 * x_t + c3 * out
    if HAS_GRAD:  # classifier guidance (Dhariwal & Nichol 2021, Alg. 1 / 2): three scalar loads
        grad_row = grad_coefficients_ptr + n.to(tl.int64) * grad_coefficient_stride
        a0 = tl.load(grad_row + 0)
        a1 = tl.load(grad_row + 1)
        a2 = tl.load(grad_row + 2)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
        x0_hat = x0_hat + a0 * g
        eps_hat = eps_hat + a1 * g
    if CLIP:
        # compiled Triton types a Python float argument as fp32: the bounds travel as bits
        clip_lo = clip_lo_bits.to(tl.int64).to(tl.float64, bitcast=True)
        clip_hi = clip_hi_bits.to(tl.int64).to(tl.float64, bitcast=True)
        x0_hat = tl.minimum(tl.maximum(x0_hat, clip_lo), clip_hi)
    x_prev = c4 * x0_hat + c5 * x_t + c6 * eps_hat
    if HAS_GRAD:
        x_prev = x_prev + a2 * g
    if NOISE_MODE == 1:
        if sigma != 0.0:  # a scalar branch: the noise is not even read where sigma = 0
            z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float64)
            x_prev = x_prev + sigma * z
    elif NOISE_MODE == 2:
        if sigma != 0.0:  # a scalar branch: no Philox at all for the last step / DDIM eta = 0
            z = stream_normal(seed_lo, seed_hi, n, logical_index(j, C, HW, CHANNELS_LAST),
                              samples_ptr, stream_ptr, stream_scalar, HAS_SAMPLES, HAS_STREAM,
                              FP64).to(tl.float64)
            x_prev = x_prev + sigma * z
    else:
        if sigma != 0.0:  # sigma != 0 but no noise source
            x_prev = x_prev + float("nan")
    # float64 -> float32 -> storage: the same two roundings on every backend (CUDA, torch)
    tl.store(x_prev_ptr + offs, x_prev.to(tl.float32).to(x_prev_ptr.dtype.element_ty), mask=mask)


def sampler_step(x_t, model_output, coefficients, model_output_uncond, guidance_scale, clip,
                 noise, seed, samples, stream, out, classifier_grad=None, classifier_coefficients=None):
    """kernels.sampler_step on Triton (validated inputs; coefficients (N, 8) float64 on device).

    Inputs not in x_t's layout (NCHW-contiguous or channels_last; anything else is copied once
    to contiguous) are copied to it; `out` in another layout receives a copy of the result.
    """
    ops = sampler_step_operands(x_t, model_output, model_output_uncond, noise, coefficients, seed,
                                stream, out)
    g = ops.geometry
    c = ops.coefficients
    lo, hi = clip if clip is not None else (0.0, 0.0)
    batch = ops.x_t.shape[0]
    block, grid = elementwise_grid(batch, g.numel)
    samples = samples.contiguous() if samples is not None else None
    lo_bits, hi_bits = (struct.unpack("<q", struct.pack("<d", float(v)))[0] for v in (lo, hi))
    grad, grad_c = classifier_operands(ops, classifier_grad, classifier_coefficients)
    _sampler_step_kernel[grid](
        ops.x_t, ops.model_output,
        ops.model_output_uncond if ops.model_output_uncond is not None else ops.x_t,
        ops.noise if ops.noise is not None else ops.x_t, ops.x_prev, c,
        samples if samples is not None else c, g.stream_tensor if g.stream_tensor is not None else c,
        grad if grad is not None else ops.x_t, grad_c if grad_c is not None else c,
        c.stride(0), grad_c.stride(0) if grad_c is not None else 0,
        g.seed_lo, g.seed_hi, g.stream_scalar, float(guidance_scale),
        lo_bits, hi_bits, g.numel, grid[0] // batch, g.C, g.HW,
        HAS_UNCOND=ops.model_output_uncond is not None, CLIP=clip is not None,
        NOISE_MODE=ops.noise_mode, HAS_SAMPLES=samples is not None,
        HAS_STREAM=g.stream_tensor is not None, CHANNELS_LAST=g.channels_last,
        FP64=config.NORMAL_FP64, HAS_GRAD=grad is not None, BLOCK=block)
    return ops.result(out)
