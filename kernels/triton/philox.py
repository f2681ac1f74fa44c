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
from .launch import elementwise_grid

record_decoration()

__all__ = ["stream_normal", "logical_index", "sample_block", "philox_words"]





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
def to_u32(x):
    """An integer kernel argument (int32/int64, or a constexpr when Triton specialised a 1) as a
    uint32 scalar."""
    return (tl.full([], 0, tl.uint32) + x).to(tl.uint32)


@triton.jit
def stream_normal(seed_lo, seed_hi, n, j, samples_ptr, stream_ptr, stream_scalar,
                  HAS_SAMPLES: tl.constexpr, HAS_STREAM: tl.constexpr, FP64: tl.constexpr):
    """Normals for counters (j, 0, samples[n], stream[n]) for one sample n (an int32 scalar: the
    elementwise kernels give each program elements of one sample) and a block j of element
    indices (uint32); NaN where the sample index or stream read from memory is outside
    [0, 2**32) (the device-side guard). samples/stream are contiguous (N,) int64."""
    if HAS_SAMPLES:
        sample = tl.load(samples_ptr + n).to(tl.int64)
    else:
        sample = n.to(tl.int64)
    if HAS_STREAM:
        stream = tl.load(stream_ptr + n).to(tl.int64)
    else:
        stream = tl.full([], 0, tl.int64) + stream_scalar
    bad = ((sample >> 32) != 0) | ((stream >> 32) != 0)
    c0 = j.to(tl.uint32)
    c1 = c0 * 0
    c2 = c1 + sample.to(tl.uint32)
    c3 = c1 + stream.to(tl.uint32)
    k0 = c1 + to_u32(seed_lo)
    k1 = c1 + to_u32(seed_hi)
    w0, w1, _, _ = _philox_impl(c0, c1, c2, c3, k0, k1)
    z = pair_uniform_to_normal(uint_to_uniform_float(w0), uint_to_uniform_float(w1), FP64)
    return tl.where(bad, float("nan"), z)


@triton.jit
def logical_index(m, C, HW, CHANNELS_LAST: tl.constexpr):
    """The C-order element index j (uint32) within a sample for memory position m (a block of
    non-negative ints < 2**32, the elements of a sample are fewer) of that sample: m itself for
    contiguous tensors; for channels_last, m = hw * C + c  ->  j = c * HW + hw, with one 32-bit
    unsigned division (a 64-bit one costs several times more instructions per element)."""
    m = m.to(tl.uint32)
    if CHANNELS_LAST:
        c_ = to_u32(C)
        hw = m // c_
        j = (m - hw * c_) * to_u32(HW) + hw
    else:
        j = m
    return j


@triton.jit
def sample_block(numel, blocks_per_sample, BLOCK: tl.constexpr):
    """The elementwise kernels' indexing: program p covers BLOCK elements of sample
    n = p // blocks_per_sample (one scalar division per program, none per element).
    Returns (n int32 scalar, j int64 block of in-sample positions, mask j < numel,
    offs = n numel + j the int64 memory offsets)."""
    pid = tl.program_id(0)
    n = pid // blocks_per_sample
    j = (pid - n * blocks_per_sample).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = j < numel
    offs = n.to(tl.int64) * numel + j
    return n, j, mask, offs


@triton.jit
def _words_kernel(words_ptr,         # (N, numel, 4) int64 output: the four uint32 words
                  uniforms_ptr,      # (N, numel, 2) float32 output: u_0, u_1
                  samples_ptr, seed_lo, seed_hi, stream_scalar, numel, blocks_per_sample,
                  BLOCK: tl.constexpr):
    n, j, mask, offs = sample_block(numel, blocks_per_sample, BLOCK)
    c0 = j.to(tl.uint32)
    c1 = c0 * 0
    c2 = c1 + tl.load(samples_ptr + n).to(tl.uint32)
    c3 = c1 + to_u32(stream_scalar)
    w0, w1, w2, w3 = _philox_impl(c0, c1, c2, c3, c1 + to_u32(seed_lo), c1 + to_u32(seed_hi))
    tl.store(words_ptr + 4 * offs, w0.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * offs + 1, w1.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * offs + 2, w2.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * offs + 3, w3.to(tl.int64), mask=mask)
    tl.store(uniforms_ptr + 2 * offs, uint_to_uniform_float(w0), mask=mask)
    tl.store(uniforms_ptr + 2 * offs + 1, uint_to_uniform_float(w1), mask=mask)


def philox_words(seed: int, samples: torch.Tensor, stream: int, numel: int):
    """(words (N, numel, 4) int64 in [0, 2**32), uniforms (N, numel, 2) float32) from the
    Triton device functions: the integer side of the stream, for bit-exact tests."""
    samples = samples.contiguous()
    n = samples.numel()
    words = torch.empty((n, numel, 4), dtype=torch.int64, device=samples.device)
    uniforms = torch.empty((n, numel, 2), dtype=torch.float32, device=samples.device)
    if n * numel:
        block, grid = elementwise_grid(n, numel)
        _words_kernel[grid](words, uniforms, samples, *seed_words(seed), int(stream), numel,
                            grid[0] // n, BLOCK=block)
    return words, uniforms
