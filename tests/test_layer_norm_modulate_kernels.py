"""kernels.layer_norm_modulate (forward and autograd backward) against the reference, every backend.

Forward vs reference.layer_norm_modulate and backward vs reference.layer_norm_modulate_backward
on the exact values the kernel saw (half-type inputs upcast), with the per-dtype tolerance.
Hypothesis draws odd / size-1 shapes (N, L, D), every dtype, shift/scale as strided chunks of
one (N, 6D) tensor (as the DiT passes them) or contiguous, and x with a strided last dim (the
fused backends' one copy). dshift/dscale are float32 sums over L tokens: their atol grows with
sqrt(L) times the largest term (as in the group_norm_silu tests). The CuPy kernels also run on
the CPU through the host build of tests/test_cuda_sources_on_host.py.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reference
from kernels.cupy import layer_norm_modulate as cupy_layer_norm_modulate
from tests.helpers import assert_close
from tests.kernel_backends import BACKEND_DEVICES, TOLERANCES, as_numpy64, dtypes_for, kernels

EPS = 1e-5


def run_case(backend, device, shape, dtype, chunked, strided_x, seed):
    gen = torch.Generator().manual_seed(seed)
    n, length, d = shape
    x = (torch.randn(n, length, d, generator=gen) * 1.7 + 0.4).to(dtype)
    if strided_x:  # last dim not contiguous: a transposed copy viewed back
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    mod = torch.randn(n, 6 * d, generator=gen).to(dtype)
    shift, scale = (mod[:, :d], mod[:, 4 * d:5 * d]) if chunked else (mod[:, :d].contiguous(), mod[:, d:2 * d].contiguous())
    dy = torch.randn(n, length, d, generator=gen).to(dtype)
    leaves = [v.to(device).requires_grad_() for v in (x, shift, scale)] if device == "cpu" else \
        [v.detach().to(device).requires_grad_() for v in (x, shift, scale)]
    y = kernels.layer_norm_modulate(*leaves, EPS, backend=backend)
    grads = torch.autograd.grad(y, leaves, dy.to(device))
    return (x, shift, scale, dy), y, grads


def check_case(inputs, y, grads, dtype, label=""):
    x, shift, scale, dy = (as_numpy64(v) for v in inputs)
    want, cache = reference.layer_norm_modulate(x, shift, scale, EPS)
    dx, dshift, dscale = reference.layer_norm_modulate_backward(dy, cache)
    atol, rtol = TOLERANCES[dtype]
    assert y.dtype == dtype and tuple(y.shape) == x.shape
    assert_close(y, want, atol=atol, rtol=rtol, name=f"{label}y")
    # dx = rstd (...): the storage dtype's round-off of x_hat is amplified by rstd, which is large
    # for rows of nearly equal features (e.g. D = 2), so the bound scales with it
    rstd_max = float(np.max(cache[1]))
    assert_close(grads[0], dx, atol=atol * (1 + np.abs(dy).max()) * max(1.0, rstd_max), rtol=rtol,
                 name=f"{label}dx")
    length = x.shape[1]
    sum_atol = atol * (1.0 + np.abs(dy).max() * max(1.0, np.abs(cache[0]).max()) * math.sqrt(length))
    assert_close(grads[1], dshift, atol=sum_atol, rtol=rtol, name=f"{label}dshift")
    assert_close(grads[2], dscale, atol=sum_atol, rtol=rtol, name=f"{label}dscale")


shapes = st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 5, 7]), st.sampled_from([1, 2, 3, 5, 8, 13, 33]))


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=10)
@given(data=st.data(), shape=shapes, chunked=st.booleans(), strided_x=st.booleans())
@example(data=None, shape=(1, 1, 1), chunked=False, strided_x=False)       # one token of one feature
@example(data=None, shape=(2, 7, 33), chunked=True, strided_x=True)        # D not a power of two
def test_matches_reference(backend, device, data, shape, chunked, strided_x):
    dtype = data.draw(st.sampled_from(dtypes_for(backend))) if data is not None else torch.float32
    inputs, y, grads = run_case(backend, device, shape, dtype, chunked, strided_x, seed=sum(shape))
    check_case(inputs, y, grads, dtype)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_dit_sized_row(backend, device):
    """A DiT-B-sized row (D = 768, not a power of two) over 9 tokens."""
    inputs, y, grads = run_case(backend, device, (2, 9, 768), torch.float32, True, False, seed=3)
    check_case(inputs, y, grads, torch.float32)


def test_torch_backend_float64_equals_reference_to_round_off():
    inputs, y, grads = run_case("torch", "cpu", (2, 5, 13), torch.float64, True, False, seed=1)
    x, shift, scale, dy = (as_numpy64(v) for v in inputs)
    want, cache = reference.layer_norm_modulate(x, shift, scale, EPS)
    assert_close(y, want, atol=1e-14, rtol=1e-13, name="y")
    for got, ref, name in zip(grads, reference.layer_norm_modulate_backward(dy, cache), ("dx", "dshift", "dscale")):
        assert_close(got, ref, atol=1e-13, rtol=1e-12, name=name)


@pytest.mark.parametrize("bad, error, match", [
    (dict(x=torch.zeros(2, 5)), ValueError, "x must have at least 3"),
    (dict(shift=torch.zeros(2, 4)), ValueError, r"shift must have shape \(N, D\)"),
    (dict(scale=torch.zeros(3, 5)), ValueError, r"scale must have shape \(N, D\)"),
    (dict(eps=-1.0), ValueError, "eps must be > 0"),
    (dict(x=torch.zeros(2, 3, 5, dtype=torch.int64)), TypeError, "x must have dtype"),
])
def test_bad_input_names_the_argument(bad, error, match):
    args = dict(x=torch.zeros(2, 3, 5), shift=torch.zeros(2, 5), scale=torch.zeros(2, 5), eps=1e-6)
    args.update(bad)
    with pytest.raises(error, match=match):
        kernels.layer_norm_modulate(args["x"], args["shift"], args["scale"], args["eps"], backend="torch")


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed (needed for the host build)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 4, 300)], ids=["small", "D-over-one-block"])
def test_cupy_source_on_host_matches_reference(monkeypatch, dtype, shape):
    from tests.test_cuda_sources_on_host import HostKernel

    monkeypatch.setattr(cupy_layer_norm_modulate, "get_kernel", lambda source, name, **m: HostKernel(source, name, m))
    monkeypatch.setattr(cupy_layer_norm_modulate, "launch", lambda kernel, grid, block, args, device: kernel(grid, block, args))
    gen = torch.Generator().manual_seed(0)
    n, length, d = shape
    x = (torch.randn(n, length, d, generator=gen) * 2 + 1).to(dtype)
    mod = torch.randn(n, 6 * d, generator=gen)
    shift, scale = mod[:, :d], mod[:, d:2 * d]                       # strided chunks, float32
    dy = torch.randn(n, length, d, generator=gen).to(dtype)
    y, mean, rstd = cupy_layer_norm_modulate.forward(x, shift, scale, EPS)
    dx, dshift, dscale = cupy_layer_norm_modulate.backward(dy, x, scale, mean, rstd)
    check_case((x, shift, scale, dy), y, (dx, dshift, dscale), dtype, label="cupy-host ")
