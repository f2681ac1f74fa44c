"""reference.noise: the Philox4x32-10 noise stream of DESIGN contract 2.

Known answers (Random123's kat_vectors), the counter layout, Triton's uniform and Box-Muller,
batch invariance, moments of 1e6 draws, a cross-check against Triton's own tl.philox /
tl.randn run in the interpreter, and bad input.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close
from reference import (
    SAMPLER_INIT_STREAM,
    TRAIN_STREAM_BASE,
    normal,
    pair_uniform_to_normal,
    philox4x32,
    philox_words,
    sampler_step_stream,
    uint_to_uniform_float,
    uniform,
)

u32 = lambda *values: np.array(values, dtype=np.uint32)  # noqa: E731

# Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key) -> output.
PHILOX_KAT = [
    (u32(0, 0, 0, 0), u32(0, 0), u32(0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (u32(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), u32(0xFFFFFFFF, 0xFFFFFFFF),
     u32(0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (u32(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), u32(0xA4093822, 0x299F31D0),
     u32(0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox4x32_10_known_answers(counter, key, expected):
    out = philox4x32(counter, key)
    assert out.dtype == np.uint32
    assert out.tolist() == expected.tolist()


def test_philox4x32_is_elementwise_over_counter_batches():
    counters = np.stack([kat[0] for kat in PHILOX_KAT])                       # (3, 4), one key
    batched = philox4x32(counters.reshape(3, 1, 4), u32(7, 9))
    for k in range(3):
        assert batched[k, 0].tolist() == philox4x32(counters[k], u32(7, 9)).tolist()
    assert philox4x32(counters[0], u32(0, 0), rounds=0).tolist() == [0, 0, 0, 0]  # 0 rounds: identity


@given(seed=st.integers(0, 2**64 - 1), sample=st.integers(0, 2**32 - 1), stream=st.integers(0, 2**32 - 1),
       numel=st.integers(1, 9))
def test_normal_uses_counter_j_0_sample_stream_and_split_seed(seed, sample, stream, numel):
    # counter (j, 0, i, s), key (seed lo, seed hi); normal = Box-Muller of words 0 and 1.
    counter = np.zeros((numel, 4), dtype=np.uint32)
    counter[:, 0] = np.arange(numel)
    counter[:, 2], counter[:, 3] = sample, stream
    words = philox4x32(counter, u32(seed & 0xFFFFFFFF, seed >> 32))
    assert philox_words(seed, [sample], stream, numel)[0].tolist() == words.tolist()
    z, _ = pair_uniform_to_normal(uint_to_uniform_float(words[:, 0]), uint_to_uniform_float(words[:, 1]))
    got = normal(seed, [sample], stream, (numel,))
    assert got.dtype == np.float32 and got.shape == (1, numel)
    assert got[0].tobytes() == z.tobytes()
    assert uniform(seed, [sample], stream, (numel,))[0].tobytes() == uint_to_uniform_float(words[:, 0]).tobytes()


def test_uint_to_uniform_float_is_tritons_map_into_0_1():
    # reinterpret as int32, fold negatives (-x - 1), times 4.6566127342e-10 in float32
    words = u32(0, 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 0x12345678)
    u = uint_to_uniform_float(words)
    assert u.dtype == np.float32
    as_int = words.view(np.int32).astype(np.int64)
    folded = np.where(as_int < 0, -as_int - 1, as_int)
    assert u.tobytes() == (folded.astype(np.float32) * np.float32(4.6566127342e-10)).tobytes()
    assert u[0] == 0.0 and u[5] == 0.0 and u[3] == u[2]
    assert u.max() < 1.0                                            # the largest word stays below 1
    draws = uniform(3, np.arange(64), 5, (1000,))
    assert draws.min() >= 0.0 and draws.max() < 1.0


def test_pair_uniform_to_normal_clamps_u1_and_rounds_once_from_float64():
    u1 = np.array([0.0, 1e-9, 0.25, 0.5, 0.9999999], dtype=np.float32)
    u2 = np.array([0.0, 0.0, 0.125, 0.75, 0.3], dtype=np.float32)
    z0, z1 = pair_uniform_to_normal(u1, u2)
    assert z0.dtype == np.float32 and z1.dtype == np.float32
    clamped = np.maximum(u1, np.float32(1e-7)).astype(np.float64)
    r = np.sqrt(-2.0 * np.log(clamped))
    theta = 2.0 * np.pi * u2.astype(np.float64)
    assert z0.tobytes() == (r * np.cos(theta)).astype(np.float32).tobytes()
    assert z1.tobytes() == (r * np.sin(theta)).astype(np.float32).tobytes()
    assert z0[0] == z0[1] == np.float32(np.sqrt(-2.0 * np.log(np.float64(np.float32(1e-7)))))  # clamped


@given(seed=st.integers(0, 2**40), data=st.data())
def test_noise_of_sample_i_does_not_depend_on_the_batch(seed, data):
    # The same global sample index gives the same noise whatever else is drawn with it.
    full = data.draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=12, unique=True), label="samples")
    subset = data.draw(st.lists(st.sampled_from(full), min_size=1, max_size=len(full), unique=True), label="subset")
    stream = data.draw(st.integers(0, 1000), label="stream")
    big = normal(seed, full, stream, (3, 2))
    small = normal(seed, subset, stream, (3, 2))
    for row, sample in enumerate(subset):
        assert small[row].tobytes() == big[full.index(sample)].tobytes()


def test_streams_samples_and_seeds_give_different_noise():
    base = normal(0, [0], 0, (64,))
    assert not np.array_equal(base, normal(0, [0], 1, (64,)))     # next stream
    assert not np.array_equal(base, normal(0, [1], 0, (64,)))     # next sample
    assert not np.array_equal(base, normal(1, [0], 0, (64,)))     # next seed (key lo)
    assert not np.array_equal(base, normal(2**32, [0], 0, (64,)))  # key hi
    assert normal(0, [0], 0, (64,)).tobytes() == base.tobytes()   # and is deterministic
    # the project's streams
    assert SAMPLER_INIT_STREAM == 0 and sampler_step_stream(0) == 1 and sampler_step_stream(9) == 10
    assert TRAIN_STREAM_BASE == 2**31


def test_normal_moments_over_a_million_draws():
    z = normal(2024, np.arange(1000), 7, (1000,)).astype(np.float64).ravel()   # 1e6 draws
    n = z.size
    # Standard errors: mean 1/sqrt(n) = 1e-3, variance sqrt(2/n) = 1.4e-3, skewness sqrt(6/n),
    # kurtosis sqrt(24/n) = 4.9e-3; allow 5 standard errors.
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(np.mean(z**3)) < 5 * np.sqrt(6.0 / n) * 3
    assert abs(np.mean(z**4) - 3.0) < 5 * np.sqrt(96.0 / n)
    # tail mass: P(|z| > 3) = 2.6998e-3, binomial standard error ~5.2e-5
    assert abs(np.mean(np.abs(z) > 3.0) - 2.6998e-3) < 5 * 5.2e-5
    # the largest |z| is bounded by the u1 clamp: sqrt(-2 log 1e-7) = 5.68
    assert np.abs(z).max() <= 5.678
    u = uniform(2024, np.arange(1000), 7, (1000,)).astype(np.float64).ravel()
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    counts = np.bincount(np.minimum((u * 10).astype(int), 9), minlength=10)
    chi2 = np.sum((counts - n / 10) ** 2 / (n / 10))
    assert chi2 < 33.7  # chi-square with 9 dof: P(> 33.7) = 1e-4


def test_noise_matches_tritons_philox_and_randn_in_the_interpreter():
    torch = pytest.importorskip("torch")
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")
    if torch.cuda.is_available():
        pytest.skip("compares on the CPU interpreter; the kernel tests cover CUDA")

    @triton.jit
    def draw(words_ptr, uniform_ptr, normal_ptr, seed, sample, stream, N: tl.constexpr):
        j = tl.arange(0, N).to(tl.uint32)
        zero = tl.zeros_like(j)
        c0, c1, c2, c3 = tl.philox(seed, j, zero, zero + sample.to(tl.uint32), zero + stream.to(tl.uint32))
        tl.store(words_ptr + tl.arange(0, N) * 4 + 0, c0)
        tl.store(words_ptr + tl.arange(0, N) * 4 + 1, c1)
        tl.store(words_ptr + tl.arange(0, N) * 4 + 2, c2)
        tl.store(words_ptr + tl.arange(0, N) * 4 + 3, c3)
        u0 = tl.uint_to_uniform_float(c0)
        u1 = tl.uint_to_uniform_float(c1)
        n0, _ = tl.pair_uniform_to_normal(u0, u1)
        tl.store(uniform_ptr + tl.arange(0, N), u0)
        tl.store(normal_ptr + tl.arange(0, N), n0)

    @triton.jit
    def randn(out_ptr, seed, N: tl.constexpr):
        tl.store(out_ptr + tl.arange(0, N), tl.randn(seed, tl.arange(0, N)))

    n = 512
    # seeds below 2**63: how a larger Python int is typed as a kernel argument varies by Triton version
    for seed, sample, stream in ((0, 0, 0), (12345678901, 3, 0), (2**62 + 5, 77, TRAIN_STREAM_BASE + 2)):
        words = torch.zeros(n * 4, dtype=torch.int32)
        uni, nor = torch.zeros(n), torch.zeros(n)
        draw[(1,)](words, uni, nor, seed, sample, stream, N=n)
        expected_words = philox_words(seed, [sample], stream, n)[0]
        assert np.array_equal(words.numpy().view(np.uint32).reshape(n, 4), expected_words)
        assert uni.numpy().tobytes() == uniform(seed, [sample], stream, (n,))[0].tobytes()
        # float32 log/cos of the interpreter vs the reference's float64-then-round: within 1e-5
        assert_close(nor.numpy(), normal(seed, [sample], stream, (n,))[0], atol=1e-5, rtol=1e-5, name="normal")
    out = torch.zeros(n)
    randn[(1,)](out, 99, N=n)  # contract 2: sample 0, stream 0 is exactly tl.randn(seed, j)
    assert_close(out.numpy(), normal(99, [0], 0, (n,))[0], atol=1e-5, rtol=1e-5, name="tl.randn")


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error, match", [
    (lambda: philox4x32(np.zeros(4, np.int64), u32(0, 0)), TypeError, "counter must have dtype uint32"),
    (lambda: philox4x32(np.zeros(4, np.uint32), np.zeros(2, np.int32)), TypeError, "key must have dtype uint32"),
    (lambda: philox4x32(np.zeros(3, np.uint32), u32(0, 0)), ValueError, r"counter must have shape \(\.\.\., 4\)"),
    (lambda: philox4x32(np.zeros(4, np.uint32), u32(0, 0, 0)), ValueError, r"key must have shape \(2,\)"),
    (lambda: philox4x32(np.zeros(4, np.uint32), u32(0, 0), rounds=-1), ValueError, "rounds"),
    (lambda: normal(-1, [0], 0, (2,)), ValueError, "seed must lie in"),
    (lambda: normal(2**64, [0], 0, (2,)), ValueError, "seed must lie in"),
    (lambda: normal(1.5, [0], 0, (2,)), TypeError, "seed must be an int"),
    (lambda: normal(True, [0], 0, (2,)), TypeError, "seed must be an int"),
    (lambda: normal(0, [0.5], 0, (2,)), TypeError, "samples must be integers"),
    (lambda: normal(0, [-1], 0, (2,)), ValueError, "samples must lie in"),
    (lambda: normal(0, [2**32], 0, (2,)), ValueError, "samples must lie in"),
    (lambda: normal(0, [0, 1], [0, 1, 2], (2,)), ValueError, "stream must be an int or have shape"),
    (lambda: normal(0, [0], -3, (2,)), ValueError, "stream must lie in"),
    (lambda: normal(0, [0], 0, (2, -1)), ValueError, "sample_shape must be non-negative"),
    (lambda: philox_words(0, [0], 0, -1), ValueError, "numel"),
    (lambda: uint_to_uniform_float(np.zeros(3, np.int32)), TypeError, "x must have dtype uint32"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_sample_indices_and_shapes_are_checked():
    from reference import normal, sampler_step_stream

    with pytest.raises(TypeError, match="samples must be integers"):
        normal(0, np.array([True, False]), 0, (2,))
    with pytest.raises(ValueError, match="samples must have at most 1 dimension"):
        normal(0, np.arange(6).reshape(2, 3), 0, (2,))
    with pytest.raises(TypeError, match="sample_shape must hold ints"):
        normal(0, [0], 0, (2.7,))
    with pytest.raises(ValueError, match="step must lie in"):
        sampler_step_stream(-1)
    assert normal(0, 3, 0, (2,)).shape == (1, 2)  # an int is one sample
