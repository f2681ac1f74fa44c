"""The fused sampler update, CUDA C  (reference.sampler_step; DDPM Alg. 2 / DDIM Eq. 12).

    out     = uncond + w (cond - uncond)            float32, as the reference for float32 arrays
    x0_hat  = c0 x_t + c1 out ; eps_hat = c2 x_t + c3 out           float64
    x0_hat  = clip(x0_hat, lo, hi)                  optional
    x_prev  = c4 x0_hat + c5 x_t + c6 eps_hat + c7 z   (z only where sigma = c7 != 0)
    classifier guidance (grad != 0): x0_hat += a0 g, eps_hat += a1 g before the clip,
    x_prev += a2 g before the noise, (a0, a1, a2) per sample (N, 3) float64

Every product and sum is an explicit round-to-nearest operation in the reference's order (no
FMA contraction), so with the same z the float32 result equals the reference's bit for bit.
"""

from __future__ import annotations

import numpy as np

from .. import config
from ..operands import classifier_operands, sampler_step_operands
from .philox import PHILOX_CUH
from .runtime import STORAGE_CUH, address, get_kernel, grid_1d, launch, storage_id

__all__ = ["sampler_step"]


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
        long long total, long long numel, long long C, long long HW, int channels_last,
        unsigned long long grad_addr,          /* (N, ...) classifier gradient g, or 0 */
        unsigned long long grad_coefficients_addr,  /* (N, 3) float64 (a0, a1, a2) x scale */
        long long grad_coefficient_stride) {   /* 3, or 0 for one shared row */
    const storage_t* grad = (const storage_t*)grad_addr;
    const double* grad_coefficients = (const double*)grad_coefficients_addr;
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
        double eps_hat = __dadd_rn(__dmul_rn(c[2], x), __dmul_rn(c[3], out));
        double g = 0.0;
        const double* a = grad_coefficients + grad_coefficient_stride * n;
        if (grad != 0) {  /* classifier guidance (Dhariwal & Nichol 2021, Alg. 1 / 2) */
            g = (double)load_f32(grad, i);
            x0_hat = __dadd_rn(x0_hat, __dmul_rn(a[0], g));
            eps_hat = __dadd_rn(eps_hat, __dmul_rn(a[1], g));
        }
        if (clip) x0_hat = fmin(fmax(x0_hat, clip_lo), clip_hi);
        double value = __dadd_rn(__dadd_rn(__dmul_rn(c[4], x0_hat), __dmul_rn(c[5], x)),
                                 __dmul_rn(c[6], eps_hat));
        if (grad != 0) value = __dadd_rn(value, __dmul_rn(a[2], g));
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
                 noise, seed, samples, stream, out, classifier_grad=None, classifier_coefficients=None):
    """kernels.sampler_step on CuPy (validated inputs; coefficients (N, 8) float64 on device).

    Inputs not in x_t's layout (NCHW-contiguous or channels_last; anything else is copied once
    to contiguous) are copied to it; `out` in another layout receives a copy of the result.
    """
    ops = sampler_step_operands(x_t, model_output, model_output_uncond, noise, coefficients, seed,
                                stream, out)
    g = ops.geometry
    samples = samples.contiguous() if samples is not None else None  # the kernel reads samples[n]
    lo, hi = clip if clip is not None else (0.0, 0.0)
    grad, grad_c = classifier_operands(ops, classifier_grad, classifier_coefficients)
    kernel = get_kernel(_SOURCE, "sampler_step_kernel", STORAGE_ID=storage_id(x_t.dtype),
                        NORMAL_FP64=config.NORMAL_FP64)
    launch(kernel, (grid_1d(g.total, BLOCK, x_t.device),), (BLOCK,),
           (address(ops.x_t), address(ops.model_output), address(ops.model_output_uncond),
            address(ops.noise), address(ops.x_prev), address(ops.coefficients),
            np.int64(ops.coefficients.stride(0)), address(samples), address(g.stream_tensor),
            np.uint32(g.seed_lo), np.uint32(g.seed_hi), np.int64(g.stream_scalar), np.float32(guidance_scale),
            np.float64(lo), np.float64(hi), np.int32(clip is not None), np.int32(ops.noise_mode),
            np.int64(g.total), np.int64(g.numel), np.int64(g.C), np.int64(g.HW),
            np.int32(g.channels_last), address(grad), address(grad_c),
            np.int64(grad_c.stride(0) if grad_c is not None else 0)),
           x_t.device)
    return ops.result(out)
