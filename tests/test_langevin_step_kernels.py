"""kernels.langevin_step against reference.langevin_step, every backend.

Coefficients come from the reference plans (reference.score_sampling_plan: Langevin, annealed
Langevin, both PC predictors and the snr corrector's per-sample rows, the denoising step, VP and
VE), per sample or one shared row. Hypothesis draws shapes ((N, C, H, W) and (N, D), odd sizes
and size 1), dtypes, memory formats and the noise source (a tensor or in-kernel). Every backend
evaluates the rule in float64 from the stored inputs, rounded once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reference
from tests.helpers import assert_close
from tests.kernel_backends import (
    BACKEND_DEVICES,
    NORMAL_ATOL,
    TOLERANCES,
    as_numpy64,
    dtypes_for,
    kernels,
    to_channels_last,
)

VP = reference.make_schedule("linear", 100)
VE = reference.ve_schedule(20.0, 0.01, 30)
shapes = st.one_of(
    st.tuples(st.integers(1, 4), st.sampled_from([1, 3, 4]), st.sampled_from([1, 2, 5]),
              st.sampled_from([1, 3, 7])),
    st.tuples(st.integers(1, 5), st.sampled_from([1, 2, 17])),
)


def plan_rows(rng: np.random.Generator) -> np.ndarray:
    """(K, 4) step rows of a score plan drawn by `rng` (snr rows turned into per-sample rows)."""
    schedule = (VP, VE)[rng.integers(2)]
    sampler = reference.SCORE_SAMPLERS[rng.integers(3)]
    options = {"pc": {"predictor": reference.PREDICTORS[rng.integers(2)]},
               "langevin": {"step_size": 1e-3}, "annealed_langevin": {"steps_per_level": 2}}[sampler]
    plan = reference.sampling_plan(schedule, sampler, 4, **options)
    rows = plan.coefficients[:, :4].copy()
    snr = plan.coefficients[:, 4] > 0
    rows[snr, 2] = rng.uniform(1e-4, 1.0, int(snr.sum()))  # a corrector's step from the snr rule
    rows[snr, 3] = np.sqrt(2 * rows[snr, 2])
    return rows


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=25)
@given(shape=shapes, dtype_index=st.integers(0, 3), channels_last=st.booleans(),
       noise_source=st.sampled_from(["tensor", "stream"]), shared=st.booleans(),
       given_samples=st.booleans(), stream=st.integers(0, 2**32 - 1), seed=st.integers(0, 2**64 - 1))
@example(shape=(1, 1, 1, 1), dtype_index=0, channels_last=True, noise_source="stream", shared=True,
         given_samples=True, stream=2**32 - 1, seed=2**64 - 1)
@example(shape=(3, 17), dtype_index=1, channels_last=False, noise_source="tensor", shared=False,
         given_samples=False, stream=0, seed=0)
@example(shape=(2, 3, 5, 7), dtype_index=0, channels_last=True, noise_source="stream", shared=False,
         given_samples=False, stream=5, seed=7)
def test_langevin_step_matches_reference(backend, device, shape, dtype_index, channels_last, noise_source,
                                         shared, given_samples, stream, seed):
    dtypes = dtypes_for(backend)
    dtype = dtypes[dtype_index % len(dtypes)]
    n = shape[0]
    rng = np.random.default_rng(seed)
    rows = plan_rows(rng)
    coefficients = rows[rng.integers(len(rows))] if shared else rows[rng.integers(len(rows), size=n)]
    gen = torch.Generator().manual_seed(seed % 2**63)
    x = torch.randn(shape, generator=gen).to(dtype)
    model_output = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x, model_output = to_channels_last(x), to_channels_last(model_output)
    samples = rng.integers(0, 2**32, n).tolist() if given_samples else None
    z32 = reference.normal(seed, np.arange(n) if samples is None else samples, stream, shape[1:])
    kwargs = dict(backend=backend)
    if noise_source == "tensor":
        noise = torch.from_numpy(z32).to(dtype)
        kwargs["noise"] = (to_channels_last(noise) if channels_last else noise).to(device)
        z_seen = as_numpy64(noise)
    else:
        kwargs.update(seed=seed, samples=samples, stream=stream)
        z_seen = z32.astype(np.float64)
    x_next = kernels.langevin_step(x.to(device), model_output.to(device), coefficients, **kwargs)
    assert x_next.dtype == dtype and x_next.shape == x.shape and x_next.device.type == device
    compute = np.float64 if dtype == torch.float64 else np.float32
    expected = reference.langevin_step(as_numpy64(x).astype(compute), as_numpy64(model_output).astype(compute),
                                       coefficients, z_seen.astype(compute))
    atol, rtol = TOLERANCES[dtype]
    # the score term reaches |c1 c2 out| ~ 1e2 |out| (VP x_scale, 1/sigma at sigma_min): relative to it
    atol *= 1.0 + float(np.max(np.abs(np.atleast_2d(coefficients)[:, 1] * np.atleast_2d(coefficients)[:, 2])))
    if noise_source == "stream" and backend != "torch":
        atol += NORMAL_ATOL * float(np.max(np.abs(np.atleast_2d(coefficients)[:, 3])))
    assert_close(x_next, expected, atol=atol, rtol=rtol, name=f"{backend} x_next ({dtype})")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_langevin_step_float32_with_given_noise_equals_reference_bit_for_bit_on_cpu(backend, device):
    if device != "cpu":
        pytest.skip("exactness is asserted where the arithmetic is NumPy's or torch's on the CPU")
    gen = torch.Generator().manual_seed(1)
    x, out, z = (torch.randn(3, 2, 5, 5, generator=gen) for _ in range(3))
    rows = reference.sampling_plan(VE, "pc", 3, corrector_steps=0).coefficients[:, :4]
    got = kernels.langevin_step(x, out, rows, noise=z, backend=backend)
    expected = reference.langevin_step(x.numpy(), out.numpy(), rows, z.numpy())
    np.testing.assert_array_equal(got.numpy(), expected)


def test_langevin_step_in_place_and_noise_free_rows():
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    denoise = reference.sampling_plan(VE, "langevin", 2, step_size=1e-3).coefficients[-1, :4]
    assert denoise[3] == 0
    expected = reference.langevin_step(x.numpy(), out.numpy(), denoise)
    before = x.clone()
    result = kernels.langevin_step(x, out, denoise, out=x, backend="torch")  # no noise source needed
    assert result is x
    np.testing.assert_array_equal(x.numpy(), expected)
    with pytest.raises(ValueError, match="noise or seed is required"):
        kernels.langevin_step(before, out, [1.0, -1.0, 0.1, 0.5], backend="torch")
    with pytest.raises(ValueError, match="coefficients must have shape"):
        kernels.langevin_step(before, out, [1.0, -1.0, 0.1], backend="torch")
    with pytest.raises(ValueError, match="model_output"):
        kernels.langevin_step(before, out[:1], denoise, backend="torch")
