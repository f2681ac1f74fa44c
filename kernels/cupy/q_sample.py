"""Forward noising in one pass, CUDA C  (reference.q_sample; DDPM Eq. 4).

    x_t = sqrt_alpha_bar[t_n] x0 + sqrt_one_minus_alpha_bar[t_n] eps

A grid-stride loop over memory (every tensor in x0's layout, NCHW-contiguous or channels_last);
float32 arithmetic with explicit round-to-nearest products and sum (no FMA contraction), i.e.
the reference's float32 evaluation. With draw_noise, eps comes from the noise stream and is
written out. t out of [0, T) gives NaN for that sample (device-side guard, no sync).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import config
from ..operands import q_sample_operands
from .philox import PHILOX_CUH
from .runtime import STORAGE_CUH, address, get_kernel, grid_1d, launch, storage_id

__all__ = ["q_sample"]

_SOURCE = STORAGE_CUH + PHILOX_CUH + r"""
extern "C" __global__ void q_sample_kernel(
        unsigned long long x0_addr,         /* (N, ...) storage_t, memory order of its layout */
        unsigned long long noise_addr,      /* (N, ...) storage_t eps (unused with draw_noise) */
        unsigned long long x_t_addr,        /* (N, ...) storage_t out */
        unsigned long long noise_out_addr,  /* (N, ...) storage_t drawn eps out (draw_noise) */
        unsigned long long t_addr,          /* (N,) int64 */
        unsigned long long sqrt_alpha_bar_addr,            /* (T,) float32 */
        unsigned long long sqrt_one_minus_alpha_bar_addr,  /* (T,) float32 */
        unsigned long long samples_addr,    /* (N,) int64 or 0 (= arange) */
        unsigned long long streams_addr,    /* (N,) int64 or 0 (= stream_scalar) */
        unsigned int seed_lo, unsigned int seed_hi, long long stream_scalar,
        long long total, long long numel, long long T, long long C, long long HW,
        int draw_noise, int channels_last) {
    const storage_t* x0 = (const storage_t*)x0_addr;
    const storage_t* noise = (const storage_t*)noise_addr;
    storage_t* x_t = (storage_t*)x_t_addr;
    storage_t* noise_out = (storage_t*)noise_out_addr;
    const long long* t = (const long long*)t_addr;
    const float* sqrt_alpha_bar = (const float*)sqrt_alpha_bar_addr;
    const float* sqrt_one_minus_alpha_bar = (const float*)sqrt_one_minus_alpha_bar_addr;
    const long long* samples = (const long long*)samples_addr;
    const long long* streams = (const long long*)streams_addr;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long n = i / numel;
        const long long tn = t[n];
        float eps;
        if (draw_noise) {
            long long sample, stream;
            sample_and_stream(n, samples, streams, stream_scalar, &sample, &stream);
            eps = stream_normal(seed_lo, seed_hi, logical_index(i - n * numel, C, HW, channels_last),
                                sample, stream);
            store_f32(noise_out, i, eps);
        } else {
            eps = load_f32(noise, i);
        }
        float value;
        if (tn < 0 || tn >= T) {
            value = __int_as_float(0x7fc00000);  /* t out of range: NaN, never a table overread */
        } else {
            value = __fadd_rn(__fmul_rn(sqrt_alpha_bar[tn], load_f32(x0, i)),
                              __fmul_rn(sqrt_one_minus_alpha_bar[tn], eps));
        }
        store_f32(x_t, i, value);
    }
}
"""

BLOCK = 256


def q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, noise, seed, samples, stream):
    """kernels.q_sample on CuPy (validated inputs). x0 in neither NCHW-contiguous nor
    channels_last layout is copied once to contiguous; noise is brought to x0's layout; t and
    float64 tables are converted (t to int64, tables to float32, as the reference casts them)."""
    ops = q_sample_operands(x0, noise, seed, stream)
    g = ops.geometry
    t = t.to(torch.int64).contiguous()  # t, samples, streams: any 1-D view; the kernel reads [n]
    samples = samples.contiguous() if samples is not None else None
    sqrt_alpha_bar = sqrt_alpha_bar.to(torch.float32).contiguous()
    sqrt_one_minus_alpha_bar = sqrt_one_minus_alpha_bar.to(torch.float32).contiguous()
    kernel = get_kernel(_SOURCE, "q_sample_kernel", STORAGE_ID=storage_id(x0.dtype),
                        NORMAL_FP64=config.NORMAL_FP64)
    launch(kernel, (grid_1d(g.total, BLOCK, x0.device),), (BLOCK,),
           (address(ops.x0), address(ops.noise), address(ops.x_t), address(ops.noise_out),
            address(t), address(sqrt_alpha_bar), address(sqrt_one_minus_alpha_bar),
            address(samples), address(g.stream_tensor), np.uint32(g.seed_lo), np.uint32(g.seed_hi),
            np.int64(g.stream_scalar), np.int64(g.total), np.int64(g.numel),
            np.int64(sqrt_alpha_bar.numel()), np.int64(g.C), np.int64(g.HW), np.int32(ops.draw),
            np.int32(g.channels_last)), x0.device)
    return ops.result()
