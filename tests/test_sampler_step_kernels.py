"""kernels.sampler_step against reference.sampler_step (+ classifier_free_guidance), every backend.

Coefficients come from the reference (ddpm_coefficients: every prediction and variance type,
t = 0 included; ddim_coefficients: eta 0 and > 0, t_prev = -1 included), per sample or shared.
Hypothesis draws shapes, dtypes, memory formats, CFG on/off, clip on/off, and the noise source
(none where sigma = 0, a tensor, or in-kernel). All backends evaluate the rule in float64 from
the stored inputs, so float32 with given noise equals the reference bit for bit on the CPU;
float64 (torch backend) equals it too (the reference's operation order).
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
COSINE = reference.make_schedule("cosine", 1000)
shapes = st.one_of(
    st.tuples(st.integers(1, 4), st.sampled_from([1, 3, 4]), st.sampled_from([1, 2, 5]),
              st.sampled_from([1, 3, 7])),
    st.tuples(st.integers(1, 5), st.sampled_from([1, 2, 17])),
)


@st.composite
def coefficient_sets(draw, n):
    """(N, 8) float64 coefficients of a DDPM or DDIM step from the reference, and a label."""
    schedule = draw(st.sampled_from([SCHEDULE, COSINE]))
    prediction = draw(st.sampled_from(reference.PREDICTIONS))
    t = np.array(draw(st.lists(st.sampled_from([0, 1, 2, 500, 998, 999]) | st.integers(0, 999),
                               min_size=n, max_size=n)))
    if draw(st.booleans()):
        variance = draw(st.sampled_from(reference.VARIANCES))
        return reference.ddpm_coefficients(schedule, t, prediction, variance)
    eta = draw(st.sampled_from([0.0, 0.5, 1.0]))
    t = np.maximum(t, 1)
    t_prev = np.array([draw(st.integers(-1, int(ti) - 1)) for ti in t])
    return reference.ddim_coefficients(schedule, t, t_prev, eta, prediction)


def reference_step(x_t, out, uncond, w, coefficients, noise, clip, dtype):
    """reference.sampler_step on the kernel's exact inputs (float32 arrays; float64 for float64)."""
    compute = np.float64 if dtype == torch.float64 else np.float32
    x = as_numpy64(x_t).astype(compute)
    o = as_numpy64(out).astype(compute)
    if uncond is not None:
        o = reference.classifier_free_guidance(o, as_numpy64(uncond).astype(compute), w)
    z = None if noise is None else noise.astype(compute)
    return reference.sampler_step(x, o, coefficients, z, clip)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=25)
@given(data=st.data(), shape=shapes, channels_last=st.booleans(), guided=st.booleans(),
       clip=st.sampled_from([None, (-1.0, 1.0), (-0.5, 2.0)]),
       noise_source=st.sampled_from(["tensor", "stream"]), shared=st.booleans(),
       seed=st.integers(0, 2**64 - 1))
def test_sampler_step_matches_reference(backend, device, data, shape, channels_last, guided, clip,
                                        noise_source, shared, seed):
    dtype = data.draw(st.sampled_from(dtypes_for(backend)), label="dtype")
    n = shape[0]
    coefficients = data.draw(coefficient_sets(1 if shared else n), label="coefficients")
    if shared:
        coefficients = coefficients[0]
    gen = torch.Generator().manual_seed(seed % 2**63)
    x_t, out, uncond = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    if channels_last:
        x_t, out, uncond = (to_channels_last(v) for v in (x_t, out, uncond))
    w = data.draw(st.sampled_from([1.0, 3.5, 7.25]), label="guidance_scale") if guided else 1.0
    samples = data.draw(st.none() | st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n),
                        label="samples")
    stream = data.draw(st.integers(0, 2**32 - 1), label="stream")
    z32 = reference.normal(seed, np.arange(n) if samples is None else samples, stream, shape[1:])
    kwargs = dict(clip=clip, backend=backend)
    if guided:
        kwargs.update(model_output_uncond=uncond.to(device), guidance_scale=w)
    if noise_source == "tensor":
        noise = torch.from_numpy(z32).to(dtype)
        kwargs["noise"] = (to_channels_last(noise) if channels_last else noise).to(device)
        z_seen = as_numpy64(noise)
    else:
        kwargs.update(seed=seed, samples=samples, stream=stream)
        z_seen = z32.astype(np.float64)
    x_prev = kernels.sampler_step(x_t.to(device), out.to(device), coefficients, **kwargs)
    assert x_prev.dtype == dtype and x_prev.shape == x_t.shape and x_prev.device.type == device
    expected = reference_step(x_t, out, uncond if guided else None, w, coefficients, z_seen, clip, dtype)
    atol, rtol = TOLERANCES[dtype]
    if noise_source == "stream" and backend != "torch":
        sigma = np.max(np.abs(np.atleast_2d(coefficients)[:, 7]))
        atol += NORMAL_ATOL * sigma  # float32 Box-Muller of the fused kernels
    assert_close(x_prev, expected, atol=atol, rtol=rtol, name=f"{backend} x_prev ({dtype})")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_sampler_step_float32_with_given_noise_is_bit_exact_on_cpu(backend, device):
    if device != "cpu":
        pytest.skip("bit-exactness is asserted where the arithmetic is NumPy's")
    x_t, out, uncond, z = (torch.randn(3, 2, 5, 5) for _ in range(4))
    t = np.array([999, 10, 0])
    for coefficients in (reference.ddpm_coefficients(SCHEDULE, t, "epsilon"),
                         reference.ddim_coefficients(SCHEDULE, t[:2], np.array([-1, 3]), 0.7, "v_prediction")):
        n = coefficients.shape[0]
        got = kernels.sampler_step(x_t[:n], out[:n], coefficients, model_output_uncond=uncond[:n],
                                   guidance_scale=4.0, clip=(-1, 1), noise=z[:n], backend=backend)
        cfg = reference.classifier_free_guidance(out[:n].numpy(), uncond[:n].numpy(), 4.0)
        expected = reference.sampler_step(x_t[:n].numpy(), cfg, coefficients, z[:n].numpy(), (-1, 1))
        np.testing.assert_array_equal(got.numpy(), expected)


def test_torch_sampler_step_float64_matches_reference_to_1e_15():
    gen = torch.Generator().manual_seed(0)
    x_t, out, uncond, z = (torch.randn(4, 3, 6, 6, generator=gen, dtype=torch.float64) for _ in range(4))
    for coefficients in (reference.ddpm_coefficients(SCHEDULE, np.array([999, 500, 1, 0]), "sample", "fixed_large"),
                         reference.ddim_coefficients(COSINE, np.array([999, 500, 20, 1]), np.array([899, -1, 0, 0]), 0.3)):
        got = kernels.sampler_step(x_t, out, coefficients, model_output_uncond=uncond,
                                   guidance_scale=2.5, noise=z, clip=(-1.5, 1.5), backend="torch")
        cfg = reference.classifier_free_guidance(out.numpy(), uncond.numpy(), 2.5)
        expected = reference.sampler_step(x_t.numpy(), cfg, coefficients, z.numpy(), (-1.5, 1.5))
        assert_close(got, expected, atol=0.0, rtol=1e-15, name="float64 x_prev")
        # in-kernel noise: the same numbers as the reference's stream
        got = kernels.sampler_step(x_t, out, coefficients, seed=9, stream=4, backend="torch")
        noise = reference.normal(9, np.arange(4), 4, (3, 6, 6)).astype(np.float64)
        expected = reference.sampler_step(x_t.numpy(), out.numpy(), coefficients, noise)
        assert_close(got, expected, atol=0.0, rtol=1e-15, name="float64 x_prev, in-kernel noise")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_sampler_step_out_may_alias_x_t(backend, device):
    x_t = torch.randn(2, 3, 4, 4, device=device)
    out = torch.randn(2, 3, 4, 4, device=device)
    coefficients = reference.ddim_coefficients(SCHEDULE, np.array([500, 400]), np.array([300, -1]), 1.0)
    expected = kernels.sampler_step(x_t, out, coefficients, seed=3, stream=2, backend=backend)
    returned = kernels.sampler_step(x_t, out, coefficients, seed=3, stream=2, out=x_t, backend=backend)
    assert returned is x_t
    assert torch.equal(x_t, expected)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_sampler_step_out_in_another_layout_receives_the_result(backend, device):
    x_t = torch.randn(2, 3, 4, 5, device=device)
    model_output = to_channels_last(torch.randn(2, 3, 4, 5, device=device))
    coefficients = reference.ddpm_coefficients(SCHEDULE, np.array([10, 0]))
    expected = kernels.sampler_step(x_t, model_output, coefficients, seed=1, backend="torch")
    out = to_channels_last(torch.empty(2, 3, 4, 5, device=device))
    result = kernels.sampler_step(x_t, model_output, coefficients, seed=1, out=out, backend=backend)
    assert result is out
    assert_close(out, expected, atol=NORMAL_ATOL, rtol=1e-6, name="out")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_sampler_step_in_kernel_noise_is_batch_invariant(backend, device):
    x_t, out = torch.randn(4, 2, 3, 3, device=device), torch.randn(4, 2, 3, 3, device=device)
    coefficients = reference.ddpm_coefficients(SCHEDULE, np.array([700, 600, 500, 400]))
    full = kernels.sampler_step(x_t, out, coefficients, seed=8, samples=[40, 41, 42, 43], stream=5,
                                backend=backend)
    part = kernels.sampler_step(x_t[1:3], out[1:3], coefficients[1:3], seed=8, samples=[41, 42],
                                stream=5, backend=backend)
    assert torch.equal(full[1:3], part)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_sampler_step_equals_torch_backend(backend, device):
    x_t, out, uncond = (to_channels_last(torch.randn(3, 4, 5, 3)) for _ in range(3))
    coefficients = torch.tensor(reference.ddpm_coefficients(SCHEDULE, np.array([999, 50, 0]), "v_prediction"))
    plain = kernels.sampler_step(x_t, out, coefficients, model_output_uncond=uncond, guidance_scale=3.0,
                                 clip=(-1, 1), seed=4, stream=7, backend="torch")
    fused = kernels.sampler_step(x_t.to(device), out.to(device), coefficients.to(device),
                                 model_output_uncond=uncond.to(device), guidance_scale=3.0,
                                 clip=(-1, 1), seed=4, stream=7, backend=backend)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert_close(fused, plain, atol=NORMAL_ATOL, rtol=1e-6, name="x_prev")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_sampler_step_without_noise_where_sigma_is_zero(backend, device):
    """DDIM eta = 0 and DDPM at t = 0 need no noise source."""
    x_t, out = torch.randn(2, 3, 3, device=device), torch.randn(2, 3, 3, device=device)
    coefficients = reference.ddim_coefficients(SCHEDULE, np.array([900, 100]), np.array([800, -1]), 0.0)
    got = kernels.sampler_step(x_t, out, coefficients, backend=backend)
    expected = reference.sampler_step(as_numpy64(x_t).astype(np.float32), as_numpy64(out).astype(np.float32),
                                        coefficients)
    assert_close(got, expected, atol=1e-5, rtol=1e-5, name="eta=0")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_sampler_step_device_coefficients_without_noise_give_nan_where_sigma_nonzero(backend, device):
    """The device-side guard for coefficients that are not read back (here called below the
    host check): samples with sigma != 0 and no noise source become NaN, the others are exact."""
    x_t, out = torch.randn(2, 3, 3, device=device), torch.randn(2, 3, 3, device=device)
    coefficients = torch.tensor(reference.ddpm_coefficients(SCHEDULE, np.array([0, 5])), device=device)
    if backend == "torch":
        got = torch_ops.sampler_step(x_t, out, coefficients, None, 1.0, None, None, None, None, 0, None)
    else:
        if backend == "triton":
            from kernels.triton.sampler_step import sampler_step as launch
        else:
            from kernels.cupy.sampler_step import sampler_step as launch
        got = launch(x_t, out, coefficients, None, 1.0, None, None, None, None, 0, None)
    assert torch.isfinite(got[0]).all() and torch.isnan(got[1]).all()


def test_the_step_has_one_name():
    """One name per op: the reference's ddpm_step/ddim_step take a schedule, the kernel takes
    coefficients, so the kernel is only `kernels.sampler_step`."""
    assert not hasattr(kernels, "ddpm_step") and not hasattr(kernels, "ddim_step")


def _args(**override):
    args = dict(x_t=torch.randn(2, 3, 4), model_output=torch.randn(2, 3, 4),
                coefficients=reference.ddpm_coefficients(SCHEDULE, np.array([5, 3])), noise=torch.randn(2, 3, 4))
    args.update(override)
    return args


@pytest.mark.parametrize("override, error, match", [
    (dict(x_t=np.zeros((2, 3, 4))), TypeError, "x_t must be a torch.Tensor"),
    (dict(model_output=torch.randn(2, 3, 5)), ValueError, "model_output must have the shape"),
    (dict(model_output=torch.randn(2, 3, 4, dtype=torch.float64)), TypeError, "model_output must have the dtype"),
    (dict(model_output=torch.randn(2, 3, 4, device="meta")), ValueError, "model_output must be on"),
    (dict(coefficients=np.zeros(7)), ValueError, "coefficients must have shape"),
    (dict(coefficients=np.zeros((3, 8))), ValueError, "coefficients must have shape"),
    (dict(coefficients=np.full(8, np.nan)), ValueError, "NaN"),
    (dict(coefficients="ddpm"), TypeError, "coefficients"),
    (dict(noise=None), ValueError, "noise or seed is required"),
    (dict(noise=torch.randn(2, 3)), ValueError, "noise must have the shape"),
    (dict(seed=1), ValueError, "either noise or seed"),
    (dict(guidance_scale=3.0), ValueError, "model_output_uncond"),
    (dict(guidance_scale=float("inf"), model_output_uncond=torch.randn(2, 3, 4)), ValueError, "guidance_scale"),
    (dict(model_output_uncond=torch.randn(2, 3, 4, dtype=torch.float16)), TypeError, "model_output_uncond"),
    (dict(clip=(1.0, -1.0)), ValueError, "clip"),
    (dict(clip=1.0), TypeError, "clip"),
    (dict(out=torch.empty(2, 3, 5)), ValueError, "out must have the shape"),
    (dict(out=torch.empty(1, 3, 4).expand(2, 3, 4)), ValueError, "out must not have zero strides"),
    (dict(noise=None, seed=1, samples=[0, 2**32]), ValueError, "samples must lie"),
    (dict(noise=None, seed=1, samples=[0]), ValueError, "samples must have 2 entries"),
    (dict(backend="triton-cuda"), ValueError, "backend"),
])
def test_sampler_step_rejects_bad_inputs(override, error, match):
    with pytest.raises(error, match=match):
        kernels.sampler_step(**_args(**override))


def test_sampler_step_accepts_coefficients_as_tensor_or_list():
    args = _args()
    reference_result = kernels.sampler_step(**args)
    c = args.pop("coefficients")
    assert torch.equal(kernels.sampler_step(coefficients=torch.tensor(c), **args), reference_result)
    assert torch.equal(kernels.sampler_step(coefficients=c.tolist(), **args), reference_result)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_clip_bounds_are_float64_on_every_backend(backend, device):
    """clip=(-0.9, 0.9): bounds not representable in float32 clip at their float64 values
    (compiled Triton would type a Python float argument as fp32; the kernel takes their bits)."""
    schedule = reference.make_schedule("linear", 100)
    coefficients = reference.ddim_coefficients(schedule, 90, 60)[0]
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((2, 3, 5, 7)).astype(np.float32) * 3
    out = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    want = reference.sampler_step(x_t, out, coefficients, clip=(-0.9, 0.9))
    got = kernels.sampler_step(torch.tensor(x_t, device=device), torch.tensor(out, device=device),
                               torch.tensor(coefficients, device=device), clip=(-0.9, 0.9),
                               backend=backend)
    assert np.array_equal(got.cpu().numpy(), want)
