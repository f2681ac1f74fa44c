"""kernels.q_sample against reference.q_sample (DDPM Eq. 4), every backend that runs here.

Hypothesis draws shapes (odd, prime, size 1), dtypes, memory formats, float32/float64 tables,
given noise or in-kernel noise (seed, samples, stream). The reference is evaluated on the exact
values the kernel saw (inputs rounded to their dtype, eps = reference.normal in float32) and
compared with the per-dtype tolerance; float32 with given noise is bit-exact on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from kernels import torch_ops
from tests.helpers import assert_close
from tests.kernel_backends import (
    BACKEND_DEVICES,
    FUSED_BACKEND_DEVICES,
    NORMAL_ATOL,
    TOLERANCES,
    as_numpy64,
    dtypes_for,
    kernels,
    to_channels_last,
)

SCHEDULE = reference.make_schedule("linear", 1000)
shapes = st.one_of(
    st.tuples(st.integers(1, 4), st.sampled_from([1, 2, 3, 5]), st.sampled_from([1, 3, 7]),
              st.sampled_from([1, 2, 5, 8])),
    st.tuples(st.integers(1, 5), st.sampled_from([1, 2, 13, 33])),   # flat (toy 2-D data)
    st.tuples(st.integers(1, 2), st.sampled_from([2, 3]), st.sampled_from([1, 3]),
              st.sampled_from([2, 3]), st.sampled_from([1, 2])),     # two spatial dims + depth
)


def tables(dtype, device):
    return (torch.tensor(SCHEDULE.sqrt_alpha_bars, dtype=dtype, device=device),
            torch.tensor(SCHEDULE.sqrt_one_minus_alpha_bars, dtype=dtype, device=device))


def reference_q_sample(x0, t, eps, dtype):
    """reference.q_sample on the kernel's exact inputs: float32 (float64 for float64 x0)."""
    compute = np.float64 if dtype == torch.float64 else np.float32
    return reference.q_sample(as_numpy64(x0).astype(compute), t.cpu().numpy(), eps.astype(compute),
                              SCHEDULE)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=12)
@given(data=st.data(), shape=shapes, channels_last=st.booleans(), draw_noise=st.booleans(),
       table_dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**64 - 1))
def test_q_sample_matches_reference(backend, device, data, shape, channels_last, draw_noise,
                                    table_dtype, seed):
    dtype = data.draw(st.sampled_from(dtypes_for(backend)), label="dtype")
    if dtype == torch.float64:
        table_dtype = torch.float64  # float64 x0 is compared at 1e-12: with the float64 tables
    n = shape[0]
    gen = torch.Generator().manual_seed(seed % 2**63)
    x0 = torch.randn(shape, generator=gen).to(dtype)
    t = torch.randint(0, SCHEDULE.T, (n,), generator=gen)
    t[0] = data.draw(st.sampled_from([0, SCHEDULE.T - 1, int(t[0])]), label="t0")
    if channels_last:
        x0 = to_channels_last(x0)
    x0, t = x0.to(device), t.to(device)
    sqrt_alpha_bar, sqrt_one_minus_alpha_bar = tables(table_dtype, device)
    samples = data.draw(st.none() | st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n),
                        label="samples")
    stream = data.draw(st.integers(0, 2**32 - 1), label="stream")
    numel_shape = tuple(shape[1:])
    eps32 = reference.normal(seed, np.arange(n) if samples is None else samples, stream, numel_shape)
    if draw_noise:
        x_t, noise = kernels.q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, seed=seed,
                                      samples=samples, stream=stream, backend=backend)
        atol, rtol = TOLERANCES[dtype]
        assert_close(noise, torch.from_numpy(eps32).to(dtype), atol=max(atol, NORMAL_ATOL), rtol=rtol,
                     name="returned noise")
        # float32: the returned noise is the eps used; half types: it was rounded, the kernel used
        # the float32 eps, within NORMAL_ATOL of eps32 (far inside the half-type tolerance)
        eps_seen = as_numpy64(noise) if dtype == torch.float32 else eps32
    else:
        noise_in = torch.from_numpy(eps32).to(dtype)
        if channels_last:
            noise_in = to_channels_last(noise_in)
        noise_in = noise_in.to(device)
        x_t, noise = kernels.q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, noise_in,
                                      backend=backend)
        assert noise is noise_in
        eps_seen = as_numpy64(noise_in)
    assert x_t.dtype == dtype and x_t.shape == x0.shape and x_t.device == x0.device
    if channels_last and x0.dim() in (4, 5) and shape[1] > 1:
        assert not x_t.is_contiguous() or x0.is_contiguous(), "layout of x0 was not kept"
    expected = reference_q_sample(x0, t, eps_seen, dtype)
    atol, rtol = TOLERANCES[dtype]
    assert_close(x_t, expected, atol=atol, rtol=rtol, name=f"{backend} x_t ({dtype})")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_q_sample_float32_with_given_noise_is_bit_exact_on_cpu(backend, device):
    if device != "cpu":
        pytest.skip("bit-exactness is asserted where the arithmetic is NumPy's (GPU may contract to FMA)")
    x0 = torch.randn(3, 2, 5, 7)
    eps = torch.randn(3, 2, 5, 7)
    t = torch.tensor([0, 500, 999])
    x_t, _ = kernels.q_sample(x0, t, *tables(torch.float64, device), eps, backend=backend)
    expected = reference.q_sample(x0.numpy(), t.numpy(), eps.numpy(), SCHEDULE)
    np.testing.assert_array_equal(x_t.numpy(), expected)


def test_q_sample_torch_float64_is_bit_exact():
    x0 = torch.randn(4, 3, 5, dtype=torch.float64)
    t = torch.tensor([0, 1, 998, 999])
    x_t, noise = kernels.q_sample(x0, t, *tables(torch.float64, "cpu"), seed=3, stream=2, backend="torch")
    eps = reference.normal(3, np.arange(4), 2, (3, 5)).astype(np.float64)
    np.testing.assert_array_equal(noise.numpy(), eps)
    np.testing.assert_array_equal(x_t.numpy(), reference.q_sample(x0.numpy(), t.numpy(), eps, SCHEDULE))


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_q_sample_in_kernel_noise_is_batch_invariant(backend, device):
    x0 = torch.randn(5, 3, 4, 4, device=device)
    t = torch.tensor([3, 100, 999, 0, 7], device=device)
    A, S = tables(torch.float32, device)
    full, noise = kernels.q_sample(x0, t, A, S, seed=77, samples=[10, 11, 12, 13, 14], stream=9, backend=backend)
    part, part_noise = kernels.q_sample(x0[2:4], t[2:4], A, S, seed=77, samples=[12, 13], stream=9, backend=backend)
    assert torch.equal(full[2:4], part) and torch.equal(noise[2:4], part_noise)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_q_sample_equals_torch_backend(backend, device):
    x0 = to_channels_last(torch.randn(3, 4, 5, 3))
    t = torch.tensor([5, 500, 999])
    A, S = tables(torch.float32, "cpu")
    plain, plain_noise = kernels.q_sample(x0, t, A, S, seed=5, stream=1, backend="torch")
    A, S = tables(torch.float32, device)
    fused, fused_noise = kernels.q_sample(x0.to(device), t.to(device), A, S, seed=5, stream=1,
                                          backend=backend)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert_close(fused_noise, plain_noise, atol=NORMAL_ATOL, rtol=0.0, name="noise")
    assert_close(fused, plain, atol=NORMAL_ATOL, rtol=1e-6, name="x_t")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_q_sample_non_dense_input_is_handled(backend, device):
    """A strided view (neither contiguous nor channels_last) gives the same numbers (one copy)."""
    base = torch.randn(3, 4, 6, 10, device=device)
    x0 = base[:, ::2, :, 1::3]
    t = torch.tensor([1, 2, 3], device=device)
    A, S = tables(torch.float32, device)
    eps = torch.randn(x0.shape, device=device).transpose(2, 3).contiguous().transpose(2, 3)
    got, _ = kernels.q_sample(x0, t, A, S, eps, backend=backend)
    want, _ = kernels.q_sample(x0.contiguous(), t, A, S, eps.contiguous(), backend="torch")
    assert_close(got, want, atol=1e-6, rtol=1e-6, name="strided x0")
    got, noise = kernels.q_sample(x0, t, A, S, seed=1, backend=backend)
    want, want_noise = kernels.q_sample(x0.contiguous(), t, A, S, seed=1, backend="torch")
    assert_close(noise, want_noise, atol=NORMAL_ATOL, rtol=0, name="strided noise")


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_q_sample_out_of_range_t_gives_nan_in_kernel(backend, device):
    """The device-side guard (used for CUDA t, which is not read back): NaN, never a table overread."""
    if backend == "triton":
        from kernels.triton.q_sample import q_sample as launch
    else:
        from kernels.cupy.q_sample import q_sample as launch
    x0 = torch.randn(3, 2, 3, device=device)
    A, S = tables(torch.float32, device)
    t = torch.tensor([5, 1000, -1], device=device)
    x_t, _ = launch(x0, t, A, S, torch.zeros_like(x0), None, None, 0)
    assert torch.isfinite(x_t[0]).all() and torch.isnan(x_t[1:]).all()


def test_torch_q_sample_out_of_range_t_gives_nan_without_host_check():
    x0 = torch.randn(2, 3)
    A, S = tables(torch.float64, "cpu")
    x_t, _ = torch_ops.q_sample(x0, torch.tensor([3, 1000]), A, S, torch.zeros_like(x0), None, None, 0)
    assert torch.isfinite(x_t[0]).all() and torch.isnan(x_t[1]).all()


def _args(**override):
    x0 = torch.randn(2, 3, 4)
    args = dict(x0=x0, t=torch.tensor([0, 5]), sqrt_alpha_bar=tables(torch.float64, "cpu")[0],
                sqrt_one_minus_alpha_bar=tables(torch.float64, "cpu")[1], noise=torch.randn(2, 3, 4))
    args.update(override)
    return args


@pytest.mark.parametrize("override, error, match", [
    (dict(x0=np.zeros((2, 3, 4), np.float32)), TypeError, "x0"),
    (dict(x0=torch.zeros(2, 3, 4, dtype=torch.int32)), TypeError, "x0"),
    (dict(t=torch.tensor([0, 1000])), ValueError, "t must lie"),
    (dict(t=torch.tensor([-1, 0])), ValueError, "t must lie"),
    (dict(t=torch.tensor([0.0, 1.0])), TypeError, "t must have dtype"),
    (dict(t=torch.tensor([0, 1, 2])), ValueError, "t must have shape"),
    (dict(t=torch.tensor([0, 1], device="meta")), ValueError, "t must be on device"),
    (dict(noise=torch.randn(2, 3, 5)), ValueError, "noise must have the shape"),
    (dict(noise=torch.randn(2, 3, 4, dtype=torch.float64)), TypeError, "noise must have the dtype"),
    (dict(noise=torch.randn(2, 3, 4, device="meta")), ValueError, "noise must be on"),
    (dict(sqrt_alpha_bar=torch.ones(10)), ValueError, "sqrt_one_minus_alpha_bar must have the shape"),
    (dict(sqrt_alpha_bar=torch.ones(1000, dtype=torch.float16)), TypeError, "sqrt_alpha_bar"),
    (dict(sqrt_alpha_bar=torch.ones(1000, device="meta")), ValueError, "sqrt_alpha_bar must be on"),
    (dict(sqrt_alpha_bar=torch.full((1000,), float("nan"))), ValueError, "NaN"),
    (dict(sqrt_alpha_bar=torch.ones(10, 100)), ValueError, "shape \\(T,\\)"),
])
def test_q_sample_rejects_bad_inputs(override, error, match):
    with pytest.raises(error, match=match):
        kernels.q_sample(**_args(**override))


def test_q_sample_noise_source_errors():
    args = _args()
    with pytest.raises(ValueError, match="either noise or seed"):
        kernels.q_sample(**args, seed=1)
    args["noise"] = None
    with pytest.raises(ValueError, match="seed is required"):
        kernels.q_sample(**args)
    with pytest.raises(ValueError, match="samples must have 2 entries"):
        kernels.q_sample(**args, seed=1, samples=[1, 2, 3])
    with pytest.raises(ValueError, match="samples must lie"):
        kernels.q_sample(**args, seed=1, samples=[1, 2**32])
    with pytest.raises(ValueError, match="stream must lie"):
        kernels.q_sample(**args, seed=1, stream=-1)
    with pytest.raises(ValueError, match="backend"):
        kernels.q_sample(**args, seed=1, backend="cuda")


def test_q_sample_float64_on_fused_backend_is_a_type_error():
    args = _args(x0=torch.randn(2, 3, 4, dtype=torch.float64), noise=None)
    with pytest.raises(TypeError, match="float64"):
        kernels.q_sample(**args, seed=1, backend="triton")


def test_q_sample_empty_batch():
    x_t, noise = kernels.q_sample(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64),
                                  *tables(torch.float32, "cpu"), seed=1)
    assert x_t.shape == (0, 3) and noise.shape == (0, 3)
