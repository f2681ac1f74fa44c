"""kernels.learned_variance_step against reference.learned_variance_step, every backend.

Coefficients come from the reference (learned_variance_coefficients: every prediction, full and
respaced schedules, t = 0 included, per sample or one shared row). Hypothesis draws shapes
((N, C, H, W) and (N, D), odd sizes and size 1), dtypes, memory formats, clip on/off, v inside
and outside [-1, 1], and the noise source (a tensor or in-kernel). Every backend evaluates the
rule in float64 from the stored inputs (the exp of the log-variance included), rounded once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
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
COSINE = reference.make_schedule("cosine", 1000)
RESPACED = SCHEDULE.respace(reference.timestep_subset(1000, 25, "leading"))
shapes = st.one_of(
    st.tuples(st.integers(1, 4), st.sampled_from([1, 3, 4]), st.sampled_from([1, 2, 5]),
              st.sampled_from([1, 3, 7])),
    st.tuples(st.integers(1, 5), st.sampled_from([1, 2, 17])),
)


def wide(shape) -> tuple:
    """The (N, 2C, ...) shape of a learned-variance model output for x of `shape`."""
    return (shape[0], 2 * shape[1]) + tuple(shape[2:])


def coefficient_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 10) rows of reference.learned_variance_coefficients: a schedule (full, cosine or
    respaced), a prediction and timesteps drawn by `rng`, t = 0 and t = T - 1 favoured."""
    schedule = (SCHEDULE, COSINE, RESPACED)[rng.integers(3)]
    prediction = reference.PREDICTIONS[rng.integers(len(reference.PREDICTIONS))]
    T = schedule.T
    t = np.where(rng.random(n) < 0.4, rng.choice([0, 1, T - 1], n), rng.integers(0, T, n))
    return reference.learned_variance_coefficients(schedule, t, prediction)


def sigma_bound(coefficients, v) -> float:
    """max exp(0.5 log sigma^2) over the step: the scale of the noise term."""
    c = np.atleast_2d(coefficients)
    frac = (np.max(np.abs(v)) + 1.0) / 2.0
    return float(np.exp(0.5 * np.max(np.abs(c[:, 7:9])) * (2 * frac + 1)))


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=25)
@given(shape=shapes, dtype_index=st.integers(0, 3), channels_last=st.booleans(),
       clip=st.sampled_from([None, (-1.0, 1.0)]), noise_source=st.sampled_from(["tensor", "stream"]),
       shared=st.booleans(), v_scale=st.sampled_from([0.5, 2.0]), given_samples=st.booleans(),
       stream=st.integers(0, 2**32 - 1), seed=st.integers(0, 2**64 - 1))
@example(shape=(1, 1, 1, 1), dtype_index=0, channels_last=True, clip=None, noise_source="stream",
         shared=True, v_scale=2.0, given_samples=True, stream=2**32 - 1, seed=2**64 - 1)
@example(shape=(3, 17), dtype_index=1, channels_last=False, clip=(-1.0, 1.0), noise_source="tensor",
         shared=False, v_scale=0.5, given_samples=False, stream=0, seed=0)
@example(shape=(2, 3, 5, 7), dtype_index=0, channels_last=True, clip=(-1.0, 1.0), noise_source="stream",
         shared=False, v_scale=2.0, given_samples=False, stream=5, seed=7)
def test_learned_variance_step_matches_reference(backend, device, shape, dtype_index, channels_last, clip,
                                                 noise_source, shared, v_scale, given_samples, stream, seed):
    dtypes = dtypes_for(backend)
    dtype = dtypes[dtype_index % len(dtypes)]
    n = shape[0]
    rng = np.random.default_rng(seed)
    coefficients = coefficient_rows(rng, 1 if shared else n)
    if shared:
        coefficients = coefficients[0]
    gen = torch.Generator().manual_seed(seed % 2**63)
    x_t = torch.randn(shape, generator=gen).to(dtype)
    model_output = torch.randn(wide(shape), generator=gen)
    model_output[:, shape[1]:] *= v_scale  # v beyond [-1, 1] extrapolates (the paper's code)
    model_output = model_output.to(dtype)
    if channels_last:
        x_t, model_output = to_channels_last(x_t), to_channels_last(model_output)
    samples = rng.integers(0, 2**32, n).tolist() if given_samples else None
    z32 = reference.normal(seed, np.arange(n) if samples is None else samples, stream, shape[1:])
    kwargs = dict(clip=clip, backend=backend)
    if noise_source == "tensor":
        noise = torch.from_numpy(z32).to(dtype)
        kwargs["noise"] = (to_channels_last(noise) if channels_last else noise).to(device)
        z_seen = as_numpy64(noise)
    else:
        kwargs.update(seed=seed, samples=samples, stream=stream)
        z_seen = z32.astype(np.float64)
    x_prev = kernels.learned_variance_step(x_t.to(device), model_output.to(device), coefficients, **kwargs)
    assert x_prev.dtype == dtype and x_prev.shape == x_t.shape and x_prev.device.type == device
    compute = np.float64 if dtype == torch.float64 else np.float32
    expected = reference.learned_variance_step(as_numpy64(x_t).astype(compute),
                                               as_numpy64(model_output).astype(compute),
                                               coefficients, z_seen.astype(compute), clip)
    atol, rtol = TOLERANCES[dtype]
    if noise_source == "stream" and backend != "torch":
        atol += NORMAL_ATOL * sigma_bound(coefficients, as_numpy64(model_output)[:, shape[1]:])
    assert_close(x_prev, expected, atol=atol, rtol=rtol, name=f"{backend} x_prev ({dtype})")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_learned_variance_step_float32_with_given_noise_equals_reference_on_cpu(backend, device):
    if device != "cpu":
        pytest.skip("exactness is asserted where the arithmetic is NumPy's or torch's on the CPU")
    gen = torch.Generator().manual_seed(1)
    x_t, z = torch.randn(3, 2, 5, 5, generator=gen), torch.randn(3, 2, 5, 5, generator=gen)
    model_output = torch.randn(3, 4, 5, 5, generator=gen)
    coefficients = reference.learned_variance_coefficients(SCHEDULE, np.array([999, 10, 0]), "epsilon")
    got = kernels.learned_variance_step(x_t, model_output, coefficients, clip=(-1, 1), noise=z,
                                        backend=backend)
    expected = reference.learned_variance_step(x_t.numpy(), model_output.numpy(), coefficients,
                                               z.numpy(), (-1, 1))
    # float64 exp in NumPy vs torch may differ in the last float64 bit; one float32 rounding after
    assert_close(got, expected, atol=0.0, rtol=2**-23, name="float32 x_prev")
    assert np.mean(got.numpy() == expected) > 0.99


def test_torch_learned_variance_step_float64_matches_reference_to_1e_15():
    gen = torch.Generator().manual_seed(0)
    x_t, z = (torch.randn(4, 3, 6, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    model_output = torch.randn(4, 6, 6, 6, generator=gen, dtype=torch.float64)
    for coefficients in (
            reference.learned_variance_coefficients(SCHEDULE, np.array([999, 500, 1, 0]), "sample"),
            reference.learned_variance_coefficients(RESPACED, np.array([24, 12, 1, 0]), "v_prediction")):
        got = kernels.learned_variance_step(x_t, model_output, coefficients, noise=z, clip=(-1.5, 1.5),
                                            backend="torch")
        expected = reference.learned_variance_step(x_t.numpy(), model_output.numpy(), coefficients,
                                                   z.numpy(), (-1.5, 1.5))
        assert_close(got, expected, atol=1e-15, rtol=1e-15, name="float64 x_prev")
        got = kernels.learned_variance_step(x_t, model_output, coefficients, seed=9, stream=4, backend="torch")
        noise = reference.normal(9, np.arange(4), 4, (3, 6, 6)).astype(np.float64)
        expected = reference.learned_variance_step(x_t.numpy(), model_output.numpy(), coefficients, noise)
        assert_close(got, expected, atol=1e-15, rtol=1e-15, name="float64 x_prev, in-kernel noise")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_learned_variance_step_out_may_alias_x_t_and_noise_is_batch_invariant(backend, device):
    x_t = torch.randn(4, 3, 4, 4, device=device)
    model_output = torch.randn(4, 6, 4, 4, device=device)
    coefficients = reference.learned_variance_coefficients(SCHEDULE, np.array([700, 600, 500, 400]))
    expected = kernels.learned_variance_step(x_t, model_output, coefficients, seed=3, samples=[40, 41, 42, 43],
                                             stream=2, backend=backend)
    part = kernels.learned_variance_step(x_t[1:3], model_output[1:3], coefficients[1:3], seed=3,
                                         samples=[41, 42], stream=2, backend=backend)
    assert torch.equal(expected[1:3], part)
    returned = kernels.learned_variance_step(x_t, model_output, coefficients, seed=3, samples=[40, 41, 42, 43],
                                             stream=2, out=x_t, backend=backend)
    assert returned is x_t and torch.equal(x_t, expected)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_learned_variance_step_equals_torch_backend_in_both_layouts(backend, device):
    coefficients = torch.tensor(reference.learned_variance_coefficients(SCHEDULE, np.array([999, 50, 0]),
                                                                         "v_prediction"))
    for layout in (lambda x: x, to_channels_last):
        x_t, model_output = layout(torch.randn(3, 4, 5, 3)), layout(torch.randn(3, 8, 5, 3))
        plain = kernels.learned_variance_step(x_t, model_output, coefficients, clip=(-1, 1), seed=4,
                                              stream=7, backend="torch")
        fused = kernels.learned_variance_step(x_t.to(device), model_output.to(device),
                                              coefficients.to(device), clip=(-1, 1), seed=4, stream=7,
                                              backend=backend)
        assert fused.is_contiguous(memory_format=torch.channels_last) == (layout is to_channels_last)
        assert_close(fused, plain, atol=NORMAL_ATOL, rtol=1e-6, name="x_prev")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_learned_variance_step_model_output_in_another_layout_is_read_right(backend, device):
    """x_t contiguous, the 2C output channels_last (and a channel-sliced view): copied to x_t's layout."""
    x_t = torch.randn(2, 3, 4, 5, device=device)
    full = torch.randn(2, 8, 4, 5, device=device)
    coefficients = reference.learned_variance_coefficients(SCHEDULE, np.array([10, 3]))
    want = kernels.learned_variance_step(x_t, full[:, :6].contiguous(), coefficients, seed=1, backend="torch")
    for model_output in (to_channels_last(full[:, :6]), full[:, :6]):
        got = kernels.learned_variance_step(x_t, model_output, coefficients, seed=1, backend=backend)
        assert_close(got, want, atol=NORMAL_ATOL, rtol=1e-6, name="x_prev")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_learned_variance_step_device_coefficients_without_noise_give_nan_where_noise_is_due(backend, device):
    x_t, model_output = torch.randn(2, 3, 3, device=device), torch.randn(2, 6, 3, device=device)
    coefficients = torch.tensor(reference.learned_variance_coefficients(SCHEDULE, np.array([0, 5])), device=device)
    if backend == "torch":
        got = torch_ops.learned_variance_step(x_t, model_output, coefficients, None, None, None, None, 0, None)
    else:
        if backend == "triton":
            from kernels.triton.learned_variance_step import learned_variance_step as launch
        else:
            from kernels.cupy.learned_variance_step import learned_variance_step as launch
        got = launch(x_t, model_output, coefficients, None, None, None, None, 0, None)
    assert torch.isfinite(got[0]).all() and torch.isnan(got[1]).all()


def _args(**override):
    args = dict(x_t=torch.randn(2, 3, 4), model_output=torch.randn(2, 6, 4),
                coefficients=reference.learned_variance_coefficients(SCHEDULE, np.array([5, 3])),
                noise=torch.randn(2, 3, 4))
    args.update(override)
    return args


@pytest.mark.parametrize("override, error, match", [
    (dict(x_t=np.zeros((2, 3, 4))), TypeError, "x_t must be a torch.Tensor"),
    (dict(x_t=torch.randn(2)), ValueError, "x_t must be"),
    # learned variance asked of an output without the extra channels
    (dict(model_output=torch.randn(2, 3, 4)), ValueError, r"model_output must have shape \(2, 6, 4\)"),
    (dict(model_output=torch.randn(2, 6, 4, dtype=torch.float64)), TypeError, "model_output must have the dtype"),
    (dict(coefficients=reference.ddpm_coefficients(SCHEDULE, np.array([5, 3]))), ValueError,
     r"coefficients must have shape \(10,\)"),
    (dict(coefficients=np.full(10, np.nan)), ValueError, "NaN"),
    (dict(noise=None), ValueError, "noise or seed is required"),
    (dict(noise=torch.randn(2, 6, 4)), ValueError, "noise must have the shape"),
    (dict(seed=1), ValueError, "either noise or seed"),
    (dict(clip=(1.0, -1.0)), ValueError, "clip"),
    (dict(out=torch.empty(2, 6, 4)), ValueError, "out must have the shape"),
    (dict(noise=None, seed=1, samples=[0, 2**32]), ValueError, "samples must lie"),
    (dict(backend="cuda"), ValueError, "backend"),
])
def test_learned_variance_step_rejects_bad_inputs(override, error, match):
    with pytest.raises(error, match=match):
        kernels.learned_variance_step(**_args(**override))


def test_learned_variance_step_without_noise_into_x0():
    """The step into x_0 (has_noise = 0 for every sample) needs no noise source and reads no v."""
    x_t, model_output = torch.randn(2, 3, 4), torch.randn(2, 6, 4)
    model_output[:, 3:] = float("nan")  # v is not read where no z is added
    coefficients = reference.learned_variance_coefficients(SCHEDULE, np.array([0, 0]))
    got = kernels.learned_variance_step(x_t, model_output, coefficients)
    mean = reference.sampler_step(x_t.numpy(), model_output[:, :3].numpy(),
                                  reference.ddpm_coefficients(SCHEDULE, np.array([0, 0])))
    np.testing.assert_array_equal(got.numpy(), mean)
