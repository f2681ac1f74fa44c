"""The fused sampler update, CUDA C  (reference.sampler_update; DDPM Alg. 2 / DDIM Eq. 12).

    out     = uncond + w (cond - uncond)            float32, as the reference for float32 arrays
    x0_hat  = c0 x_t + c1 out ; eps_hat = c2 x_t + c3 out           float64
    x0_hat  = clip(x0_hat, lo, hi)                  optional
    x_prev  = c4 x0_hat + c5 x_t + c6 eps_hat + c7 z   (z only where sigma = c7 != 0)

Every product and sum is an explicit round-to-nearest operation in the reference's order (no
FMA contraction), so with the same z the float32 result equals the reference's bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import config
from ..layout import channels_and_spatial, dense_layout, empty_like_layout, same_layout_or_copy
from .philox import PHILOX_CUH, seed_words
from .runtime import STORAGE_CUH, address, get_kernel, grid_1d, launch, storage_id

__all__ = ["sampler_step"]

NOISE_NONE, NOISE_TENSOR, NOISE_STREAM = 0, 1, 2

_SOURCE = STORAGE_CUH + PHILOX_CUH + r"""
extern "C" __global__ void sampler_step_kernel(
        unsigned long long x_t_addr,           /* (N, ...) storage_t, memory order of its layout */
        unsigned long long model_output_addr,  /* (N, ...) the (conditional) model output */
        unsigned long long uncond_addr,        /* (N, ...) unconditional output, or 0 (no CFG) */
        unsigned long long noise_addr,         /* (N, ...) z (noise_mode 1) */
        unsigned long long x_prev_addr,        /* (N, ...) out, may alias x_t */
        unsigned long long coefficients_addr,  /* (N, 8) float64, rows coefficient_stride apart */
        long long coefficient_stride,          /* 8, or 0 for one row shared by all samples */
        unsigned long long samples_addr, unsigned long long streams_addr,  /* (N,) int64 or 0 */
        unsigned int seed_lo, unsigned int seed_hi, long long stream_scalar,
        float guidance_scale, double clip_lo, double clip_hi, int clip, int noise_mode,
        long long total, long long numel, long long C, long long HW, int channels_last) {
    const storage_t* x_t = (const storage_t*)x_t_addr;
    const storage_t* model_output = (const storage_t*)model_output_addr;
    const storage_t* uncond = (const storage_t*)uncond_addr;
    const storage_t* noise = (const storage_t*)noise_addr;
    storage_t* x_prev = (storage_t*)x_prev_addr;
    const double* coefficients = (const double*)coefficients_addr;
    const long long* samples = (const long long*)samples_addr;
    const long long* streams = (const long long*)streams_addr;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long n = i / numel;
        const double* c = coefficients + coefficient_stride * n;
        float out32 = load_f32(model_output, i);
        if (uncond != 0) {
            const float u = load_f32(uncond, i);
            out32 = __fadd_rn(u, __fmul_rn(guidance_scale, __fsub_rn(out32, u)));
        }
        const double out = (double)out32;
        const double x = (double)load_f32(x_t, i);
        double x0_hat = __dadd_rn(__dmul_rn(c[0], x), __dmul_rn(c[1], out));
        const double eps_hat = __dadd_rn(__dmul_rn(c[2], x), __dmul_rn(c[3], out));
        if (clip) x0_hat = fmin(fmax(x0_hat, clip_lo), clip_hi);
        double value = __dadd_rn(__dadd_rn(__dmul_rn(c[4], x0_hat), __dmul_rn(c[5], x)),
                                 __dmul_rn(c[6], eps_hat));
        const double sigma = c[7];
        if (sigma != 0.0) {
            if (noise_mode == 1) {
                value = __dadd_rn(value, __dmul_rn(sigma, (double)load_f32(noise, i)));
            } else if (noise_mode == 2) {
                long long sample, stream;
                sample_and_stream(n, samples, streams, stream_scalar, &sample, &stream);
                const float z = stream_normal(seed_lo, seed_hi,
                                              logical_index(i - n * numel, C, HW, channels_last),
                                              sample, stream);
                value = __dadd_rn(value, __dmul_rn(sigma, (double)z));
            } else {
                value = __longlong_as_double(0x7ff8000000000000ll);  /* sigma != 0, no noise: NaN */
            }
        }
        store_f32(x_prev, i, (float)value);
    }
}
"""

BLOCK = 256


def sampler_step(x_t, model_output, coefficients, model_output_uncond, guidance_scale, clip,
                 noise, seed, samples, stream, out):
    """kernels.sampler_step on CuPy (validated inputs; coefficients (N, 8) float64 on device).

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
    seed_lo, seed_hi = seed_words(0 if seed is None else seed)
    total = x_t.numel()
    kernel = get_kernel(_SOURCE, "sampler_step_kernel", STORAGE_ID=storage_id(x_t.dtype),
                        NORMAL_FP64=config.NORMAL_FP64)
    launch(kernel, (grid_1d(total, BLOCK, x_t.device),), (BLOCK,),
           (address(x_t_dense), address(model_output), address(model_output_uncond),
            address(noise), address(x_prev), address(coefficients), np.int64(coefficients.stride(0)),
            address(samples),
            address(stream if has_stream else None), seed_lo, seed_hi,
            np.int64(0 if has_stream else stream), np.float32(guidance_scale), np.float64(lo),
            np.float64(hi), np.int32(clip is not None), np.int32(mode), np.int64(total),
            np.int64(numel), np.int64(C), np.int64(HW), np.int32(layout == "channels_last")),
           x_t.device)
    if out is not None and not direct:
        return out.copy_(x_prev)
    return x_prev
