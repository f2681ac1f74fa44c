"""The fused Langevin update, CUDA C  (reference.langevin_step; the score samplers' step).

    score  = c1 out                      float64
    x_next = (c0 x + c2 score) + c3 z    (z only where c3 != 0)

Every product and sum is an explicit round-to-nearest operation in the reference's order (no
FMA contraction), so with the same z the float32 result equals the reference's bit for bit.
"""

from __future__ import annotations

import numpy as np

from .. import config
from ..operands import langevin_step_operands
from .philox import PHILOX_CUH
from .runtime import STORAGE_CUH, address, get_kernel, grid_1d, launch, storage_id

__all__ = ["langevin_step"]


_SOURCE = STORAGE_CUH + PHILOX_CUH + r"""
extern "C" __global__ void langevin_step_kernel(
        unsigned long long x_addr,             /* (N, ...) storage_t, memory order of its layout */
        unsigned long long model_output_addr,  /* (N, ...) the model output (score = c1 out) */
        unsigned long long noise_addr,         /* (N, ...) z (noise_mode 1) */
        unsigned long long x_next_addr,        /* (N, ...) out, may alias x */
        unsigned long long coefficients_addr,  /* (N, 4) float64, rows coefficient_stride apart */
        long long coefficient_stride,          /* 4, or 0 for one row shared by all samples */
        unsigned long long samples_addr, unsigned long long streams_addr,  /* (N,) int64 or 0 */
        unsigned int seed_lo, unsigned int seed_hi, long long stream_scalar, int noise_mode,
        long long total, long long numel, long long C, long long HW, int channels_last) {
    const storage_t* x_in = (const storage_t*)x_addr;
    const storage_t* model_output = (const storage_t*)model_output_addr;
    const storage_t* noise = (const storage_t*)noise_addr;
    storage_t* x_next = (storage_t*)x_next_addr;
    const double* coefficients = (const double*)coefficients_addr;
    const long long* samples = (const long long*)samples_addr;
    const long long* streams = (const long long*)streams_addr;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long n = i / numel;
        const double* c = coefficients + coefficient_stride * n;
        const double x = (double)load_f32(x_in, i);
        const double score = __dmul_rn(c[1], (double)load_f32(model_output, i));
        double value = __dadd_rn(__dmul_rn(c[0], x), __dmul_rn(c[2], score));
        const double noise_scale = c[3];
        if (noise_scale != 0.0) {
            if (noise_mode == 1) {
                value = __dadd_rn(value, __dmul_rn(noise_scale, (double)load_f32(noise, i)));
            } else if (noise_mode == 2) {
                long long sample, stream;
                sample_and_stream(n, samples, streams, stream_scalar, &sample, &stream);
                const float z = stream_normal(seed_lo, seed_hi,
                                              logical_index(i - n * numel, C, HW, channels_last),
                                              sample, stream);
                value = __dadd_rn(value, __dmul_rn(noise_scale, (double)z));
            } else {
                value = __longlong_as_double(0x7ff8000000000000ll);  /* c3 != 0, no noise: NaN */
            }
        }
        store_f32(x_next, i, (float)value);
    }
}
"""

BLOCK = 256


def langevin_step(x, model_output, coefficients, noise, seed, samples, stream, out):
    """kernels.langevin_step on CuPy (validated inputs; coefficients (N, 4) float64 on device)."""
    ops = langevin_step_operands(x, model_output, noise, coefficients, seed, stream, out)
    g = ops.geometry
    samples = samples.contiguous() if samples is not None else None  # the kernel reads samples[n]
    kernel = get_kernel(_SOURCE, "langevin_step_kernel", STORAGE_ID=storage_id(x.dtype),
                        NORMAL_FP64=config.NORMAL_FP64)
    launch(kernel, (grid_1d(g.total, BLOCK, x.device),), (BLOCK,),
           (address(ops.x_t), address(ops.model_output), address(ops.noise), address(ops.x_prev),
            address(ops.coefficients), np.int64(ops.coefficients.stride(0)), address(samples),
            address(g.stream_tensor), np.uint32(g.seed_lo), np.uint32(g.seed_hi),
            np.int64(g.stream_scalar), np.int32(ops.noise_mode), np.int64(g.total),
            np.int64(g.numel), np.int64(g.C), np.int64(g.HW), np.int32(g.channels_last)),
           x.device)
    return ops.result(out)
