"""The fused learned-variance sampler step, Triton  (reference.learned_variance_step;
DDPM Alg. 2 with Improved DDPM Eq. 15).

    x0_hat  = c0 x_t + c1 out ;  eps_hat = c2 x_t + c3 out      (float64 registers)
    x0_hat  = clip(x0_hat, lo, hi)                               (optional)
    mean    = c4 x0_hat + c5 x_t + c6 eps_hat
    x_prev  = mean + exp(0.5 (frac c7 + (1 - frac) c8)) z,  frac = (v + 1) / 2   (where c9 != 0)
    with HAS_GRAD (classifier guidance, Dhariwal & Nichol 2021 Alg. 1 with the learned Sigma):
    x0_hat += a0 g, eps_hat += a1 g before the clip, x_prev += a2 exp(log sigma^2) g before the
    noise, (a0, a1, a2) per sample (N, 3) float64, g read as float32

`out` and v are the two halves of one (N, 2C, ...) model output in x_t's layout, read in the
same pass: for NCHW-contiguous tensors element m of sample n is at n 2 numel + m (out) and
+ numel (v); for channels_last (memory (N, HW, 2C)) at n 2 numel + m + hw C (out) and + C (v),
hw = m // C (one 32-bit division). Each program covers BLOCK elements of one sample, so the 10
float64 coefficients are scalar loads and has_noise = 0 (the step into x_0) skips the draw.
Results are rounded float64 -> float32 -> storage, as every backend. `out` may alias x_t.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

from ..operands import classifier_operands, learned_variance_step_operands
from . import record_decoration
from .launch import elementwise_grid
from .. import config
from .philox import logical_index, sample_block, stream_normal, to_u32

record_decoration()

__all__ = ["learned_variance_step"]


@triton.jit
def _learned_variance_step_kernel(x_t_ptr,           # (N, C, ...) x_t, memory order of its layout
                                  model_output_ptr,  # (N, 2C, ...) mean part then v, same layout
                                  noise_ptr,         # (N, C, ...) z (only with NOISE_MODE == 1)
                                  x_prev_ptr,        # (N, C, ...) output, may alias x_t
                                  coefficients_ptr,  # (N, 10) float64, rows coefficient_stride apart
                                  samples_ptr, stream_ptr,  # (N,) int64 (HAS_SAMPLES/HAS_STREAM)
                                  grad_ptr,          # (N, C, ...) classifier gradient g (HAS_GRAD)
                                  grad_coefficients_ptr,  # (N, 3) float64 (a0, a1, a2) x scale (HAS_GRAD)
                                  coefficient_stride, grad_coefficient_stride,
                                  seed_lo, seed_hi, stream_scalar,
                                  clip_lo_bits, clip_hi_bits,  # float64 bounds as int64 bits
                                  numel, blocks_per_sample, C, HW,
                                  CLIP: tl.constexpr, NOISE_MODE: tl.constexpr,
                                  HAS_SAMPLES: tl.constexpr, HAS_STREAM: tl.constexpr,
                                  CHANNELS_LAST: tl.constexpr, FP64: tl.constexpr,
                                  HAS_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    n, j, mask, offs = sample_block(numel, blocks_per_sample, BLOCK)
    row = coefficients_ptr + n.to(tl.int64) * coefficient_stride
    c0 = tl.load(row + 0)
    c1 = tl.load(row + 1)
    c2 = tl.load(row + 2)
    c3 = tl.load(row + 3)
    c4 = tl.load(row + 4)
    c5 = tl.load(row + 5)
    c6 = tl.load(row + 6)
    log_beta = tl.load(row + 7)
    log_beta_tilde = tl.load(row + 8)
    has_noise = tl.load(row + 9)
    # where element j of the sample sits in the (N, 2C, ...) output: its mean part, then v
    base = n.to(tl.int64) * (2 * numel)
    if CHANNELS_LAST:
        hw = (j.to(tl.uint32) // to_u32(C)).to(tl.int64)
        out_offs = base + j + hw * C
        v_offs = out_offs + C
    else:
        out_offs = base + j
        v_offs = out_offs + numel
    out = tl.load(model_output_ptr + out_offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    x_t = tl.load(x_t_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    x0_hat = c0 * x_t + c1 * out
    eps_hat = c2 * x_t + c3 * out
    if HAS_GRAD:  # classifier guidance: three scalar loads and the gradient
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
        if a2 != 0.0:  # Alg. 1: mu + s Sigma g, Sigma = exp(log sigma^2) per element (0 into x_0)
            v_g = tl.load(model_output_ptr + v_offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
            frac_g = (v_g + 1.0) / 2.0
            x_prev = x_prev + a2 * (tl.exp(frac_g * log_beta + (1.0 - frac_g) * log_beta_tilde) * g)
    if has_noise != 0.0:  # a scalar branch: neither v nor z is read for the step into x_0
        v = tl.load(model_output_ptr + v_offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
        frac = (v + 1.0) / 2.0
        log_variance = frac * log_beta + (1.0 - frac) * log_beta_tilde  # Improved DDPM Eq. 15
        sigma = tl.exp(0.5 * log_variance)
        if NOISE_MODE == 1:
            z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float64)
            x_prev = x_prev + sigma * z
        elif NOISE_MODE == 2:
            z = stream_normal(seed_lo, seed_hi, n, logical_index(j, C, HW, CHANNELS_LAST),
                              samples_ptr, stream_ptr, stream_scalar, HAS_SAMPLES, HAS_STREAM,
                              FP64).to(tl.float64)
            x_prev = x_prev + sigma * z
        else:
            x_prev = x_prev + float("nan")  # has_noise != 0 but no noise source
    tl.store(x_prev_ptr + offs, x_prev.to(tl.float32).to(x_prev_ptr.dtype.element_ty), mask=mask)


def learned_variance_step(x_t, model_output, coefficients, clip, noise, seed, samples, stream, out,
                          classifier_grad=None, classifier_coefficients=None):
    """kernels.learned_variance_step on Triton (validated inputs; coefficients (N, 10) float64
    on device). Inputs not in x_t's layout are copied to it; `out` in another layout receives a
    copy of the result."""
    ops = learned_variance_step_operands(x_t, model_output, noise, coefficients, seed, stream, out)
    g = ops.geometry
    c = ops.coefficients
    lo, hi = clip if clip is not None else (0.0, 0.0)
    batch = ops.x_t.shape[0]
    block, grid = elementwise_grid(batch, g.numel)
    samples = samples.contiguous() if samples is not None else None
    lo_bits, hi_bits = (struct.unpack("<q", struct.pack("<d", float(v)))[0] for v in (lo, hi))
    grad, grad_c = classifier_operands(ops, classifier_grad, classifier_coefficients)
    _learned_variance_step_kernel[grid](
        ops.x_t, ops.model_output, ops.noise if ops.noise is not None else ops.x_t, ops.x_prev, c,
        samples if samples is not None else c, g.stream_tensor if g.stream_tensor is not None else c,
        grad if grad is not None else ops.x_t, grad_c if grad_c is not None else c,
        c.stride(0), grad_c.stride(0) if grad_c is not None else 0,
        g.seed_lo, g.seed_hi, g.stream_scalar, lo_bits, hi_bits, g.numel, grid[0] // batch, g.C, g.HW,
        CLIP=clip is not None, NOISE_MODE=ops.noise_mode, HAS_SAMPLES=samples is not None,
        HAS_STREAM=g.stream_tensor is not None, CHANNELS_LAST=g.channels_last,
        FP64=config.NORMAL_FP64, HAS_GRAD=grad is not None, BLOCK=block)
    return ops.result(out)
