"""The noise stream as Triton device functions  (reference.noise: philox_words; the `normal`
op's kernel is in normal.py).

    words   = Philox4x32-10(counter (j, 0, sample, stream), key (seed lo, seed hi))
    u_k     = uint_to_uniform_float(word_k)         float32, bit-exact with the reference
    normal  = sqrt(-2 log max(u_0, 1e-7)) cos(2 pi u_1)

Philox is Triton's own `triton.language.random.philox_impl` (the generator of tl.randn), so
for sample = stream = 0 `stream_normal` IS tl.randn(seed, j). The key words (seed lo, seed hi)
are separate kernel arguments: a 64-bit seed never depends on how Triton types or specialises
an integer argument. Box-Muller is evaluated in float32 as
tl.randn does (within 1e-5 of the reference's float64-then-round) unless NORMAL_FP64, which
evaluates it in float64 and rounds once (bit-exact under the interpreter, and on GPUs up to the
last-ulp differences of libdevice's float64 log/cos, at the cost of float64 transcendentals).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.random import philox_impl as _philox_impl

from ..operands import seed_words
from . import record_decoration
from .launch import elementwise_block

record_decoration()

__all__ = ["stream_normal", "logical_index", "philox_words"]





@triton.jit
def uint_to_uniform_float(x):
    """reference.uint_to_uniform_float: uint32 as int32, negatives folded to ~x, times the scale."""
    x = x.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, -x - 1, x)
    return x.to(tl.float32) * 4.6566127342e-10


@triton.jit
def pair_uniform_to_normal(u1, u2, FP64: tl.constexpr):
    """reference.pair_uniform_to_normal, first output r cos(theta), returned as float32."""
    u1 = tl.maximum(1.0e-7, u1)
    if FP64:
        two_pi = tl.full(u2.shape, 6.283185307179586, tl.float64)
        theta = two_pi * u2.to(tl.float64)
        r = tl.sqrt(-2.0 * tl.log(u1.to(tl.float64)))
        z = (r * tl.cos(theta)).to(tl.float32)
    else:
        theta = 6.283185307179586 * u2
        r = tl.sqrt(-2.0 * tl.log(u1))
        z = r * tl.cos(theta)
    return z


@triton.jit
def key_words(j, seed_lo, seed_hi):
    """The Philox key (seed lo, seed hi) as uint32 blocks shaped like j (int64)."""
    return (j * 0 + seed_lo).to(tl.uint32), (j * 0 + seed_hi).to(tl.uint32)


@triton.jit
def stream_normal(seed_lo, seed_hi, n, j, mask, samples_ptr, stream_ptr, stream_scalar,
                  HAS_SAMPLES: tl.constexpr, HAS_STREAM: tl.constexpr, FP64: tl.constexpr):
    """Normals for counters (j, 0, samples[n], stream[n]) (int64 blocks n, j); NaN where the
    sample index or stream read from memory is outside [0, 2**32) (the device-side guard)."""
    if HAS_SAMPLES:
        sample = tl.load(samples_ptr + n, mask=mask, other=0).to(tl.int64)
    else:
        sample = n
    if HAS_STREAM:
        stream = tl.load(stream_ptr + n, mask=mask, other=0).to(tl.int64)
    else:
        stream = n * 0 + stream_scalar
    bad = ((sample >> 32) != 0) | ((stream >> 32) != 0)
    c0 = j.to(tl.uint32)
    c1 = c0 * 0
    k0, k1 = key_words(j, seed_lo, seed_hi)
    w0, w1, _, _ = _philox_impl(c0, c1, sample.to(tl.uint32), stream.to(tl.uint32), k0, k1)
    z = pair_uniform_to_normal(uint_to_uniform_float(w0), uint_to_uniform_float(w1), FP64)
    return tl.where(bad, float("nan"), z)


@triton.jit
def logical_index(m, C, HW, CHANNELS_LAST: tl.constexpr):
    """The C-order element index j within a sample for memory position m of that sample:
    m itself for contiguous tensors; for channels_last, m = hw * C + c  ->  j = c * HW + hw."""
    if CHANNELS_LAST:
        hw = m // C
        j = (m - hw * C) * HW + hw
    else:
        j = m
    return j


@triton.jit
def _words_kernel(words_ptr,         # (N, numel, 4) int64 output: the four uint32 words
                  uniforms_ptr,      # (N, numel, 2) float32 output: u_0, u_1
                  samples_ptr, seed_lo, seed_hi, stream_scalar, total, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n = offs // numel
    j = offs - n * numel
    sample = tl.load(samples_ptr + n, mask=mask, other=0).to(tl.uint32)
    stream = (n * 0 + stream_scalar).to(tl.uint32)
    c0 = j.to(tl.uint32)
    k0, k1 = key_words(j, seed_lo, seed_hi)
    w0, w1, w2, w3 = _philox_impl(c0, c0 * 0, sample, stream, k0, k1)
    tl.store(words_ptr + 4 * offs, w0.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * offs + 1, w1.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * offs + 2, w2.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * offs + 3, w3.to(tl.int64), mask=mask)
    tl.store(uniforms_ptr + 2 * offs, uint_to_uniform_float(w0), mask=mask)
    tl.store(uniforms_ptr + 2 * offs + 1, uint_to_uniform_float(w1), mask=mask)


def philox_words(seed: int, samples: torch.Tensor, stream: int, numel: int):
    """(words (N, numel, 4) int64 in [0, 2**32), uniforms (N, numel, 2) float32) from the
    Triton device functions: the integer side of the stream, for bit-exact tests."""
    n = samples.numel()
    words = torch.empty((n, numel, 4), dtype=torch.int64, device=samples.device)
    uniforms = torch.empty((n, numel, 2), dtype=torch.float32, device=samples.device)
    total = n * numel
    if total:
        block = elementwise_block(total)
        _words_kernel[(triton.cdiv(total, block),)](words, uniforms, samples, *seed_words(seed), int(stream),
                                                    total, numel, BLOCK=block)
    return words, uniforms
