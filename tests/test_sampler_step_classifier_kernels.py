"""kernels.sampler_step's classifier-guidance input against reference.sampler_step, every backend.

The guidance term (a gradient tensor g and per-sample (a0, a1, a2) rows = the plan's columns
times each sample's scale, reference.classifier_guidance) joins the step's one pass: x0_hat +=
a0 g and eps_hat += a1 g before the clip, x_prev += a2 g before the noise. Coefficients from
real plans (DDPM Alg. 1 rows, DDIM Alg. 2 rows), composed with CFG, clipping and both noise
sources; Triton under TRITON_INTERPRET=1 on the CPU; the CUDA C source through the host build.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reference
from tests.helpers import assert_close
from tests.kernel_backends import BACKEND_DEVICES, NORMAL_ATOL, TOLERANCES, as_numpy64, dtypes_for, kernels, to_channels_last

SCHEDULE = reference.make_schedule("linear", 1000)


def _plan_rows(sampler: str, k: int, n: int, scale: np.ndarray):
    """(N, 8) step coefficients and (N, 3) guidance rows of step k of a real 10-step plan."""
    plan = reference.sampling_plan(SCHEDULE, sampler, 10, eta=0.5 if sampler == "ddim" else 0.0)
    rows = reference.guidance_rows(plan, scale)[k]
    return np.broadcast_to(plan.coefficients[k], (n, 8)).copy(), rows


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=12, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 3), st.sampled_from([1, 3]), st.sampled_from([1, 5]),
                                        st.sampled_from([1, 4])),
       sampler=st.sampled_from(["ddpm", "ddim"]), k=st.sampled_from([0, 4, 9]),
       channels_last=st.booleans(), cfg=st.booleans(), clip=st.sampled_from([None, (-1.0, 1.0)]),
       noise_source=st.sampled_from(["tensor", "stream"]), seed=st.integers(0, 2**63 - 1))
@example(data=None, shape=(1, 1, 1, 1), sampler="ddpm", k=9, channels_last=False, cfg=False, clip=None,
         noise_source="tensor", seed=0).via("size 1, the step into x_0 (sigma = 0: no mean shift)")
def test_guided_sampler_step_matches_reference(backend, device, data, shape, sampler, k, channels_last, cfg,
                                               clip, noise_source, seed):
    dtype = torch.float32 if data is None else data.draw(st.sampled_from(dtypes_for(backend)), label="dtype")
    n = shape[0]
    scale = np.linspace(0.0, 8.0, n)  # per-sample scales, 0 included
    coefficients, rows = _plan_rows(sampler, k, n, scale)
    gen = torch.Generator().manual_seed(seed)
    x_t, out, uncond, grad = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
    if channels_last:
        x_t, out, uncond, grad = (to_channels_last(v) for v in (x_t, out, uncond, grad))
    z32 = reference.normal(seed, np.arange(n), 3, shape[1:])
    kwargs = dict(clip=clip, backend=backend, classifier_grad=grad.to(device), classifier_coefficients=rows)
    if cfg:
        kwargs.update(model_output_uncond=uncond.to(device), guidance_scale=2.5)
    if noise_source == "tensor":
        kwargs["noise"] = torch.from_numpy(z32).to(dtype).to(device)
        z_seen = as_numpy64(kwargs["noise"].cpu())
    else:
        kwargs.update(seed=seed, stream=3)
        z_seen = z32.astype(np.float64)
    got = kernels.sampler_step(x_t.to(device), out.to(device), coefficients, **kwargs)
    compute = np.float64 if dtype == torch.float64 else np.float32
    o = as_numpy64(out).astype(compute)
    if cfg:
        o = reference.classifier_free_guidance(o, as_numpy64(uncond).astype(compute), 2.5)
    expected = reference.sampler_step(as_numpy64(x_t).astype(compute), o, coefficients, z_seen.astype(compute),
                                      clip, classifier_grad=as_numpy64(grad), classifier_coefficients=rows)
    atol, rtol = TOLERANCES[dtype]
    if noise_source == "stream" and backend != "torch":
        atol += NORMAL_ATOL * float(np.abs(coefficients[:, 7]).max())
    assert_close(got, expected, atol=atol, rtol=rtol, name=f"{backend} guided x_prev ({dtype})")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_guided_sampler_step_float32_with_given_noise_is_bit_exact_on_cpu(backend, device):
    if device != "cpu":
        pytest.skip("bit-exactness is asserted where the arithmetic is NumPy's")
    gen = torch.Generator().manual_seed(1)
    x_t, out, uncond, z, grad = (torch.randn(3, 2, 5, 5, generator=gen) for _ in range(5))
    for sampler in ("ddpm", "ddim"):
        coefficients, rows = _plan_rows(sampler, 3, 3, np.array([0.5, 1.0, 4.0]))
        got = kernels.sampler_step(x_t, out, coefficients, model_output_uncond=uncond, guidance_scale=3.0,
                                   clip=(-1, 1), noise=z, backend=backend, classifier_grad=grad,
                                   classifier_coefficients=torch.from_numpy(rows))
        cfg = reference.classifier_free_guidance(out.numpy(), uncond.numpy(), 3.0)
        expected = reference.sampler_step(x_t.numpy(), cfg, coefficients, z.numpy(), (-1, 1),
                                          classifier_grad=grad.numpy(), classifier_coefficients=rows)
        np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_zero_scale_is_the_unguided_step(backend, device):
    x_t, out, grad = (torch.randn(2, 1, 4, 4, device=device) for _ in range(3))
    coefficients, rows = _plan_rows("ddim", 2, 2, np.zeros(2))
    plain = kernels.sampler_step(x_t, out, coefficients, backend=backend, seed=1)
    guided = kernels.sampler_step(x_t, out, coefficients, backend=backend, seed=1, classifier_grad=grad,
                                  classifier_coefficients=rows)
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)


@pytest.mark.parametrize("override, error, match", [
    (dict(classifier_coefficients=np.zeros(3)), ValueError, "without classifier_grad"),
    (dict(classifier_grad=torch.zeros(2, 1, 4, 4)), ValueError, "needs classifier_coefficients"),
    (dict(classifier_grad=torch.zeros(2, 1, 3, 3), classifier_coefficients=np.zeros(3)), ValueError,
     "classifier_grad"),
    (dict(classifier_grad=torch.zeros(2, 1, 4, 4), classifier_coefficients=np.zeros(4)), ValueError,
     "classifier_coefficients must have shape"),
    (dict(classifier_grad=torch.zeros(2, 1, 4, 4), classifier_coefficients=np.full(3, np.nan)), ValueError,
     "classifier_coefficients contain NaN"),
    (dict(classifier_grad=torch.zeros(2, 1, 4, 4, dtype=torch.float64), classifier_coefficients=np.zeros(3)),
     (TypeError, ValueError), "classifier_grad"),
])
def test_guided_sampler_step_rejects_bad_inputs(override, error, match):
    x_t = torch.zeros(2, 1, 4, 4)
    with pytest.raises(error, match=match):
        kernels.sampler_step(x_t, x_t.clone(), np.zeros(8), backend="torch", **override)
