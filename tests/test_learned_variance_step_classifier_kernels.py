"""kernels.learned_variance_step's classifier-guidance input against reference.learned_variance_step.

Dhariwal & Nichol 2021, Alg. 1 with the learned variance of Improved DDPM (Eq. 15): the mean is
shifted by s Sigma g with Sigma = exp(log sigma^2) per element, log sigma^2 interpolating log
beta_t and log beta_tilde_t with the model's v. The term (g and per-sample (a0, a1, a2) rows,
scale included, reference.classifier_guidance) joins the step's one pass. Rows come from real
learned-variance ddpm plans (full and respaced, the step into x_0 included); Triton runs under
TRITON_INTERPRET=1 on the CPU, the CUDA C source through the host build (test_cuda_sources_on_host).
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


def _plan_rows(num_steps: int, k: int, n: int, scale: np.ndarray, prediction: str = "epsilon"):
    """(N, 10) step coefficients and (N, 3) guidance rows of step k of a learned-variance ddpm plan."""
    plan = reference.sampling_plan(SCHEDULE, "ddpm", num_steps, variance="learned", prediction=prediction)
    rows = reference.guidance_rows(plan, scale)[k]
    return np.broadcast_to(plan.coefficients[k], (n, 10)).copy(), rows


def _wide(shape) -> tuple:
    return (shape[0], 2 * shape[1]) + tuple(shape[2:])


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=12, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 3), st.sampled_from([1, 3]), st.sampled_from([1, 5]),
                                        st.sampled_from([1, 4])),
       num_steps=st.sampled_from([10, 1000]), k=st.sampled_from([0, 4, -1]),
       channels_last=st.booleans(), clip=st.sampled_from([None, (-1.0, 1.0)]),
       noise_source=st.sampled_from(["tensor", "stream"]), prediction=st.sampled_from(reference.PREDICTIONS),
       seed=st.integers(0, 2**63 - 1))
@example(data=None, shape=(1, 1, 1, 1), num_steps=10, k=-1, channels_last=False, clip=None,
         noise_source="tensor", prediction="epsilon", seed=0).via("size 1, the step into x_0 (no shift)")
@example(data=None, shape=(3, 3, 5, 4), num_steps=1000, k=0, channels_last=True, clip=(-1.0, 1.0),
         noise_source="stream", prediction="v_prediction", seed=5).via("odd sizes, channels_last, t = T - 1")
def test_guided_learned_variance_step_matches_reference(backend, device, data, shape, num_steps, k,
                                                        channels_last, clip, noise_source, prediction, seed):
    dtype = torch.float32 if data is None else data.draw(st.sampled_from(dtypes_for(backend)), label="dtype")
    n = shape[0]
    scale = np.linspace(0.0, 8.0, n)  # per-sample scales, 0 included
    coefficients, rows = _plan_rows(num_steps, k, n, scale, prediction)
    gen = torch.Generator().manual_seed(seed)
    x_t, grad = (torch.randn(shape, generator=gen).to(dtype) for _ in range(2))
    model_output = torch.randn(_wide(shape), generator=gen).to(dtype)
    if channels_last:
        x_t, grad, model_output = (to_channels_last(v) for v in (x_t, grad, model_output))
    z32 = reference.normal(seed, np.arange(n), 3, shape[1:])
    kwargs = dict(clip=clip, backend=backend, classifier_grad=grad.to(device), classifier_coefficients=rows)
    if noise_source == "tensor":
        kwargs["noise"] = torch.from_numpy(z32).to(dtype).to(device)
        z_seen = as_numpy64(kwargs["noise"].cpu())
    else:
        kwargs.update(seed=seed, stream=3)
        z_seen = z32.astype(np.float64)
    got = kernels.learned_variance_step(x_t.to(device), model_output.to(device), coefficients, **kwargs)
    compute = np.float64 if dtype == torch.float64 else np.float32
    expected = reference.learned_variance_step(as_numpy64(x_t).astype(compute),
                                               as_numpy64(model_output).astype(compute), coefficients,
                                               z_seen.astype(compute), clip, classifier_grad=as_numpy64(grad),
                                               classifier_coefficients=rows)
    atol, rtol = TOLERANCES[dtype]
    if noise_source == "stream" and backend != "torch":
        atol += NORMAL_ATOL * float(np.exp(0.5 * np.abs(coefficients[:, 7:9]).max() * 2))
    assert_close(got, expected, atol=atol, rtol=rtol, name=f"{backend} guided learned x_prev ({dtype})")


def test_the_guided_step_is_algorithm_1_with_the_learned_variance():
    """The reference step equals mu + s exp(learned_log_variance) g + sigma z, Sigma from
    reference.learned_log_variance (an independent formula for the per-element variance)."""
    rng = np.random.default_rng(0)
    shape = (3, 2, 4, 4)
    x_t, out, v, z, grad = (rng.standard_normal(shape) for _ in range(5))
    scale = np.array([0.5, 2.0, 6.0])
    for num_steps in (1000, 25):
        plan = reference.sampling_plan(SCHEDULE, "ddpm", num_steps, variance="learned")
        step_schedule = SCHEDULE if num_steps == 1000 else SCHEDULE.respace(plan.timesteps)
        for k in (0, num_steps // 2, num_steps - 1):
            model_output = np.concatenate([out, v], axis=1)
            rows = reference.guidance_rows(plan, scale)[k]
            guided = reference.learned_variance_step(x_t, model_output, plan.coefficients[k], z,
                                                     classifier_grad=grad, classifier_coefficients=rows)
            plain = reference.learned_variance_step(x_t, model_output, plan.coefficients[k], z)
            index = num_steps - 1 - k  # the step schedule's own index
            log_variance = reference.learned_log_variance(v, np.full(3, index), step_schedule)
            shift = scale[:, None, None, None] * np.exp(log_variance) * grad
            expected = plain + (shift if index > 0 else 0.0)  # Sigma = 0 into x_0, as fixed variances
            np.testing.assert_allclose(guided, expected, rtol=1e-12, atol=1e-12)
            assert index == 0 or np.abs(guided - plain).max() > 1e-4


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_guided_learned_step_float32_with_given_noise_equals_reference_on_cpu(backend, device):
    if device != "cpu":
        pytest.skip("exactness is asserted where the arithmetic is NumPy's or torch's on the CPU")
    gen = torch.Generator().manual_seed(1)
    x_t, z, grad = (torch.randn(3, 2, 5, 5, generator=gen) for _ in range(3))
    model_output = torch.randn(3, 4, 5, 5, generator=gen)
    coefficients, rows = _plan_rows(1000, 500, 3, np.array([0.5, 1.0, 4.0]))
    rows = rows + np.array([0.25, -0.5, 0.0])  # a0, a1 exercised too (not used by Alg. 1's rows)
    got = kernels.learned_variance_step(x_t, model_output, coefficients, clip=(-1, 1), noise=z, backend=backend,
                                        classifier_grad=grad, classifier_coefficients=torch.from_numpy(rows))
    expected = reference.learned_variance_step(x_t.numpy(), model_output.numpy(), coefficients, z.numpy(),
                                               (-1, 1), classifier_grad=grad.numpy(), classifier_coefficients=rows)
    # float64 exp in NumPy vs torch may differ in the last float64 bit; one float32 rounding after
    assert_close(got, expected, atol=0.0, rtol=2**-23, name="float32 guided x_prev")
    assert np.mean(got.numpy() == expected) > 0.99


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_zero_scale_is_the_unguided_learned_step(backend, device):
    x_t, grad = (torch.randn(2, 1, 4, 4, device=device) for _ in range(2))
    model_output = torch.randn(2, 2, 4, 4, device=device)
    coefficients, rows = _plan_rows(10, 2, 2, np.zeros(2))
    plain = kernels.learned_variance_step(x_t, model_output, coefficients, backend=backend, seed=1)
    guided = kernels.learned_variance_step(x_t, model_output, coefficients, backend=backend, seed=1,
                                           classifier_grad=grad, classifier_coefficients=rows)
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)


@pytest.mark.parametrize("override, match", [
    (dict(classifier_coefficients=np.zeros(3)), "without classifier_grad"),
    (dict(classifier_grad=torch.zeros(2, 1, 4, 4)), "needs classifier_coefficients"),
    (dict(classifier_grad=torch.zeros(2, 2, 4, 4), classifier_coefficients=np.zeros(3)), "classifier_grad"),
    (dict(classifier_grad=torch.zeros(2, 1, 4, 4), classifier_coefficients=np.zeros(4)),
     "classifier_coefficients must have shape"),
])
def test_guided_learned_step_rejects_bad_inputs(override, match):
    x_t = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=match):
        kernels.learned_variance_step(x_t, torch.zeros(2, 2, 4, 4), np.zeros(10), backend="torch", **override)
