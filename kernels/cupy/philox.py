"""The noise stream in CUDA C  (reference.noise: philox4x32, uint_to_uniform_float; the
`normal` op's kernel is in normal.py).

PHILOX_CUH is included by every CuPy kernel that draws noise:

    philox4x32_10(counter (j, 0, sample, stream), key (seed lo, seed hi))   Salmon et al. 2011
    uint_to_uniform_float(word)      Triton's, float32, bit-exact with the reference
    stream_normal(...)               Box-Muller, first output; float32 as tl.randn (within 1e-5
                                     of the reference), or float64 rounded once when compiled
                                     with NORMAL_FP64=1 (DDPM_KERNELS_NORMAL_FP64=1)
"""

from __future__ import annotations

import numpy as np
import torch

from .. import operands
from .. import config
from .runtime import STORAGE_CUH, address, get_kernel, grid_1d, launch

__all__ = ["PHILOX_CUH", "seed_words", "philox_words"]

PHILOX_CUH = r"""
#ifndef NORMAL_FP64
#define NORMAL_FP64 0
#endif
struct PhiloxWords { unsigned int w0, w1, w2, w3; };

/* Philox4x32-10 on counter (c0, c1, c2, c3) with key (k0, k1)  (Random123; reference.philox4x32) */
__device__ __forceinline__ PhiloxWords philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2,
                                                     unsigned int c3, unsigned int k0, unsigned int k1) {
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        const unsigned int hi_b = __umulhi(0xCD9E8D57u, c2), lo_b = 0xCD9E8D57u * c2;
        const unsigned int hi_a = __umulhi(0xD2511F53u, c0), lo_a = 0xD2511F53u * c0;
        c0 = hi_b ^ c1 ^ k0;
        c1 = lo_b;
        c2 = hi_a ^ c3 ^ k1;
        c3 = lo_a;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    PhiloxWords w = {c0, c1, c2, c3};
    return w;
}

/* Triton's uint_to_uniform_float: the word as int32, negatives folded to ~x (= -x - 1), times
   (2**23 - 1) / 2**23 * 2**-31 in float32 */
__device__ __forceinline__ float uint_to_uniform_float(unsigned int word) {
    int x = (int)word;
    if (x < 0) x = ~x;
    return __fmul_rn((float)x, 4.6566127342e-10f);
}

/* Box-Muller, first output r cos(theta)  (reference.pair_uniform_to_normal) */
__device__ __forceinline__ float pair_uniform_to_normal(float u1, float u2) {
    u1 = fmaxf(1.0e-7f, u1);
#if NORMAL_FP64
    const double theta = 6.283185307179586 * (double)u2;
    const double r = sqrt(-2.0 * log((double)u1));
    return (float)(r * cos(theta));
#else
    const float theta = 6.283185307179586f * u2;
    const float r = sqrtf(-2.0f * logf(u1));
    return r * cosf(theta);
#endif
}

/* The normal of counter (j, 0, sample, stream); NaN when sample or stream is outside [0, 2**32)
   (the device-side guard for indices that were not checked on the host). */
__device__ __forceinline__ float stream_normal(unsigned int seed_lo, unsigned int seed_hi,
                                               long long j, long long sample, long long stream) {
    if ((sample >> 32) != 0 || (stream >> 32) != 0) return __int_as_float(0x7fc00000);
    const PhiloxWords w = philox4x32_10((unsigned int)j, 0u, (unsigned int)sample,
                                        (unsigned int)stream, seed_lo, seed_hi);
    return pair_uniform_to_normal(uint_to_uniform_float(w.w0), uint_to_uniform_float(w.w1));
}

/* The sample index and stream of row n: from memory when given, else n and the scalar. */
__device__ __forceinline__ void sample_and_stream(long long n, const long long* samples,
                                                  const long long* streams, long long stream_scalar,
                                                  long long* sample, long long* stream) {
    *sample = samples != 0 ? samples[n] : n;
    *stream = streams != 0 ? streams[n] : stream_scalar;
}

/* j, the C-order index within a sample, of memory position m (channels_last: m = hw C + c) */
__device__ __forceinline__ long long logical_index(long long m, long long C, long long HW,
                                                   int channels_last) {
    if (!channels_last) return m;
    const long long hw = m / C;
    return (m - hw * C) * HW + hw;
}
"""

_WORDS_SOURCE = STORAGE_CUH + PHILOX_CUH + r"""
extern "C" __global__ void words_kernel(
        unsigned long long words_addr,     /* (N, numel, 4) int64 out */
        unsigned long long uniforms_addr,  /* (N, numel, 2) float32 out */
        unsigned long long samples_addr, unsigned int seed_lo, unsigned int seed_hi,
        long long stream_scalar, long long total, long long numel) {
    long long* words = (long long*)words_addr;
    float* uniforms = (float*)uniforms_addr;
    const long long* samples = (const long long*)samples_addr;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long n = i / numel;
        const PhiloxWords w = philox4x32_10((unsigned int)(i - n * numel), 0u, (unsigned int)samples[n],
                                            (unsigned int)stream_scalar, seed_lo, seed_hi);
        words[4 * i] = w.w0; words[4 * i + 1] = w.w1; words[4 * i + 2] = w.w2; words[4 * i + 3] = w.w3;
        uniforms[2 * i] = uint_to_uniform_float(w.w0);
        uniforms[2 * i + 1] = uint_to_uniform_float(w.w1);
    }
}
"""

BLOCK = 256


def seed_words(seed: int) -> tuple[np.uint32, np.uint32]:
    """The Philox key words as the uint32 kernel arguments CuPy needs."""
    lo, hi = operands.seed_words(seed)
    return np.uint32(lo), np.uint32(hi)


def philox_words(seed: int, samples: torch.Tensor, stream: int, numel: int):
    """(words (N, numel, 4) int64, uniforms (N, numel, 2) float32) from the CUDA functions."""
    samples = samples.contiguous()  # the kernel reads samples[n]
    n = samples.numel()
    device = samples.device
    words = torch.empty((n, numel, 4), dtype=torch.int64, device=device)
    uniforms = torch.empty((n, numel, 2), dtype=torch.float32, device=device)
    total = n * numel
    if total:
        kernel = get_kernel(_WORDS_SOURCE, "words_kernel", STORAGE_ID=0, NORMAL_FP64=config.NORMAL_FP64)
        lo, hi = seed_words(seed)
        launch(kernel, (grid_1d(total, BLOCK, device),), (BLOCK,),
               (address(words), address(uniforms), address(samples), lo, hi, np.int64(stream),
                np.int64(total), np.int64(numel)), device)
    return words, uniforms
