"""The fused learned-variance sampler step, CUDA C  (reference.learned_variance_step;
DDPM Alg. 2 with Improved DDPM Eq. 15).

    x0_hat  = c0 x_t + c1 out ; eps_hat = c2 x_t + c3 out           float64
    x0_hat  = clip(x0_hat, lo, hi)                                  optional
    mean    = c4 x0_hat + c5 x_t + c6 eps_hat
    x_prev  = mean + exp(0.5 (frac c7 + (1 - frac) c8)) z,  frac = (v + 1) / 2   (where c9 != 0)
    with a classifier gradient g (has_grad): x0_hat += a0 g, eps_hat += a1 g before the clip,
    x_prev += a2 exp(frac c7 + (1 - frac) c8) g before the noise  (Dhariwal & Nichol Alg. 1)

`out` and v are the two halves of one (N, 2C, ...) model output in x_t's layout (see
kernels/triton/learned_variance_step.py for the offsets). Every product and sum is an explicit
round-to-nearest operation in the reference's order (no FMA contraction); exp is the CUDA math
library's (within 1 ulp of the correctly rounded value, so results agree with the reference to
a float32 rounding rather than bit for bit).
"""

from __future__ import annotations

import numpy as np

from .. import config
from ..operands import classifier_operands, learned_variance_step_operands
from .philox import PHILOX_CUH
from .runtime import STORAGE_CUH, address, get_kernel, grid_1d, launch, storage_id

__all__ = ["learned_variance_step"]


_SOURCE = STORAGE_CUH + PHILOX_CUH + r"""
extern "C" __global__ void learned_variance_step_kernel(
        unsigned long long x_t_addr,           /* (N, C, ...) storage_t, memory order of its layout */
        unsigned long long model_output_addr,  /* (N, 2C, ...) the mean part then v, same layout */
        unsigned long long noise_addr,         /* (N, C, ...) z (noise_mode 1) */
        unsigned long long x_prev_addr,        /* (N, C, ...) out, may alias x_t */
        unsigned long long coefficients_addr,  /* (N, 10) float64, rows coefficient_stride apart */
        long long coefficient_stride,          /* 10, or 0 for one row shared by all samples */
        unsigned long long samples_addr, unsigned long long streams_addr,  /* (N,) int64 or 0 */
        unsigned int seed_lo, unsigned int seed_hi, long long stream_scalar,
        double clip_lo, double clip_hi, int clip, int noise_mode,
        long long total, long long numel, long long C, long long HW, int channels_last,
        unsigned long long grad_addr,          /* (N, C, ...) classifier gradient g (has_grad) */
        unsigned long long grad_coefficients_addr,  /* (N, 3) float64 (a0, a1, a2) x scale */
        long long grad_coefficient_stride, int has_grad) {
    const storage_t* x_t = (const storage_t*)x_t_addr;
    const storage_t* model_output = (const storage_t*)model_output_addr;
    const storage_t* noise = (const storage_t*)noise_addr;
    storage_t* x_prev = (storage_t*)x_prev_addr;
    const double* coefficients = (const double*)coefficients_addr;
    const long long* samples = (const long long*)samples_addr;
    const long long* streams = (const long long*)streams_addr;
    const storage_t* grad = (const storage_t*)grad_addr;
    const double* grad_coefficients = (const double*)grad_coefficients_addr;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long n = i / numel;
        const long long m = i - n * numel;     /* memory position within the sample */
        const double* c = coefficients + coefficient_stride * n;
        /* the (N, 2C, ...) output: contiguous, out at n 2 numel + m and v numel further;
           channels_last (memory (N, HW, 2C)), out at n 2 numel + m + hw C and v C further */
        long long out_at = 2 * numel * n + m, v_at = out_at + numel;
        if (channels_last) {
            const long long hw = m / C;
            out_at += hw * C;
            v_at = out_at + C;
        }
        const double out = (double)load_f32(model_output, out_at);
        const double x = (double)load_f32(x_t, i);
        double x0_hat = __dadd_rn(__dmul_rn(c[0], x), __dmul_rn(c[1], out));
        double eps_hat = __dadd_rn(__dmul_rn(c[2], x), __dmul_rn(c[3], out));
        const double* a = grad_coefficients + grad_coefficient_stride * n;
        const double g = has_grad ? (double)load_f32(grad, i) : 0.0;
        if (has_grad) {  /* classifier guidance: x0_hat += a0 g, eps_hat += a1 g before the clip */
            x0_hat = __dadd_rn(x0_hat, __dmul_rn(a[0], g));
            eps_hat = __dadd_rn(eps_hat, __dmul_rn(a[1], g));
        }
        if (clip) x0_hat = fmin(fmax(x0_hat, clip_lo), clip_hi);
        double value = __dadd_rn(__dadd_rn(__dmul_rn(c[4], x0_hat), __dmul_rn(c[5], x)),
                                 __dmul_rn(c[6], eps_hat));
        if (has_grad && a[2] != 0.0) {  /* Alg. 1: mu + s Sigma g, Sigma the learned variance */
            const double v = (double)load_f32(model_output, v_at);
            const double frac = __dmul_rn(__dadd_rn(v, 1.0), 0.5);
            const double log_variance = __dadd_rn(__dmul_rn(frac, c[7]),
                                                  __dmul_rn(__dadd_rn(1.0, -frac), c[8]));
            value = __dadd_rn(value, __dmul_rn(a[2], __dmul_rn(exp(log_variance), g)));
        }
        if (c[9] != 0.0) {  /* has_noise: v and z are not read for the step into x_0 */
            const double v = (double)load_f32(model_output, v_at);
            const double frac = __dmul_rn(__dadd_rn(v, 1.0), 0.5);  /* (v + 1) / 2, exact halving */
            const double log_variance = __dadd_rn(__dmul_rn(frac, c[7]),
                                                  __dmul_rn(__dadd_rn(1.0, -frac), c[8]));
            const double sigma = exp(__dmul_rn(0.5, log_variance));  /* Improved DDPM Eq. 15 */
            if (noise_mode == 1) {
                value = __dadd_rn(value, __dmul_rn(sigma, (double)load_f32(noise, i)));
            } else if (noise_mode == 2) {
                long long sample, stream;
                sample_and_stream(n, samples, streams, stream_scalar, &sample, &stream);
                const float z = stream_normal(seed_lo, seed_hi, logical_index(m, C, HW, channels_last),
                                              sample, stream);
                value = __dadd_rn(value, __dmul_rn(sigma, (double)z));
            } else {
                value = __longlong_as_double(0x7ff8000000000000ll);  /* no noise source: NaN */
            }
        }
        store_f32(x_prev, i, (float)value);
    }
}
"""

BLOCK = 256


def learned_variance_step(x_t, model_output, coefficients, clip, noise, seed, samples, stream, out,
                          classifier_grad=None, classifier_coefficients=None):
    """kernels.learned_variance_step on CuPy (validated inputs; coefficients (N, 10) float64 on
    device). Inputs not in x_t's layout are copied to it; `out` in another layout receives a
    copy of the result."""
    ops = learned_variance_step_operands(x_t, model_output, noise, coefficients, seed, stream, out)
    g = ops.geometry
    samples = samples.contiguous() if samples is not None else None  # the kernel reads samples[n]
    lo, hi = clip if clip is not None else (0.0, 0.0)
    grad, grad_c = classifier_operands(ops, classifier_grad, classifier_coefficients)
    kernel = get_kernel(_SOURCE, "learned_variance_step_kernel", STORAGE_ID=storage_id(x_t.dtype),
                        NORMAL_FP64=config.NORMAL_FP64)
    launch(kernel, (grid_1d(g.total, BLOCK, x_t.device),), (BLOCK,),
           (address(ops.x_t), address(ops.model_output), address(ops.noise), address(ops.x_prev),
            address(ops.coefficients), np.int64(ops.coefficients.stride(0)), address(samples),
            address(g.stream_tensor), np.uint32(g.seed_lo), np.uint32(g.seed_hi),
            np.int64(g.stream_scalar), np.float64(lo), np.float64(hi), np.int32(clip is not None),
            np.int32(ops.noise_mode), np.int64(g.total), np.int64(g.numel), np.int64(g.C),
            np.int64(g.HW), np.int32(g.channels_last), address(grad), address(grad_c),
            np.int64(grad_c.stride(0) if grad_c is not None else 0), np.int32(grad is not None)),
           x_t.device)
    return ops.result(out)
