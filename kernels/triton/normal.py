"""`normal`, Triton: N(0, 1) draws of the noise stream  (reference.normal; DESIGN contract 2).

The draw itself is `philox.stream_normal` (shared with q_sample and sampler_step, which draw
their noise in-kernel); this file is the standalone launch of it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import config
from ..operands import seed_words
from . import record_decoration
from .launch import elementwise_grid
from .philox import sample_block, stream_normal

record_decoration()

__all__ = ["normal"]


@triton.jit
def _normal_kernel(out_ptr,          # (N, numel) output, C order, any float dtype
                   samples_ptr,      # (N,) contiguous int64 sample indices (unused without HAS_SAMPLES)
                   stream_ptr,       # (N,) contiguous int64 streams (unused without HAS_STREAM)
                   seed_lo, seed_hi, stream_scalar, numel, blocks_per_sample,
                   HAS_SAMPLES: tl.constexpr, HAS_STREAM: tl.constexpr, FP64: tl.constexpr,
                   BLOCK: tl.constexpr):
    n, j, mask, offs = sample_block(numel, blocks_per_sample, BLOCK)
    z = stream_normal(seed_lo, seed_hi, n, j, samples_ptr, stream_ptr, stream_scalar,
                      HAS_SAMPLES, HAS_STREAM, FP64)
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)


def normal(seed: int, samples: torch.Tensor, stream, shape: tuple[int, ...],
           dtype: torch.dtype) -> torch.Tensor:
    """kernels.normal on the Triton backend (validated inputs; samples (N,) int64 on the device).
    The draw is float32 (float64 Box-Muller with NORMAL_FP64, still rounded to float32, as the
    reference) and stored in `dtype` (float32, float64, bfloat16, float16)."""
    samples = samples.contiguous()
    n = samples.numel()
    numel = 1
    for d in shape:
        numel *= d
    out = torch.empty((n,) + tuple(shape), dtype=dtype, device=samples.device)
    has_stream = isinstance(stream, torch.Tensor)
    if has_stream:
        stream = stream.contiguous()
    block, grid = elementwise_grid(n, numel)
    _normal_kernel[grid](
        out, samples, stream if has_stream else samples, *seed_words(seed), 0 if has_stream else int(stream),
        numel, grid[0] // n, HAS_SAMPLES=True, HAS_STREAM=has_stream, FP64=config.NORMAL_FP64, BLOCK=block)
    return out
