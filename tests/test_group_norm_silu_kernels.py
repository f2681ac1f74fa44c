"""kernels.group_norm_silu (forward, autograd backward, nn.Module) against the reference.

Forward vs reference.group_norm_silu and backward vs reference.group_norm_silu_backward (d shift
= dx summed over the spatial axes), on the exact values the kernel saw (half-type inputs upcast),
with the per-dtype tolerance; the fused backends also vs torch autograd of
F.silu(F.group_norm(x + shift)). Hypothesis draws odd/prime/size-1 shapes, 0-3 spatial dims,
groups from 1 to C, both memory formats, every dtype, activation on/off, affine on/off, shift.
Gradient tolerance: dweight/dbias/dshift are float32 sums over up to a few hundred terms, so
their error is ~sqrt(terms) ulps of the largest term; they get atol 1e-5 * (1 + max |term| *
sqrt(terms)) (see _sum_atol), everything else the plain per-dtype tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from tests.helpers import assert_close
from tests.kernel_backends import (
    BACKEND_DEVICES,
    FUSED_BACKEND_DEVICES,
    TOLERANCES,
    as_numpy64,
    dtypes_for,
    kernels,
    to_channels_last,
)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 3, 4, 6, 7, 12]))
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    spatial = draw(st.sampled_from([(), (1,), (5,), (1, 1), (3, 5), (7, 2), (4, 4), (2, 3, 3)]))
    return (n, c) + spatial, groups


def _sum_atol(atol: float, terms: np.ndarray, count: int) -> float:
    """Tolerance of a float32 sum of `count` terms: ~sqrt(count) roundings of the largest term."""
    return atol * (1.0 + float(np.max(np.abs(terms), initial=0.0)) * math.sqrt(max(count, 1)))


def run_case(backend, device, shape, groups, dtype, param_dtype, channels_last, activation, affine,
             with_shift, seed, **config):
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = (torch.randn(shape, generator=gen) * 1.7 + 0.4).to(dtype)
    if channels_last:
        x = to_channels_last(x)
    weight = (torch.randn(c, generator=gen) + 1.0).to(param_dtype) if affine else None
    bias = torch.randn(c, generator=gen).to(param_dtype) if affine else None
    shift = torch.randn(n, c, generator=gen).to(param_dtype) if with_shift else None
    dy = torch.randn(shape, generator=gen).to(dtype)
    leaves = [v.to(device).requires_grad_() if v is not None else None for v in (x, weight, bias, shift)]
    if config:  # a fused backend's kernels with explicit launch configuration
        module = _fused_module(backend)
        with torch.no_grad():
            y, mean, rstd = module.forward(*[v.detach() if v is not None else None for v in leaves],
                                           groups, 1e-5, activation, **config)
            grads = module.backward(dy.to(device), *[v.detach() if v is not None else None for v in leaves],
                                    mean, rstd, groups, activation, (True, True, True, True), **config)
    else:
        y = kernels.group_norm_silu(leaves[0], leaves[1], leaves[2], groups, 1e-5, activation,
                                    shift=leaves[3], backend=backend)
        wanted = [v for v in leaves if v is not None]
        got = iter(torch.autograd.grad(y, wanted, dy.to(device)))
        grads = [next(got) if v is not None else None for v in leaves]
    return (x, weight, bias, shift, dy), y, grads


def _fused_module(backend):
    if backend == "triton":
        from kernels.triton import group_norm_silu as module
    else:
        from kernels.cupy import group_norm_silu as module
    return module


def check_against_reference(inputs, y, grads, groups, activation, dtype, name):
    x, weight, bias, shift, dy = inputs
    as64 = lambda v: None if v is None else as_numpy64(v)  # noqa: E731
    y_ref, cache = reference.group_norm_silu(as64(x), as64(weight), as64(bias), groups, 1e-5,
                                             activation, shift=as64(shift))
    dx_ref, dw_ref, db_ref = reference.group_norm_silu_backward(as64(dy), cache)
    atol, rtol = TOLERANCES[dtype]
    assert y.dtype == x.dtype and y.shape == x.shape
    y_atol = atol
    assert_close(y, y_ref, atol=y_atol, rtol=rtol, name=f"{name} y")
    dx, dw, db, dshift = grads
    assert_close(dx, dx_ref, atol=atol, rtol=rtol, name=f"{name} dx")
    per_channel = x.numel() // x.shape[1]
    spatial_axes = tuple(range(2, x.dim()))
    if weight is not None:
        terms = as_numpy64(dy) * cache.x_hat
        p_atol, p_rtol = TOLERANCES[weight.dtype]
        assert dw.dtype == weight.dtype and db.dtype == bias.dtype
        assert_close(dw, dw_ref, atol=_sum_atol(max(atol, p_atol), terms, per_channel), rtol=max(rtol, p_rtol),
                     name=f"{name} dweight")
        assert_close(db, db_ref, atol=_sum_atol(max(atol, p_atol), as_numpy64(dy), per_channel),
                     rtol=max(rtol, p_rtol), name=f"{name} dbias")
    if shift is not None:
        p_atol, p_rtol = TOLERANCES[shift.dtype]
        spatial = max(1, x[0, 0].numel())
        dshift_ref = dx_ref.sum(axis=spatial_axes) if spatial_axes else dx_ref
        assert_close(dshift, dshift_ref, atol=_sum_atol(max(atol, p_atol), _dx_terms(cache, as64(dy)), spatial),
                     rtol=max(rtol, p_rtol), name=f"{name} dshift")


def _dx_terms(cache, dy):
    """Per element, the magnitudes that cancel in dx = rstd (dx_hat - mean(dx_hat) - x_hat
    mean(dx_hat x_hat)): what a float32 evaluation of sum_hw dx rounds against."""
    da = dy if cache.sigmoid_a is None else dy * cache.sigmoid_a * (1 + cache.a * (1 - cache.sigmoid_a))
    shape = da.shape
    w = 1.0 if cache.weight is None else cache.weight.reshape((1, -1) + (1,) * (len(shape) - 2))
    dx_hat = (da * w).reshape(shape[0], cache.groups, -1)
    x_hat = cache.x_hat.reshape(shape[0], cache.groups, -1)
    m1 = np.abs(dx_hat.mean(axis=2, keepdims=True))
    m2 = np.abs((dx_hat * x_hat).mean(axis=2, keepdims=True))
    return cache.rstd[:, :, None] * (np.abs(dx_hat) + m1 + np.abs(x_hat) * m2)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@settings(max_examples=12)
@given(data=st.data(), problem=problems(), channels_last=st.booleans(), activation=st.booleans(),
       affine=st.booleans(), with_shift=st.booleans(), seed=st.integers(0, 2**31))
def test_group_norm_silu_matches_reference_forward_and_backward(backend, device, data, problem,
                                                                channels_last, activation, affine,
                                                                with_shift, seed):
    shape, groups = problem
    dtype = data.draw(st.sampled_from(dtypes_for(backend)), label="dtype")
    param_dtype = dtype if dtype == torch.float64 else data.draw(
        st.sampled_from([torch.float32, dtype]), label="param_dtype")
    inputs, y, grads = run_case(backend, device, shape, groups, dtype, param_dtype, channels_last,
                                activation, affine, with_shift, seed)
    if channels_last and len(shape) in (4, 5) and shape[1] > 1 and math.prod(shape[2:]) > 1:
        assert y.is_contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    check_against_reference(inputs, y, grads, groups, activation, dtype, backend)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
@pytest.mark.parametrize("case", ["nchw", "channels_last", "groups_1", "groups_eq_C", "hw_1"])
def test_fused_two_stage_reduction_over_many_chunks_and_tiles(backend, device, case):
    """Tiny tiles and several chunks per group: the Welford merge, the chunk combine and the
    per-chunk gradient partials are all exercised on shapes an interpreter can run."""
    shape, groups, channels_last = {
        "nchw": ((2, 6, 5, 7), 3, False), "channels_last": ((2, 6, 5, 7), 2, True),
        "groups_1": ((1, 5, 3, 4), 1, True), "groups_eq_C": ((3, 4, 3, 3), 4, False),
        "hw_1": ((3, 6, 1, 1), 2, False),
    }[case]
    config = dict(splits=3, block_hw=8, block_c=2) if backend == "triton" else dict(splits=3)
    inputs, y, grads = run_case(backend, device, shape, groups, torch.float32, torch.float32,
                                channels_last, True, True, True, seed=7, **config)
    check_against_reference(inputs, y, grads, groups, True, torch.float32, f"{backend} split")


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_backward_matches_torch_autograd(backend, device):
    gen = torch.Generator().manual_seed(3)
    x = to_channels_last(torch.randn(2, 8, 5, 3, generator=gen)).to(device).requires_grad_()
    weight = torch.randn(8, generator=gen).to(device).requires_grad_()
    bias = torch.randn(8, generator=gen).to(device).requires_grad_()
    shift = torch.randn(2, 8, generator=gen).to(device).requires_grad_()
    dy = torch.randn(2, 8, 5, 3, generator=gen).to(device)
    y = kernels.group_norm_silu(x, weight, bias, 4, 1e-6, shift=shift, backend=backend)
    grads = torch.autograd.grad(y, (x, weight, bias, shift), dy)
    y_torch = F.silu(F.group_norm(x + shift[:, :, None, None], 4, weight, bias, 1e-6))
    grads_torch = torch.autograd.grad(y_torch, (x, weight, bias, shift), dy)
    assert_close(y, y_torch, atol=1e-5, rtol=1e-5, name="y")
    for name, g, g_torch in zip(("dx", "dweight", "dbias", "dshift"), grads, grads_torch):
        assert_close(g, g_torch, atol=2e-5, rtol=1e-5, name=name)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_fused_group_norm_silu_is_deterministic(backend, device):
    """No atomics: two runs give bitwise identical outputs and gradients."""
    results = []
    for _ in range(2):
        inputs, y, grads = run_case(backend, device, (2, 6, 7, 5), 3, torch.float32, torch.float32,
                                    True, True, True, True, seed=11)
        results.append([y.detach()] + list(grads))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_fused_reads_both_memory_formats_without_copies(backend, device, memory_format, monkeypatch):
    module = _fused_module(backend)
    copies = []
    original = module.same_layout_or_copy

    def spy(t, layout):
        out = original(t, layout)
        if out.data_ptr() != t.data_ptr():
            copies.append(tuple(t.shape))
        return out

    monkeypatch.setattr(module, "same_layout_or_copy", spy)
    x = torch.randn(2, 6, 4, 5, device=device)
    if memory_format == "channels_last":
        x = to_channels_last(x)
    x.requires_grad_()
    y = kernels.group_norm_silu(x, None, None, 3, backend=backend)
    (y * y).sum().backward()  # dy = 2 y, in y's layout
    assert copies == []
    assert y.is_contiguous(memory_format=torch.channels_last if memory_format == "channels_last"
                           else torch.contiguous_format)
    assert x.grad.is_contiguous(memory_format=torch.channels_last if memory_format == "channels_last"
                                else torch.contiguous_format)


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
def test_group_norm_silu_strided_input_and_expanded_dy_are_handled(backend, device):
    base = torch.randn(2, 8, 6, 9, device=device)
    x = base[:, ::2, :, ::2].requires_grad_()  # neither contiguous nor channels_last: one copy
    y = kernels.group_norm_silu(x, None, None, 2, backend=backend)
    y.sum().backward()  # dy is an expanded (stride 0) tensor of ones
    x_ref = x.detach().contiguous().requires_grad_()
    y_ref = F.silu(F.group_norm(x_ref, 2, None, None, 1e-5))
    y_ref.sum().backward()
    assert_close(y, y_ref, atol=1e-5, rtol=1e-5, name="y")
    assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5, name="dx")


def test_torch_backend_float64_gradcheck():
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
            for s in ((2, 4, 3, 2), (4,), (4,), (2, 4))]

    def f(x, w, b, shift):
        return kernels.group_norm_silu(x, w, b, 2, 1e-5, shift=shift, backend="torch")

    assert torch.autograd.gradcheck(f, args)


def test_module_has_weight_and_bias_and_matches_the_function():
    module = kernels.GroupNormSiLU(6, 3, eps=1e-6)
    assert [name for name, _ in module.named_parameters()] == ["weight", "bias"]
    assert torch.equal(module.weight, torch.ones(6)) and torch.equal(module.bias, torch.zeros(6))
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    x, shift = torch.randn(2, 6, 3, 3), torch.randn(2, 6)
    expected = kernels.group_norm_silu(x, module.weight, module.bias, 3, 1e-6, shift=shift)
    assert torch.equal(module(x, shift), expected)
    plain = kernels.GroupNormSiLU(6, 3, activation=False, affine=False)
    assert list(plain.parameters()) == [] and plain.weight is None
    assert_close(plain(x), F.group_norm(x, 3), atol=1e-6, rtol=1e-6, name="no affine, no activation")
    assert "groups=3" in repr(module)
    state = module.state_dict()
    assert set(state) == {"weight", "bias"}
    kernels.GroupNormSiLU(6, 3, eps=1e-6).load_state_dict(state)


@pytest.mark.parametrize("backend, device", FUSED_BACKEND_DEVICES)
def test_module_backend_choice_trains(backend, device):
    module = kernels.GroupNormSiLU(4, 2, backend=backend).to(device)
    x = torch.randn(3, 4, 5, 5, device=device)
    loss = module(x).square().mean()
    loss.backward()
    reference_module = kernels.GroupNormSiLU(4, 2, backend="torch").to(device)
    reference_module(x).square().mean().backward()
    assert_close(module.weight.grad, reference_module.weight.grad, atol=1e-5, rtol=1e-5, name="dweight")
    assert_close(module.bias.grad, reference_module.bias.grad, atol=1e-5, rtol=1e-5, name="dbias")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(groups=4), ValueError, "groups must be >= 1 and divide"),
    (dict(groups=0), ValueError, "groups"),
    (dict(groups=2.0), TypeError, "groups must be an int"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(weight=torch.ones(5)), ValueError, "weight must have shape \\(6,\\)"),
    (dict(bias=torch.ones(6, device="meta")), ValueError, "bias must be on"),
    (dict(bias=torch.ones(6, dtype=torch.int64)), TypeError, "bias must have dtype"),
    (dict(shift=torch.ones(3, 6)), ValueError, "shift must have shape \\(2, 6\\)"),
    (dict(x=torch.ones(6)), ValueError, "x must have at least 2"),
    (dict(x=torch.ones(2, 6, 3, dtype=torch.int32)), TypeError, "x must have dtype"),
    (dict(x=np.ones((2, 6, 3), np.float32)), TypeError, "x must be a torch.Tensor"),
    (dict(activation="silu"), TypeError, "activation must be a bool"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(x=torch.ones(2, 6, 3, dtype=torch.float64), backend="triton"), TypeError, "float64"),
])
def test_group_norm_silu_rejects_bad_inputs(kwargs, error, match):
    args = dict(x=torch.randn(2, 6, 3), weight=torch.ones(6), bias=torch.zeros(6), groups=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        kernels.group_norm_silu(args.pop("x"), args.pop("weight"), args.pop("bias"), args.pop("groups"),
                                **args)


def test_module_rejects_bad_construction():
    with pytest.raises(ValueError, match="num_channels"):
        kernels.GroupNormSiLU(0, 1)
    with pytest.raises(ValueError, match="groups"):
        kernels.GroupNormSiLU(6, 4)
