"""Index tensors given as views: t, samples and stream may be any 1-D view (expanded, strided,
a column of a matrix), as kernels/validate.py accepts them; every backend must read them by
their values, not as if contiguous (the fused kernels read t_ptr + n).

Before the fix, under the Triton interpreter an expanded t gave NaN (t_ptr + n read past the
one-element storage) and samples=arange(8)[::2] gave the noise of samples 0, 1, 2, 3 instead of
0, 2, 4, 6. Each test compares the view with the
same values made contiguous, on every backend that runs here (the CUDA C host build of these
launches is in tests/test_cuda_sources_on_host.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
from tests.helpers import assert_close
from tests.kernel_backends import BACKEND_DEVICES, NORMAL_ATOL, kernels, to_channels_last

SCHEDULE = reference.make_schedule("linear", 1000)


def tables(device):
    return (torch.tensor(SCHEDULE.sqrt_alpha_bars, dtype=torch.float32, device=device),
            torch.tensor(SCHEDULE.sqrt_one_minus_alpha_bars, dtype=torch.float32, device=device))


def views(device):
    """(name, view, the same values contiguous) of 4 int64 entries."""
    strided = torch.arange(8, device=device)[::2]                 # 0, 2, 4, 6: stride 2
    expanded = torch.tensor([5], device=device).expand(4)         # stride 0
    column = torch.arange(12, device=device).reshape(4, 3)[:, 1]  # 1, 4, 7, 10: stride 3
    return [("strided", strided, strided.contiguous()), ("expanded", expanded, expanded.contiguous()),
            ("column", column, column.contiguous())]


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_normal_reads_sample_and_stream_views_by_value(backend, device):
    for name, view, dense in views(device):
        assert not view.is_contiguous()
        got = kernels.normal(3, view, view + 1, (2, 5), backend=backend)
        want = kernels.normal(3, dense, dense + 1, (2, 5), backend=backend)
        assert torch.equal(got, want), name
        got = kernels.normal(3, dense, view, (7,), backend=backend)  # per-sample stream view only
        assert torch.equal(got, kernels.normal(3, dense, dense, (7,), backend=backend)), name
        expected = reference.normal(3, dense.cpu().numpy(), (dense + 1).cpu().numpy(), (2, 5))
        assert_close(kernels.normal(3, view, view + 1, (2, 5), backend=backend), expected,
                     atol=NORMAL_ATOL, rtol=0.0, name=f"{name} vs reference")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_q_sample_reads_t_samples_and_stream_views_by_value(backend, device, channels_last):
    sa, s1 = tables(device)
    x0 = torch.randn(4, 3, 2, 5)
    if channels_last:
        x0 = to_channels_last(x0)
    x0 = x0.to(device)
    for name, view, dense in views(device):
        t_view, t_dense = view * 90, dense * 90
        noise = torch.randn(x0.shape, device=device)
        got, _ = kernels.q_sample(x0, t_view, sa, s1, noise, backend=backend)
        want, _ = kernels.q_sample(x0, t_dense, sa, s1, noise, backend=backend)
        assert torch.equal(got, want), f"{name} t, given noise"
        assert not torch.isnan(got).any()
        got, eps = kernels.q_sample(x0, t_view, sa, s1, seed=11, samples=view, stream=view,
                                    backend=backend)
        want, eps_want = kernels.q_sample(x0, t_dense, sa, s1, seed=11, samples=dense, stream=dense,
                                          backend=backend)
        assert torch.equal(eps, eps_want), f"{name} samples/stream"
        assert torch.equal(got, want), f"{name} t/samples/stream"
        expected_eps = reference.normal(11, dense.cpu().numpy(), dense.cpu().numpy(), (3, 2, 5))
        assert_close(eps, expected_eps, atol=NORMAL_ATOL, rtol=0.0, name=f"{name} eps vs reference")


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_q_sample_expanded_scalar_t_is_not_nan(backend, device):
    """The reported case: t = tensor([k]).expand(N) gave NaN under the interpreter."""
    sa, s1 = tables(device)
    x0 = torch.randn(6, 40, device=device)
    t = torch.tensor([999], device=device).expand(6)
    got, eps = kernels.q_sample(x0, t, sa, s1, seed=3, backend=backend)
    want, _ = kernels.q_sample(x0, 999, sa, s1, seed=3, backend=backend)
    assert not torch.isnan(got).any()
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_sampler_step_reads_sample_and_stream_views_by_value(backend, device):
    x_t, out = torch.randn(4, 2, 3, 3, device=device), torch.randn(4, 2, 3, 3, device=device)
    coefficients = reference.ddpm_coefficients(SCHEDULE, np.array([700, 600, 500, 400]))
    for name, view, dense in views(device):
        got = kernels.sampler_step(x_t, out, coefficients, seed=8, samples=view, stream=view,
                                   backend=backend)
        want = kernels.sampler_step(x_t, out, coefficients, seed=8, samples=dense, stream=dense,
                                    backend=backend)
        assert torch.equal(got, want), name
        z = reference.normal(8, dense.cpu().numpy(), dense.cpu().numpy(), (2, 3, 3))
        expected = reference.sampler_step(x_t.cpu().numpy(), out.cpu().numpy(), coefficients, noise=z)
        assert_close(got, expected, atol=1e-4, rtol=1e-5, name=f"{name} vs reference")
