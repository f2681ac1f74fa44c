"""reference.group_norm_silu / group_norm: finite differences, the unfused composition, torch.

Finite-difference bound: central differences with eps = 1e-6 on a loss sum(g * y) of O(1)
values have truncation error O(eps^2) ~ 1e-12 and round-off O(u |loss| / eps) ~ 1e-9 relative to
O(1) gradients, so the analytic gradients must agree to rtol 1e-7 (measured: ~1e-9 .. 1e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference.layers import silu, silu_backward
from reference.norm import (
    group_norm,
    group_norm_backward,
    group_norm_silu,
    group_norm_silu_backward,
)
from tests.helpers import assert_close, check_gradient

FD_RTOL = 1e-7

# name: (shape, groups) -- the edge shapes the issue asks for, by name
EDGE_SHAPES = {
    "odd_hw": ((2, 6, 3, 5), 3),
    "groups_1": ((2, 5, 3, 3), 1),
    "groups_eq_C": ((2, 4, 3, 2), 4),
    "hw_1": ((3, 6, 1, 1), 2),
    "hw_1_groups_eq_C": ((2, 3, 1, 1), 3),       # one value per group: x_hat = 0, dx = 0
    "no_spatial": ((4, 6), 3),
    "3d_spatial": ((1, 4, 2, 3, 2), 2),
}


def _inputs(shape, seed=0, affine=True):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.normal(size=shape) * 1.5 + 0.3
    w = rng.normal(size=c) if affine else None
    b = rng.normal(size=c) if affine else None
    g = rng.normal(size=shape)  # the upstream gradient, loss = sum(g * y)
    return x, w, b, g


@pytest.mark.parametrize("activation", [True, False], ids=["silu", "no_activation"])
@pytest.mark.parametrize("case", list(EDGE_SHAPES))
def test_group_norm_silu_backward_matches_finite_differences(case, activation):
    shape, groups = EDGE_SHAPES[case]
    x, w, b, g = _inputs(shape, seed=len(case))
    eps = 1e-5
    y, cache = group_norm_silu(x, w, b, groups, eps, activation)
    dx, dw, db = group_norm_silu_backward(g, cache)

    def loss():
        return float(np.sum(g * group_norm_silu(x, w, b, groups, eps, activation)[0]))

    check_gradient(loss, x, dx, rtol=FD_RTOL, name=f"{case} dx")
    check_gradient(loss, w, dw, rtol=FD_RTOL, name=f"{case} dweight")
    check_gradient(loss, b, db, rtol=FD_RTOL, name=f"{case} dbias")


def test_group_norm_silu_shift_gradient_is_dx_summed_over_space():
    x, w, b, g = _inputs((2, 6, 3, 4), seed=3)
    shift = np.random.default_rng(4).normal(size=(2, 6))
    y, cache = group_norm_silu(x, w, b, 3, 1e-6, shift=shift)
    dx, _, _ = group_norm_silu_backward(g, cache)
    # forward: shift is exactly an add before the norm
    y_ref, _ = group_norm_silu(x + shift[:, :, None, None], w, b, 3, 1e-6)
    assert_close(y, y_ref, atol=0, rtol=1e-15, name="y with shift")

    def loss():
        return float(np.sum(g * group_norm_silu(x, w, b, 3, 1e-6, shift=shift)[0]))

    check_gradient(loss, shift, dx.sum(axis=(2, 3)), rtol=FD_RTOL, name="dshift")


def test_group_norm_silu_without_affine_matches_unit_weight_zero_bias():
    x, _, _, g = _inputs((2, 6, 3, 3), seed=5)
    y0, c0 = group_norm_silu(x, None, None, 2, 1e-5)
    y1, c1 = group_norm_silu(x, np.ones(6), np.zeros(6), 2, 1e-5)
    assert_close(y0, y1, atol=0, rtol=0, name="y")
    dx0, dw0, db0 = group_norm_silu_backward(g, c0)
    dx1, _, _ = group_norm_silu_backward(g, c1)
    assert dw0 is None and db0 is None
    assert_close(dx0, dx1, atol=0, rtol=0, name="dx")


@pytest.mark.parametrize("case", ["odd_hw", "groups_1", "groups_eq_C", "hw_1", "no_spatial"])
def test_group_norm_silu_equals_silu_of_group_norm(case):
    """The fused op is silu(group_norm(x)) to float64 round-off, forward and backward."""
    shape, groups = EDGE_SHAPES[case]
    x, w, b, g = _inputs(shape, seed=11)
    fused, fused_cache = group_norm_silu(x, w, b, groups, 1e-6)
    normed, norm_cache = group_norm(x, w, b, groups, 1e-6)
    unfused, silu_cache = silu(normed)
    assert_close(fused, unfused, atol=1e-15, rtol=1e-14, name="forward")

    dx_f, dw_f, db_f = group_norm_silu_backward(g, fused_cache)
    dx_u, dw_u, db_u = group_norm_backward(silu_backward(g, silu_cache), norm_cache)
    # both reduce the same terms in the same order: only a few ulps of round-off apart
    for name, a, e in [("dx", dx_f, dx_u), ("dweight", dw_f, dw_u), ("dbias", db_f, db_u)]:
        assert_close(a, e, atol=1e-14, rtol=1e-13, name=name)


@given(
    n=st.integers(1, 3),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    activation=st.booleans(),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_group_norm_silu_matches_torch_float64(n, groups, per_group, spatial, activation, affine, seed):
    """An independent implementation: torch.nn.functional.group_norm (+ silu), float64 autograd."""
    shape = (n, groups * per_group, *spatial)
    x, w, b, g = _inputs(shape, seed=seed, affine=affine)
    eps = 1e-6
    y, cache = group_norm_silu(x, w, b, groups, eps, activation)
    dx, dw, db = group_norm_silu_backward(g, cache)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True) if affine else None
    bt = torch.tensor(b, requires_grad=True) if affine else None
    # torch.group_norm (the aten op: F.group_norm refuses one value per channel) wants a
    # spatial dim
    x_in = xt if spatial else xt[..., None]
    yt = torch.group_norm(x_in, groups, wt, bt, eps)
    if activation:
        yt = torch.nn.functional.silu(yt)
    yt = yt.reshape(shape)
    yt.backward(torch.tensor(g))
    assert_close(y, yt, atol=1e-13, rtol=1e-12, name="y")
    assert_close(dx, xt.grad, atol=1e-12, rtol=1e-11, name="dx")
    if affine:
        assert_close(dw, wt.grad, atol=1e-12, rtol=1e-11, name="dweight")
        assert_close(db, bt.grad, atol=1e-12, rtol=1e-11, name="dbias")


def test_group_norm_silu_float32_statistics_modes():
    """float32 in -> float32 out; float64 statistics round once, float32 statistics stay close."""
    x, w, b, g = _inputs((2, 8, 5, 5), seed=7)
    y64, _ = group_norm_silu(x, w, b, 4, 1e-5)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    y_stats64, c64 = group_norm_silu(x32, w32, b32, 4, 1e-5)
    y_stats32, c32 = group_norm_silu(x32, w32, b32, 4, 1e-5, stats_dtype=np.float32)
    assert y_stats64.dtype == np.float32 and y_stats32.dtype == np.float32
    y_from32 = group_norm_silu(x32.astype(np.float64), w32.astype(np.float64),
                               b32.astype(np.float64), 4, 1e-5)[0]
    # float64 statistics of the float32 input: exactly the float64 result, rounded once
    assert np.array_equal(y_stats64, y_from32.astype(np.float32))
    assert_close(y_stats32, y64, atol=1e-5, rtol=1e-5, name="float32 statistics")
    dx32, dw32, db32 = group_norm_silu_backward(g.astype(np.float32), c32)
    assert dx32.dtype == dw32.dtype == db32.dtype == np.float32
    dx64, dw64, db64 = group_norm_silu_backward(g, group_norm_silu(x, w, b, 4, 1e-5)[1])
    assert_close(dx32, dx64, atol=1e-4, rtol=1e-4, name="float32 dx")
    assert_close(dw32, dw64, atol=1e-4, rtol=1e-4, name="float32 dweight")


# ----------------------------------------------------------------------------- bad inputs

def test_group_norm_silu_rejects_channels_not_divisible_by_groups():
    x = np.zeros((1, 6, 2, 2))
    with pytest.raises(ValueError, match="groups=4"):
        group_norm_silu(x, None, None, 4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=np.zeros((1, 4, 2, 2), dtype=np.int64)), TypeError, "x must have dtype"),
        (dict(x=np.full((1, 4, 2, 2), np.nan)), ValueError, "x contains NaN"),
        (dict(x=np.zeros(4)), ValueError, "x must have at least 2"),
        (dict(weight=np.ones(3)), ValueError, r"weight must have shape \(4,\)"),
        (dict(bias=np.ones((4, 1))), ValueError, r"bias must have shape \(4,\)"),
        (dict(groups=0), ValueError, "groups must be >= 1"),
        (dict(groups=2.0), TypeError, "groups must be an int"),
        (dict(eps=0.0), ValueError, "eps must be"),
        (dict(shift=np.zeros((1, 3))), ValueError, "shift must have shape"),
        (dict(stats_dtype=np.float16), TypeError, "stats_dtype"),
    ],
)
def test_group_norm_silu_rejects_bad_inputs(kwargs, error, match):
    args = dict(x=np.zeros((1, 4, 2, 2)), weight=np.ones(4), bias=np.zeros(4), groups=2, eps=1e-5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        group_norm_silu(**args)


def test_group_norm_silu_backward_rejects_wrong_dy_shape():
    _, cache = group_norm_silu(np.ones((1, 4, 2, 2)), None, None, 2)
    with pytest.raises(ValueError, match="dy must have"):
        group_norm_silu_backward(np.ones((1, 4, 2, 3)), cache)
    with pytest.raises(TypeError, match="cache"):
        group_norm_silu_backward(np.ones((1, 4, 2, 2)), None)
