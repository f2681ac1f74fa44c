"""The fused sampler update, Triton  (reference.sampler_update; DDPM Alg. 2 / DDIM Eq. 12).

    out     = uncond + w (cond - uncond)                      (optional CFG, in storage precision
                                                               widened to float32, as the reference)
    x0_hat  = c0 x_t + c1 out ;  eps_hat = c2 x_t + c3 out    (float64 registers)
    x0_hat  = clip(x0_hat, lo, hi)                             (optional)
    x_prev  = c4 x0_hat + c5 x_t + c6 eps_hat + c7 z           (z only where sigma = c7 != 0)

One flat pass over memory; coefficients (N, 8) float64 gathered per element (cached). The rule is
evaluated in float64 because c0, c1 reach ~1/sqrt(alpha_bar) near t = T and float32 would lose
~ulp(c |x|) to cancellation; results are rounded once to the storage dtype. `out` may alias x_t.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import channels_and_spatial, dense_layout, empty_like_layout, same_layout_or_copy
from . import record_decoration
from .launch import elementwise_block
from .. import config
from .philox import logical_index, seed_words, stream_normal

record_decoration()

__all__ = ["sampler_step"]

NOISE_NONE, NOISE_TENSOR, NOISE_STREAM = 0, 1, 2


@triton.jit
def _sampler_step_kernel(x_t_ptr,          # (N, ...) x_t, memory order of its layout
                         model_output_ptr,  # (N, ...) model output (the conditional one under CFG)
                         uncond_ptr,        # (N, ...) unconditional output (only with HAS_UNCOND)
                         noise_ptr,         # (N, ...) z (only with NOISE_MODE == 1)
                         x_prev_ptr,        # (N, ...) output, may alias x_t
                         coefficients_ptr,  # (N, 8) float64, rows coefficient_stride apart (0: shared)
                         samples_ptr, stream_ptr,  # (N,) int64 (only with HAS_SAMPLES/HAS_STREAM)
                         coefficient_stride, seed_lo, seed_hi, stream_scalar, guidance_scale,
                         clip_lo, clip_hi, total, numel, C, HW,
                         HAS_UNCOND: tl.constexpr, CLIP: tl.constexpr, NOISE_MODE: tl.constexpr,
                         HAS_SAMPLES: tl.constexpr, HAS_STREAM: tl.constexpr,
                         CHANNELS_LAST: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n = offs // numel
    row = coefficients_ptr + n * coefficient_stride
    c0 = tl.load(row + 0, mask=mask, other=0.0)
    c1 = tl.load(row + 1, mask=mask, other=0.0)
    c2 = tl.load(row + 2, mask=mask, other=0.0)
    c3 = tl.load(row + 3, mask=mask, other=0.0)
    c4 = tl.load(row + 4, mask=mask, other=0.0)
    c5 = tl.load(row + 5, mask=mask, other=0.0)
    c6 = tl.load(row + 6, mask=mask, other=0.0)
    sigma = tl.load(row + 7, mask=mask, other=0.0)
    out = tl.load(model_output_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_UNCOND:
        uncond = tl.load(uncond_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = uncond + guidance_scale * (out - uncond)  # reference.classifier_free_guidance
    x_t = tl.load(x_t_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    out = out.to(tl.float64)
    x0_hat = c0 * x_t + c1 * out
    eps_hat = c2 * x_t + c3 * out
    if CLIP:
        x0_hat = tl.minimum(tl.maximum(x0_hat, clip_lo), clip_hi)
    x_prev = c4 * x0_hat + c5 * x_t + c6 * eps_hat
    if NOISE_MODE == 1:
        z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        x_prev = x_prev + tl.where(sigma != 0.0, sigma * z, 0.0)
    elif NOISE_MODE == 2:
        j = logical_index(offs - n * numel, C, HW, CHANNELS_LAST)
        z = stream_normal(seed_lo, seed_hi, n, j, mask, samples_ptr, stream_ptr, stream_scalar,
                          HAS_SAMPLES, HAS_STREAM, FP64).to(tl.float64)
        x_prev = x_prev + tl.where(sigma != 0.0, sigma * z, 0.0)
    else:
        x_prev = tl.where(sigma != 0.0, float("nan"), x_prev)  # sigma != 0 but no noise source
    # float64 -> float32 -> storage: the same two roundings on every backend (CUDA, torch)
    tl.store(x_prev_ptr + offs, x_prev.to(tl.float32).to(x_prev_ptr.dtype.element_ty), mask=mask)


def sampler_step(x_t, model_output, coefficients, model_output_uncond, guidance_scale, clip,
                 noise, seed, samples, stream, out):
    """kernels.sampler_step on Triton (validated inputs; coefficients (N, 8) float64 on device).

    Inputs not in x_t's layout (NCHW-contiguous or channels_last; anything else is copied once
    to contiguous) are copied to it; `out` in another layout receives a copy of the result.
    """
    layout = dense_layout(x_t) or "contiguous"
    x_t_dense = same_layout_or_copy(x_t, layout)
    model_output = same_layout_or_copy(model_output, layout)
    if model_output_uncond is not None:
        model_output_uncond = same_layout_or_copy(model_output_uncond, layout)
    if noise is not None:
        noise = same_layout_or_copy(noise, layout)
    direct = out is not None and dense_layout(out) == layout
    x_prev = out if direct else empty_like_layout(x_t_dense, layout)
    if coefficients.stride(1) != 1 or coefficients.stride(0) not in (0, 8):
        coefficients = coefficients.contiguous()  # (N, 8) floats: tiny
    batch = x_t.shape[0]
    numel = x_t.numel() // batch
    C, HW = channels_and_spatial(x_t)
    mode = NOISE_TENSOR if noise is not None else (NOISE_STREAM if seed is not None else NOISE_NONE)
    has_stream = isinstance(stream, torch.Tensor)
    lo, hi = clip if clip is not None else (0.0, 0.0)
    total = x_t.numel()
    block = elementwise_block(total)
    _sampler_step_kernel[(triton.cdiv(total, block),)](
        x_t_dense, model_output, model_output_uncond if model_output_uncond is not None else x_t_dense,
        noise if noise is not None else x_t_dense, x_prev, coefficients,
        samples if samples is not None else coefficients, stream if has_stream else coefficients,
        coefficients.stride(0),
        *seed_words(0 if seed is None else seed), 0 if has_stream else int(stream), float(guidance_scale),
        float(lo), float(hi), total, numel, C, HW,
        HAS_UNCOND=model_output_uncond is not None, CLIP=clip is not None, NOISE_MODE=mode,
        HAS_SAMPLES=samples is not None, HAS_STREAM=has_stream,
        CHANNELS_LAST=layout == "channels_last", FP64=config.NORMAL_FP64, BLOCK=block)
    if out is not None and not direct:
        return out.copy_(x_prev)
    return x_prev
