"""kernels.normal and the noise-stream device functions against reference.noise (DESIGN contract 2).

- integer Philox words and float32 uniforms: bit-exact on every backend;
- normals: bit-exact on the torch backend (float64 Box-Muller, as the reference) and with the
  fused kernels' float64 option; within 1e-5 with their default float32 Box-Muller (tl.randn's);
- tl.randn(seed, j) is our stream for sample = stream = 0;
- batch invariance: sample i's numbers do not depend on the other samples of the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from kernels import config, torch_ops
from tests.helpers import assert_close
from tests.kernel_backends import BACKEND_DEVICES, FUSED_BACKEND_DEVICES, NORMAL_ATOL, kernels

# Random123 known-answer vectors for Philox4x32-10: (counter, key) -> output
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

seeds = st.one_of(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63 + 5, 2**64 - 1]),
                  st.integers(0, 2**64 - 1))
index_values = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
sample_shapes = st.lists(st.sampled_from([1, 2, 3, 5, 7, 13]), min_size=0, max_size=3).map(tuple)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_torch_philox4x32_matches_random123_known_answers(counter, key, expected):
    words = [torch.tensor([c], dtype=torch.int64) for c in counter]
    seed = key[0] | (key[1] << 32)
    out = torch_ops.philox4x32(*words, seed=seed)
    assert tuple(int(w) for w in out) == expected


@settings(max_examples=40)
@given(seed=seeds, samples=st.lists(index_values, min_size=1, max_size=4),
       stream=index_values, shape=sample_shapes)
def test_torch_normal_is_bit_exact_with_reference(seed, samples, stream, shape):
    got = kernels.normal(seed, samples, stream, shape, backend="torch")
    expected = reference.normal(seed, samples, stream, shape)
    assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
    np.testing.assert_array_equal(got.numpy(), expected)


@settings(max_examples=15)
@given(seed=seeds, samples=st.lists(index_values, min_size=1, max_size=3), stream=index_values,
       numel=st.sampled_from([1, 2, 7, 31, 100]))
def test_torch_words_and_uniforms_are_bit_exact(seed, samples, stream, numel):
    words = torch_ops.philox_words(seed, torch.tensor(samples), stream, numel)
    expected = reference.philox_words(seed, samples, stream, numel)
    np.testing.assert_array_equal(words.numpy(), expected.astype(np.int64))
    uniforms = torch_ops.uint_to_uniform_float(words[..., 0])
    np.testing.assert_array_equal(uniforms.numpy(), reference.uint_to_uniform_float(expected[..., 0]))


def test_torch_normal_per_sample_streams_match_reference():
    samples, streams = [4, 0, 9], [1, 2**32 - 1, 0]
    got = kernels.normal(11, samples, torch.tensor(streams), (3, 4), backend="torch")
    np.testing.assert_array_equal(got.numpy(), reference.normal(11, samples, streams, (3, 4)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_torch_normal_other_dtypes_are_the_float32_stream_cast(dtype):
    got = kernels.normal(5, [0, 1], 3, (17,), dtype=dtype, backend="torch")
    expected = torch.from_numpy(reference.normal(5, [0, 1], 3, (17,))).to(dtype)
    assert got.dtype == dtype
    assert torch.equal(got, expected)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
@settings(max_examples=6)
@given(seed=seeds, samples=st.lists(index_values, min_size=1, max_size=3), stream=index_values,
       numel=st.sampled_from([1, 3, 37, 128]))
def test_fused_words_and_uniforms_are_bit_exact(backend, device, seed, samples, stream, numel):
    if backend == "triton":
        from kernels.triton.philox import philox_words
    else:
        from kernels.cupy.philox import philox_words
    words, uniforms = philox_words(seed, torch.tensor(samples, device=device), stream, numel)
    expected = reference.philox_words(seed, samples, stream, numel)
    np.testing.assert_array_equal(words.cpu().numpy(), expected.astype(np.int64))
    np.testing.assert_array_equal(uniforms[..., 0].cpu().numpy(), reference.uint_to_uniform_float(expected[..., 0]))
    np.testing.assert_array_equal(uniforms[..., 1].cpu().numpy(), reference.uint_to_uniform_float(expected[..., 1]))


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=8)
@given(seed=seeds, samples=st.lists(index_values, min_size=1, max_size=4), stream=index_values,
       shape=sample_shapes)
def test_normal_matches_reference_within_1e_5(backend, device, seed, samples, stream, shape):
    got = kernels.normal(seed, samples, stream, shape, device=device, backend=backend)
    expected = reference.normal(seed, samples, stream, shape)
    assert got.device.type == device and got.dtype == torch.float32
    assert_close(got, expected, atol=NORMAL_ATOL, rtol=0.0, name=f"{backend} normal")


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_normal_float64_box_muller_is_bit_exact(backend, device, monkeypatch):
    """With DDPM_KERNELS_NORMAL_FP64 the fused kernels round float64 Box-Muller once, as the
    reference does: bit-exact under the interpreter (NumPy's float64 log/cos), and on GPUs up to
    libdevice's last-ulp float64 differences, which almost never change the float32 rounding."""
    monkeypatch.setattr(config, "NORMAL_FP64", True)
    samples = [0, 1, 2**32 - 1]
    got = kernels.normal(2**40 + 3, samples, 7, (4, 50), device=device, backend=backend)
    expected = reference.normal(2**40 + 3, samples, 7, (4, 50))
    if device == "cpu":
        np.testing.assert_array_equal(got.numpy(), expected)
    else:
        assert np.mean(got.cpu().numpy() == expected) > 0.999
        assert_close(got, expected, atol=1e-6, rtol=0.0, name="float64 Box-Muller")


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_normal_per_sample_streams_and_half_dtypes(backend, device):
    samples, streams = [3, 1], [5, 2**32 - 1]
    expected = reference.normal(9, samples, streams, (5, 3))
    got = kernels.normal(9, samples, torch.tensor(streams, device=device), (5, 3), device=device,
                         backend=backend)
    assert_close(got, expected, atol=NORMAL_ATOL, rtol=0.0, name="per-sample streams")
    for dtype in (torch.bfloat16, torch.float16):
        half = kernels.normal(9, samples, torch.tensor(streams, device=device), (5, 3),
                              device=device, dtype=dtype, backend=backend)
        assert half.dtype == dtype
        assert_close(half, torch.from_numpy(expected).to(dtype), atol=1e-5,
                     rtol={torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype], name=str(dtype))


def test_triton_randn_is_the_stream_of_sample_0_stream_0():
    """DESIGN contract 2: for i = s = 0 our normal IS tl.randn(seed, j)."""
    from tests.kernel_backends import HAS_CUDA, INTERPRETED

    if not (INTERPRETED or HAS_CUDA):
        pytest.skip("Triton needs CUDA or the interpreter")
    import triton
    import triton.language as tl

    @triton.jit
    def randn_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.randn(seed, offs), mask=offs < n)

    device = "cpu" if INTERPRETED else "cuda"
    for seed in (0, 7, 2**33 + 1):
        out = torch.empty(1000, device=device)
        randn_kernel[(1,)](out, seed, 1000, BLOCK=1024)
        ours = kernels.normal(seed, [0], 0, (1000,), device=device, backend="triton")[0]
        assert_close(out, reference.normal(seed, [0], 0, (1000,))[0], atol=NORMAL_ATOL, rtol=0.0,
                     name="tl.randn vs reference")
        if device == "cpu":  # the interpreter evaluates both with the same NumPy float32 ops
            assert torch.equal(out, ours), "tl.randn and kernels.normal(..., backend='triton') differ"
        else:  # compiled: the same formula, but the compiler may schedule/contract differently
            assert_close(ours, out, atol=1e-6, rtol=0.0, name="kernels.normal vs tl.randn")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_normal_is_batch_invariant(backend, device):
    """Sample i's numbers are the same whatever batch it is drawn in (global sample index)."""
    batch = kernels.normal(3, [0, 1, 2, 3, 4, 5], 2, (3, 5), device=device, backend=backend)
    alone = kernels.normal(3, [4], 2, (3, 5), device=device, backend=backend)
    other_batch = kernels.normal(3, [9, 4, 1], 2, (3, 5), device=device, backend=backend)
    assert torch.equal(batch[4], alone[0])
    assert torch.equal(batch[4], other_batch[1])
    assert torch.equal(batch[1], other_batch[2])


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_noise_equals_torch_backend_noise(backend, device):
    """Cross-backend equality of the in-kernel noise (the torch backend is bit-exact)."""
    fused = kernels.normal(21, [0, 5, 6], 4, (2, 9, 9), device=device, backend=backend)
    plain = kernels.normal(21, [0, 5, 6], 4, (2, 9, 9), backend="torch")
    assert_close(fused, plain, atol=NORMAL_ATOL, rtol=0.0, name=f"{backend} vs torch noise")


def test_streams_and_seeds_give_different_numbers():
    base = kernels.normal(1, [0], 0, (64,), backend="torch")
    assert not torch.equal(base, kernels.normal(1, [0], 1, (64,), backend="torch"))
    assert not torch.equal(base, kernels.normal(2, [0], 0, (64,), backend="torch"))
    assert not torch.equal(base, kernels.normal(1, [1], 0, (64,), backend="torch"))
    assert not torch.equal(base, kernels.normal(1 + 2**32, [0], 0, (64,), backend="torch"))


def test_normal_statistics_are_standard():
    """A sanity check of the Box-Muller wiring: mean ~0, std ~1 over 200k draws (5 sigma bounds)."""
    z = kernels.normal(123, list(range(20)), 0, (10_000,), backend="torch").double()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / n**0.5
    assert abs(float(z.std()) - 1.0) < 5 * (0.5 / n) ** 0.5


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(samples=[-1]), ValueError, "samples"),
    (dict(samples=[2**32]), ValueError, "samples"),
    (dict(samples=[0.5]), TypeError, "samples"),
    (dict(samples=[[0, 1]]), ValueError, "samples"),
    (dict(stream=2**32), ValueError, "stream"),
    (dict(stream=[1, 2, 3]), ValueError, "stream"),
    (dict(shape=(-1, 2)), ValueError, "shape"),
    (dict(shape=(2**16, 2**16)), ValueError, "2\\*\\*32"),
    (dict(dtype=torch.int32), TypeError, "dtype"),
    (dict(backend="numpy"), ValueError, "backend"),
])
def test_normal_rejects_bad_arguments(kwargs, error, match):
    args = dict(seed=0, samples=[0, 1], stream=0, shape=(3,))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        kernels.normal(args.pop("seed"), args.pop("samples"), args.pop("stream"), args.pop("shape"),
                       **args)


def test_normal_with_no_samples_or_empty_shape_is_empty():
    assert kernels.normal(0, [], 0, (3,)).shape == (0, 3)
    assert kernels.normal(0, [1, 2], 0, (0, 4)).shape == (2, 0, 4)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_normal_float64_output_on_every_backend(backend, device):
    """The docstring lists float64: it is the float32 stream stored as float64 on every backend
    (the Triton backend raised TypeError before: it dispatched on the storage dtype)."""
    z = kernels.normal(4, [0, 3], 1, (3, 7), device=device, dtype=torch.float64, backend=backend)
    assert z.dtype == torch.float64
    assert torch.equal(z, kernels.normal(4, [0, 3], 1, (3, 7), device=device, backend=backend).double())
