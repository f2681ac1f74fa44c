"""`normal`, CUDA C: N(0, 1) draws of the noise stream  (reference.normal; DESIGN contract 2).

The draw itself is `stream_normal` of PHILOX_CUH (shared with q_sample and sampler_step, which
draw their noise in-kernel); this file is the standalone launch of it.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import config
from .philox import PHILOX_CUH, seed_words
from .runtime import STORAGE_CUH, address, get_kernel, grid_1d, launch, storage_id

__all__ = ["normal"]

_SOURCE = STORAGE_CUH + PHILOX_CUH + r"""
extern "C" __global__ void normal_kernel(
        unsigned long long out_addr,      /* (N, numel) storage_t out, C order */
        unsigned long long samples_addr,  /* (N,) int64 sample indices */
        unsigned long long streams_addr,  /* (N,) int64 streams, or 0: stream_scalar */
        unsigned int seed_lo, unsigned int seed_hi, long long stream_scalar,
        long long total, long long numel) {
    storage_t* out = (storage_t*)out_addr;
    const long long* samples = (const long long*)samples_addr;
    const long long* streams = (const long long*)streams_addr;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long n = i / numel;
        long long sample, stream;
        sample_and_stream(n, samples, streams, stream_scalar, &sample, &stream);
        store_f32(out, i, stream_normal(seed_lo, seed_hi, i - n * numel, sample, stream));
    }
}
"""

BLOCK = 256


def normal(seed: int, samples: torch.Tensor, stream, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """kernels.normal on the CuPy backend (validated inputs; samples (N,) int64 on the device)."""
    samples = samples.contiguous()  # the kernel reads samples[n]
    if isinstance(stream, torch.Tensor):
        stream = stream.contiguous()
    n = samples.numel()
    numel = 1
    for d in shape:
        numel *= d
    device = samples.device
    storage = dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
    out = torch.empty((n,) + tuple(shape), dtype=storage, device=device)
    total = n * numel
    has_stream = isinstance(stream, torch.Tensor)
    kernel = get_kernel(_SOURCE, "normal_kernel", STORAGE_ID=storage_id(storage),
                        NORMAL_FP64=config.NORMAL_FP64)
    lo, hi = seed_words(seed)
    launch(kernel, (grid_1d(total, BLOCK, device),), (BLOCK,),
           (address(out), address(samples), address(stream if has_stream else None), lo, hi,
            np.int64(0 if has_stream else stream), np.int64(total), np.int64(numel)), device)
    return out if storage == dtype else out.to(dtype)
