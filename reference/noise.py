"""The project's one noise stream (DESIGN contract 2), in NumPy.

Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), as Random123
and Triton's `tl.randn` define it:

    key     = (seed & 0xffffffff, seed >> 32)
    counter = (j, 0, i, s)   j: flat C-order element index within one sample,
                             i: sample index, s: stream (which draw of that sample)
    u_k     = uint_to_uniform_float(word_k)      (Triton's, float32)
    normal  = sqrt(-2 log max(u_0, 1e-7)) cos(2 pi u_1)   (first output of Box-Muller)

For i = s = 0 this is `tl.randn(seed, j)`. Integer words and uniforms mirror Triton's float32
operation order and are bit-exact on every backend. The normal is evaluated in float64 and
rounded to float32 (see `pair_uniform_to_normal`): CPU backends match it bit-for-bit, float32
GPU kernels (Triton's own formula) within 1e-5.

Streams used by the project (so that draws never collide):
    SAMPLER_INIT_STREAM      x_T of a sampler
    sampler step k (0-based) stream k + 1
    TRAIN_STREAM_BASE + step the training noise of optimisation step `step`
"""

from __future__ import annotations

import numpy as np

from ._validate import check_seed

__all__ = [
    "philox4x32",
    "philox_words",
    "uint_to_uniform_float",
    "pair_uniform_to_normal",
    "normal",
    "uniform",
    "SAMPLER_INIT_STREAM",
    "TRAIN_STREAM_BASE",
    "sampler_step_stream",
]

PHILOX_KEY_A = np.uint32(0x9E3779B9)  # golden ratio, the Weyl key increment
PHILOX_KEY_B = np.uint32(0xBB67AE85)  # sqrt(3) - 1
PHILOX_ROUND_A = np.uint64(0xD2511F53)
PHILOX_ROUND_B = np.uint64(0xCD9E8D57)
_MASK32 = np.uint64(0xFFFFFFFF)
_UNIFORM_SCALE = np.float32(4.6566127342e-10)  # Triton's: (2**23 - 1) / 2**23 * 2**-31

SAMPLER_INIT_STREAM = 0
TRAIN_STREAM_BASE = 1 << 31


def sampler_step_stream(step: int) -> int:
    """The stream of the noise added by a sampler's `step`-th update (0-based)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if not 0 <= step < TRAIN_STREAM_BASE - 1:
        raise ValueError(f"step must lie in [0, {TRAIN_STREAM_BASE - 1}) (stream 0 is x_T, streams "
                         f">= {TRAIN_STREAM_BASE} are training's), got {step}")
    return int(step) + 1


def _as_uint32(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != np.uint32:
        raise TypeError(f"{name} must have dtype uint32, got {arr.dtype}")
    return arr


def philox4x32(counter, key, rounds: int = 10) -> np.ndarray:
    """Philox4x32-R on uint32 `counter[..., 4]` with uint32 `key[2]` -> uint32 `[..., 4]`."""
    counter = _as_uint32(counter, "counter")
    key = _as_uint32(key, "key")
    if counter.ndim < 1 or counter.shape[-1] != 4:
        raise ValueError(f"counter must have shape (..., 4), got {counter.shape}")
    if key.shape != (2,):
        raise ValueError(f"key must have shape (2,), got {key.shape}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative int, got {rounds!r}")
    c0, c1, c2, c3 = (counter[..., k].astype(np.uint64) for k in range(4))
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(rounds):
        prod_a = PHILOX_ROUND_A * c0  # full 64-bit products of 32-bit words
        prod_b = PHILOX_ROUND_B * c2
        c0, c1, c2, c3 = (
            ((prod_b >> np.uint64(32)) ^ c1 ^ k0) & _MASK32,
            prod_b & _MASK32,
            ((prod_a >> np.uint64(32)) ^ c3 ^ k1) & _MASK32,
            prod_a & _MASK32,
        )
        k0 = (k0 + np.uint64(PHILOX_KEY_A)) & _MASK32
        k1 = (k1 + np.uint64(PHILOX_KEY_B)) & _MASK32
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _check_index(values, name: str, max_ndim: int = 1) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool or arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0 and arr.dtype != bool:
            return arr.astype(np.uint32)
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim > max_ndim:
        raise ValueError(f"{name} must have at most {max_ndim} dimension(s), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= 2**32):
        raise ValueError(f"{name} must lie in [0, 2**32), got min {arr.min()} max {arr.max()}")
    return arr.astype(np.uint32)


def philox_words(seed: int, samples, stream, numel: int) -> np.ndarray:
    """The four Philox words for counters (j, 0, samples[n], stream[n]), j < numel.

    samples: (N,) integer sample indices; stream: an int or (N,) integers.
    Returns uint32 of shape (N, numel, 4).
    """
    seed = check_seed(seed)
    samples = _check_index(samples, "samples").reshape(-1)  # an int is one sample
    stream = _check_index(stream, "stream")
    if stream.ndim == 0:
        stream = np.full(samples.shape, stream, dtype=np.uint32)
    stream = stream.reshape(-1)
    if stream.shape != samples.shape:
        raise ValueError(f"stream must be an int or have shape {samples.shape}, got {stream.shape}")
    if isinstance(numel, bool) or not isinstance(numel, (int, np.integer)) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    if numel > 2**32:
        raise ValueError(f"numel must be <= 2**32 (the element counter is 32-bit), got {numel}")
    counter = np.zeros((samples.size, int(numel), 4), dtype=np.uint32)
    counter[..., 0] = np.arange(numel, dtype=np.uint64).astype(np.uint32)[None, :]
    counter[..., 2] = samples[:, None]
    counter[..., 3] = stream[:, None]
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    return philox4x32(counter, key)


def uint_to_uniform_float(x) -> np.ndarray:
    """Triton's uint32 -> float32 uniform in [0, 1): reinterpret as int32, fold negatives."""
    x = _as_uint32(x, "x").view(np.int32)
    with np.errstate(over="ignore"):
        x = np.where(x < 0, -x - np.int32(1), x)  # int32 wrap-around, as on the GPU
    return x.astype(np.float32) * _UNIFORM_SCALE


def pair_uniform_to_normal(u1, u2) -> tuple[np.ndarray, np.ndarray]:
    """Box-Muller on float32 uniforms, as Triton's pair_uniform_to_normal, rounded once to float32.

    u1 is clamped at 1e-7 in float32 as Triton does; then r = sqrt(-2 log u1), theta = 2 pi u2
    and r cos(theta), r sin(theta) are evaluated in float64 and rounded to float32. Float32
    log/cos differ by an ulp between math libraries (NumPy vs torch vs CUDA); the float64
    route makes every CPU backend agree bit-for-bit, and float32 GPU kernels agree within 1e-5.
    """
    u1 = np.maximum(np.float32(1.0e-7), np.asarray(u1, dtype=np.float32)).astype(np.float64)
    theta = 6.283185307179586 * np.asarray(u2, dtype=np.float32).astype(np.float64)
    r = np.sqrt(-2.0 * np.log(u1))
    return (r * np.cos(theta)).astype(np.float32), (r * np.sin(theta)).astype(np.float32)


def _sample_shape(sample_shape) -> tuple[int, ...]:
    if isinstance(sample_shape, (int, np.integer)) and not isinstance(sample_shape, bool):
        sample_shape = (int(sample_shape),)
    try:
        dims = tuple(sample_shape)
    except TypeError:
        raise TypeError(f"sample_shape must be an int or a tuple of ints, got {sample_shape!r}") from None
    if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in dims):
        raise TypeError(f"sample_shape must hold ints, got {sample_shape!r}")
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise ValueError(f"sample_shape must be non-negative, got {shape}")
    return shape


def normal(seed: int, samples, stream, sample_shape) -> np.ndarray:
    """float32 standard normals of shape (len(samples), *sample_shape) from the noise stream.

    Element j (flat, C order) of sample samples[n] uses counter (j, 0, samples[n], stream).
    """
    shape = _sample_shape(sample_shape)
    numel = int(np.prod(shape, dtype=np.int64))
    words = philox_words(seed, samples, stream, numel)
    u1 = uint_to_uniform_float(words[..., 0])
    u2 = uint_to_uniform_float(words[..., 1])
    z, _ = pair_uniform_to_normal(u1, u2)
    return z.reshape((words.shape[0],) + shape)


def uniform(seed: int, samples, stream, sample_shape) -> np.ndarray:
    """float32 uniforms in [0, 1) from word 0 of the same counters as `normal`."""
    shape = _sample_shape(sample_shape)
    numel = int(np.prod(shape, dtype=np.int64))
    words = philox_words(seed, samples, stream, numel)
    return uint_to_uniform_float(words[..., 0]).reshape((words.shape[0],) + shape)
