"""The compiled CPU noise stream (kernels/cpu/philox.cpp) against reference.noise, and its
fallbacks (DESIGN contract 2; issue 17).

Three paths give the torch backend's CPU numbers: the compiled library's AVX2 code, its plain
C++ code (CPUs without AVX2; DDPM_KERNELS_CPU_NATIVE=scalar) and pure torch (no compiler;
DDPM_KERNELS_CPU_NATIVE=0). Each must give the reference's integer words and normals bit for bit;
a missing compiler or a failed build must warn once and fall back, never fail or differ.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import kernels
import reference
from kernels import torch_ops
from kernels.cpu import build as cpu_build
from kernels.cpu import philox as cpu_philox

PATHS = ("avx2", "scalar", "pure-torch")
_NO_COMPILER = cpu_build.compiler() is None
_IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

seeds = st.one_of(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 1]), st.integers(0, 2**64 - 1))
index_values = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
# the `path` fixture only sets an environment variable, the same for every generated input
_FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


def _require_library():
    if _NO_COMPILER and not _IN_CI:
        pytest.skip("no C++ compiler here: only the pure-torch path runs")
    lib = cpu_philox.library()
    assert lib is not None, "a C++ compiler is present but the CPU library did not build"
    return lib


def _select_path(name: str, monkeypatch) -> str:
    if name == "pure-torch":
        monkeypatch.setenv(cpu_build.NATIVE_ENV, "0")
    else:
        lib = _require_library()
        if name == "avx2" and not lib.ddpm_cpu_has_avx2():
            pytest.skip("this CPU has no AVX2")
        monkeypatch.setenv(cpu_build.NATIVE_ENV, "scalar" if name == "scalar" else "1")
    return name


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Select one of the three paths for the duration of a test."""
    return _select_path(request.param, monkeypatch)


@pytest.fixture(params=PATHS[:2])
def compiled_path(request, monkeypatch):
    """The two compiled paths only (the pure-torch one is slow at large sizes)."""
    return _select_path(request.param, monkeypatch)


def _words(seed, samples, stream, numel, path):
    if path == "pure-torch":
        return torch_ops.philox_words(seed, torch.tensor(samples), stream, numel)
    return cpu_philox.philox_words(seed, torch.tensor(samples), stream, numel)


def test_random123_known_answer_counter_0_key_0(path):
    """Counter (0, 0, 0, 0), key (0, 0) -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8 (Random123)."""
    words = _words(0, [0], 0, 1, path)
    assert [int(w) for w in words[0, 0]] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@settings(max_examples=10, suppress_health_check=_FIXTURE_OK)
@given(seed=seeds, samples=st.lists(index_values, min_size=1, max_size=3),
       streams=st.lists(index_values, min_size=3, max_size=3),
       numel=st.sampled_from([1, 7, 31, 32, 33, 100]))
@example(seed=2**64 - 1, samples=[2**32 - 1], streams=[2**32 - 1] * 3, numel=33)
def test_words_are_bit_exact_with_reference(path, seed, samples, streams, numel):
    stream = torch.tensor(streams[: len(samples)])
    got = _words(seed, samples, stream, numel, path)
    expected = reference.philox_words(seed, samples, streams[: len(samples)], numel)
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.int64))


@settings(max_examples=10, suppress_health_check=_FIXTURE_OK)
@given(seed=seeds, samples=st.lists(index_values, min_size=1, max_size=4), stream=index_values,
       shape=st.lists(st.sampled_from([1, 2, 3, 5, 7, 13, 33]), min_size=0, max_size=3).map(tuple))
@example(seed=0, samples=[0], stream=0, shape=(1,))
def test_normals_are_bit_exact_with_reference(path, seed, samples, stream, shape):
    got = kernels.normal(seed, samples, stream, shape, backend="torch")
    np.testing.assert_array_equal(got.numpy(), reference.normal(seed, samples, stream, shape))


def test_many_normals_are_bit_exact_with_reference(compiled_path):
    """~200k numbers (a training batch's worth) through the compiled paths, per-sample streams
    (the pure-torch path is held to the reference by the property test above, at small sizes)."""
    samples, streams = np.arange(64) * 7919 + 2**31, np.arange(64) + 2**31 + 5
    got = kernels.normal(2**40 + 9, samples.tolist(), torch.tensor(streams), (3, 32, 33), backend="torch")
    np.testing.assert_array_equal(got.numpy(), reference.normal(2**40 + 9, samples, streams, (3, 32, 33)))


def test_near_boundary_recomputation_is_bit_exact():
    """Where SLEEF's float64 value could round to another float32 than the C library's, the lane
    is recomputed with the C library; widening the margin sends most lanes there."""
    lib = _require_library()
    if not lib.ddpm_cpu_has_avx2():
        pytest.skip("the rounding check belongs to the AVX2 code")
    expected = reference.normal(3, [0, 1], 4, (4099,))
    previous = lib.ddpm_set_rounding_margin(2.0**-20)
    try:
        wide = cpu_philox.normal(3, torch.tensor([0, 1]), 4, 4099)
    finally:
        lib.ddpm_set_rounding_margin(previous)
    np.testing.assert_array_equal(wide.numpy().reshape(expected.shape), expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numbers_do_not_depend_on_the_thread_count(threads):
    """The flat range is split across threads mid-row and mid-block (numel not a multiple of 32)."""
    _require_library()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_philox.normal(5, torch.arange(9), 1, 10_001)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(got.numpy(), reference.normal(5, np.arange(9), 1, (10_001,)))


@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 7), (16, 3, 8, 8)])
def test_q_sample_with_drawn_noise_matches_every_path(shape, monkeypatch):
    """The compiled one-pass q_sample gives the pure-torch x_t and eps bit for bit (float32)."""
    _require_library()
    schedule = reference.make_schedule("linear", 1000)
    sqrt_ab = torch.tensor(np.sqrt(schedule.alpha_bars), dtype=torch.float32)
    sqrt_1mab = torch.tensor(np.sqrt(1.0 - schedule.alpha_bars), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen)
    t = torch.randint(0, 1000, (shape[0],), generator=gen)
    samples = torch.arange(shape[0]) + 11
    compiled = kernels.q_sample(x0, t, sqrt_ab, sqrt_1mab, seed=9, samples=samples, stream=2, backend="torch")
    monkeypatch.setenv(cpu_build.NATIVE_ENV, "0")
    plain = kernels.q_sample(x0, t, sqrt_ab, sqrt_1mab, seed=9, samples=samples, stream=2, backend="torch")
    expected_eps = reference.normal(9, samples.numpy(), 2, shape[1:])
    np.testing.assert_array_equal(compiled[1].numpy(), expected_eps)
    for got, want in zip(compiled, plain):
        assert torch.equal(got, want)


def test_disabled_library_is_silent(monkeypatch, recwarn):
    monkeypatch.setenv(cpu_build.NATIVE_ENV, "0")
    assert cpu_philox.library() is None
    kernels.normal(1, [0], 0, (5,), backend="torch")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty cache folder and no library loaded in this process (restored afterwards)."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    monkeypatch.delenv(cpu_build.NATIVE_ENV, raising=False)
    cpu_build.clear_cache()
    yield tmp_path
    cpu_build.clear_cache()


def test_no_compiler_warns_once_and_falls_back_bit_exactly(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", str(fresh_build / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        first = kernels.normal(7, [0, 2], 3, (4, 9), backend="torch")
    np.testing.assert_array_equal(first.numpy(), reference.normal(7, [0, 2], 3, (4, 9)))
    with _no_runtime_warning():
        x0 = torch.zeros(2, 4, 9)
        x_t, eps = kernels.q_sample(x0, torch.tensor([0, 999]), torch.ones(1000), torch.ones(1000), seed=7,
                                    samples=torch.tensor([0, 2]), stream=3, backend="torch")
    assert torch.equal(eps, first)


def test_failed_build_warns_names_the_error_and_returns_none(fresh_build):
    with pytest.warns(RuntimeWarning, match="failed"):
        assert cpu_build.load_library("broken", "this is not C++;\n", ["-shared", "-fPIC"]) is None
    assert cpu_build.load_library("broken", "this is not C++;\n", ["-shared", "-fPIC"]) is None  # no 2nd build


def test_library_is_reused_from_the_cache():
    """A new process (here: the loaded library forgotten) loads the cached build, no rebuild."""
    _require_library()
    built = sorted(cpu_build.cache_dir().glob("philox-*.so"))
    assert built, f"no philox-*.so in {cpu_build.cache_dir()}"
    stamps = [p.stat().st_mtime_ns for p in built]
    cpu_build.clear_cache()
    try:
        assert cpu_philox.library() is not None
        assert sorted(cpu_build.cache_dir().glob("philox-*.so")) == built
        assert [p.stat().st_mtime_ns for p in built] == stamps
    finally:
        cpu_build.clear_cache()


class _no_runtime_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)
