"""LayerNorm + adaLN modulation forward and backward, CUDA C  (reference.layer_norm_modulate / _backward).

Same plan as the Triton kernels (kernels/triton/layer_norm_modulate.py): x read as (N, L, D)
through its (N, L) strides with a contiguous last dim; shift/scale float32 (N, D) through
strides. One block of 256 threads per token row: each thread strides over the features, and
the block sums (mean, then the centred variance; for dx the means of g and g x_hat) with a
fixed-shape tree in shared memory. The modulation gradients: one block per (n, 256 features),
thread t owns feature d and walks the L tokens in order (coalesced, deterministic, no atomics).
float32 arithmetic whatever the storage dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from .runtime import STORAGE_CUH, address, get_kernel, launch, storage_id

__all__ = ["forward", "backward"]

BLOCK = 256

_SOURCE = STORAGE_CUH + r"""
#define BLOCK 256

/* the sum of v over the block, the same order every time; every thread gets it */
__device__ float block_sum(float v, float* buffer) {
    buffer[threadIdx.x] = v;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) buffer[threadIdx.x] += buffer[threadIdx.x + half];
        __syncthreads();
    }
    const float total = buffer[0];
    __syncthreads();
    return total;
}

extern "C" __global__ void forward_kernel(
        unsigned long long x_addr,      /* (N, L, D) storage_t through strides sN, sL */
        unsigned long long shift_addr,  /* (N, D) float32 through strides shN, shD */
        unsigned long long scale_addr,  /* (N, D) float32 through strides scN, scD */
        unsigned long long y_addr,      /* (N, L, D) storage_t contiguous out */
        unsigned long long mean_addr,   /* (N L,) float32 out */
        unsigned long long rstd_addr,   /* (N L,) float32 out */
        long long L, long long D, long long sN, long long sL, long long shN, long long shD,
        long long scN, long long scD, float eps) {
    __shared__ float buffer[BLOCK];
    const storage_t* x = (const storage_t*)x_addr;
    const float* shift = (const float*)shift_addr;
    const float* scale = (const float*)scale_addr;
    storage_t* y = (storage_t*)y_addr;
    const long long row = blockIdx.x, n = row / L, l = row - n * L;
    const long long base = n * sN + l * sL;
    float s = 0.0f;
    for (long long d = threadIdx.x; d < D; d += BLOCK) s += load_f32(x, base + d);
    const float mean = block_sum(s, buffer) / (float)D;
    float s2 = 0.0f;
    for (long long d = threadIdx.x; d < D; d += BLOCK) {
        const float c = load_f32(x, base + d) - mean;
        s2 += c * c;
    }
    const float rstd = 1.0f / sqrtf(block_sum(s2, buffer) / (float)D + eps);   /* biased variance */
    for (long long d = threadIdx.x; d < D; d += BLOCK) {
        const float x_hat = (load_f32(x, base + d) - mean) * rstd;
        store_f32(y, row * D + d, x_hat * (1.0f + scale[n * scN + d * scD]) + shift[n * shN + d * shD]);
    }
    if (threadIdx.x == 0) {
        ((float*)mean_addr)[row] = mean;
        ((float*)rstd_addr)[row] = rstd;
    }
}

extern "C" __global__ void backward_dx_kernel(
        unsigned long long dy_addr,     /* (N, L, D) storage_t contiguous */
        unsigned long long x_addr,      /* (N, L, D) storage_t through strides sN, sL */
        unsigned long long scale_addr,  /* (N, D) float32 through strides scN, scD */
        unsigned long long mean_addr, unsigned long long rstd_addr,   /* (N L,) float32 */
        unsigned long long dx_addr,     /* (N, L, D) storage_t contiguous out */
        long long L, long long D, long long sN, long long sL, long long scN, long long scD) {
    __shared__ float buffer[BLOCK];
    const storage_t* dy = (const storage_t*)dy_addr;
    const storage_t* x = (const storage_t*)x_addr;
    const float* scale = (const float*)scale_addr;
    storage_t* dx = (storage_t*)dx_addr;
    const long long row = blockIdx.x, n = row / L, l = row - n * L;
    const long long base = n * sN + l * sL;
    const float mean = ((const float*)mean_addr)[row], rstd = ((const float*)rstd_addr)[row];
    float sg = 0.0f, sgx = 0.0f;
    for (long long d = threadIdx.x; d < D; d += BLOCK) {
        const float g = load_f32(dy, row * D + d) * (1.0f + scale[n * scN + d * scD]);
        sg += g;
        sgx += g * (load_f32(x, base + d) - mean) * rstd;
    }
    const float mean_g = block_sum(sg, buffer) / (float)D;
    const float mean_gx = block_sum(sgx, buffer) / (float)D;
    for (long long d = threadIdx.x; d < D; d += BLOCK) {
        const float g = load_f32(dy, row * D + d) * (1.0f + scale[n * scN + d * scD]);
        const float x_hat = (load_f32(x, base + d) - mean) * rstd;
        store_f32(dx, row * D + d, rstd * (g - mean_g - x_hat * mean_gx));
    }
}

extern "C" __global__ void backward_modulation_kernel(
        unsigned long long dy_addr,     /* (N, L, D) storage_t contiguous */
        unsigned long long x_addr,      /* (N, L, D) storage_t through strides sN, sL */
        unsigned long long mean_addr, unsigned long long rstd_addr,   /* (N L,) float32 */
        unsigned long long dshift_addr, /* (N, D) float32 out */
        unsigned long long dscale_addr, /* (N, D) float32 out */
        long long L, long long D, long long sN, long long sL) {
    const storage_t* dy = (const storage_t*)dy_addr;
    const storage_t* x = (const storage_t*)x_addr;
    const float* mean = (const float*)mean_addr;
    const float* rstd = (const float*)rstd_addr;
    const long long n = blockIdx.y, d = (long long)blockIdx.x * BLOCK + threadIdx.x;
    if (d >= D) return;
    float acc_shift = 0.0f, acc_scale = 0.0f;
    for (long long l = 0; l < L; ++l) {
        const long long row = n * L + l;
        const float g = load_f32(dy, row * D + d);
        acc_shift += g;
        acc_scale += g * (load_f32(x, n * sN + l * sL + d) - mean[row]) * rstd[row];
    }
    ((float*)dshift_addr)[n * D + d] = acc_shift;
    ((float*)dscale_addr)[n * D + d] = acc_scale;
}
"""


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()   # the one copy: a strided last dim


def forward(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float):
    """x (N, L, D), shift/scale (N, D) float32 -> y (N, L, D) contiguous, mean, rstd (N L,) float32."""
    x = _rows(x)
    n, length, d = x.shape
    y = torch.empty((n, length, d), device=x.device, dtype=x.dtype)
    mean = torch.empty(n * length, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    launch(get_kernel(_SOURCE, "forward_kernel", STORAGE_ID=storage_id(x.dtype)), (n * length,), (BLOCK,),
           (address(x), address(shift), address(scale), address(y), address(mean), address(rstd),
            np.int64(length), np.int64(d), np.int64(x.stride(0)), np.int64(x.stride(1)),
            np.int64(shift.stride(0)), np.int64(shift.stride(1)), np.int64(scale.stride(0)),
            np.int64(scale.stride(1)), np.float32(eps)), x.device)
    return y, mean, rstd


def backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             needs=(True, True, True)):
    """dy (N, L, D) contiguous -> dx (x's dtype, contiguous), dshift, dscale (N, D) float32 (None where not needed)."""
    x = _rows(x)
    n, length, d = x.shape
    sid = storage_id(x.dtype)
    dx = dshift = dscale = None
    strides = (np.int64(x.stride(0)), np.int64(x.stride(1)))
    if needs[0]:
        dx = torch.empty((n, length, d), device=x.device, dtype=x.dtype)
        launch(get_kernel(_SOURCE, "backward_dx_kernel", STORAGE_ID=sid), (n * length,), (BLOCK,),
               (address(dy), address(x), address(scale), address(mean), address(rstd), address(dx),
                np.int64(length), np.int64(d)) + strides + (np.int64(scale.stride(0)), np.int64(scale.stride(1))),
               x.device)
    if needs[1] or needs[2]:
        dshift = torch.empty((n, d), device=x.device, dtype=torch.float32)
        dscale = torch.empty_like(dshift)
        launch(get_kernel(_SOURCE, "backward_modulation_kernel", STORAGE_ID=sid), ((d + BLOCK - 1) // BLOCK, n),
               (BLOCK,), (address(dy), address(x), address(mean), address(rstd), address(dshift), address(dscale),
                          np.int64(length), np.int64(d)) + strides, x.device)
    return dx, (dshift if needs[1] else None), (dscale if needs[2] else None)
