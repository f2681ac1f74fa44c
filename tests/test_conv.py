"""reference.conv: conv2d (3x3/1x1, stride 1/2, padding 1 or (0,1,0,1)), nearest 2x, Up/Downsample2D.

Finite-difference bound: central differences, eps = 1e-6, loss = sum(g * out) with O(1) values:
truncation is zero (the loss is linear in each input), round-off ~ u |loss| / eps ~ 1e-9 of
O(1) gradients, so rtol 1e-7. The torch comparisons are float64 against an independent
implementation (torch.nn.functional.conv2d / interpolate): 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference.conv import (
    conv2d,
    conv2d_backward,
    downsample,
    downsample_backward,
    upsample,
    upsample_backward,
    upsample_nearest2x,
    upsample_nearest2x_backward,
)
from tests.helpers import assert_close, check_gradient

FD_RTOL = 1e-7

# name: (x shape, (C_out, kernel), stride, padding)
CONV_CASES = {
    "3x3_stride1_pad1_odd": ((2, 3, 5, 3), (4, 3), 1, 1),
    "3x3_stride2_pad1_odd": ((2, 3, 5, 4), (2, 3), 2, 1),
    "3x3_stride2_pad0101": ((1, 2, 4, 6), (3, 3), 2, (0, 1, 0, 1)),
    "1x1_stride1": ((2, 5, 3, 2), (3, 1), 1, 0),
    "3x3_hw1_pad1": ((3, 2, 1, 1), (2, 3), 1, 1),
    "3x3_stride2_hw1": ((1, 1, 1, 1), (1, 3), 2, 1),
    "3x3_cin1_cout1": ((1, 1, 4, 3), (1, 3), 1, 1),
}


def _conv_inputs(x_shape, c_out, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=x_shape)
    w = rng.normal(size=(c_out, x_shape[1], k, k))
    b = rng.normal(size=c_out)
    return x, w, b, rng


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_backward_matches_finite_differences(case):
    x_shape, (c_out, k), stride, padding = CONV_CASES[case]
    x, w, b, rng = _conv_inputs(x_shape, c_out, k)
    out, cache = conv2d(x, w, b, stride, padding)
    g = rng.normal(size=out.shape)
    dx, dw, db = conv2d_backward(g, cache)

    def loss():
        return float(np.sum(g * conv2d(x, w, b, stride, padding)[0]))

    check_gradient(loss, x, dx, rtol=FD_RTOL, name=f"{case} dx")
    check_gradient(loss, w, dw, rtol=FD_RTOL, name=f"{case} dweight")
    check_gradient(loss, b, db, rtol=FD_RTOL, name=f"{case} dbias")


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_matches_torch_float64(case):
    x_shape, (c_out, k), stride, padding = CONV_CASES[case]
    x, w, b, rng = _conv_inputs(x_shape, c_out, k, seed=1)
    out, cache = conv2d(x, w, b, stride, padding)
    g = rng.normal(size=out.shape)
    dx, dw, db = conv2d_backward(g, cache)

    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    if isinstance(padding, tuple):
        top, bottom, left, right = padding
        ref = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt, stride=stride)
    else:
        ref = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    ref.backward(torch.tensor(g))
    assert_close(out, ref, atol=1e-12, rtol=1e-12, name="out")
    assert_close(dx, xt.grad, atol=1e-12, rtol=1e-12, name="dx")
    assert_close(dw, wt.grad, atol=1e-12, rtol=1e-12, name="dweight")
    assert_close(db, bt.grad, atol=1e-12, rtol=1e-12, name="dbias")


def test_conv2d_without_bias_and_float32():
    x, w, _, rng = _conv_inputs((2, 3, 4, 4), 2, 3, seed=2)
    out64, _ = conv2d(x, w, None, 1, 1)
    out32, cache32 = conv2d(x.astype(np.float32), w.astype(np.float32), None, 1, 1)
    assert out32.dtype == np.float32
    assert_close(out32, out64, atol=1e-5, rtol=1e-5, name="float32 out")
    dx, dw, db = conv2d_backward(np.ones(out32.shape, np.float32), cache32)
    assert db is None and dx.dtype == dw.dtype == np.float32


@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (1, 1, 1, 1)], ids=["odd", "hw_1"])
def test_upsample_nearest2x_forward_and_backward(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape)
    out, cache = upsample_nearest2x(x)
    ref = F.interpolate(torch.tensor(x), scale_factor=2.0, mode="nearest")
    assert_close(out, ref, atol=0, rtol=0, name="out")
    g = rng.normal(size=out.shape)
    dx = upsample_nearest2x_backward(g, cache)
    check_gradient(lambda: float(np.sum(g * upsample_nearest2x(x)[0])), x, dx, rtol=FD_RTOL, name="dx")


# (padding, input H x W, output H x W): padding 0 pads bottom/right by one -> floor(H/2);
# padding 1 pads every side -> ceil(H/2). The UNet only downsamples even sizes, where both agree.
DOWNSAMPLE_CASES = {
    "pad0_even": (0, (4, 4), (2, 2)),
    "pad0_odd": (0, (3, 5), (1, 2)),
    "pad1_even": (1, (4, 2), (2, 1)),
    "pad1_odd": (1, (3, 5), (2, 3)),
    "pad1_hw_1": (1, (1, 1), (1, 1)),
}


@pytest.mark.parametrize("case", list(DOWNSAMPLE_CASES))
def test_downsample_backward_matches_finite_differences(case):
    padding, hw, out_hw = DOWNSAMPLE_CASES[case]
    x, w, b, rng = _conv_inputs((2, 3, *hw), 2, 3, seed=4)
    out, cache = downsample(x, w, b, padding)
    assert out.shape == (2, 2, *out_hw)
    g = rng.normal(size=out.shape)
    dx, dw, db = downsample_backward(g, cache)

    def loss():
        return float(np.sum(g * downsample(x, w, b, padding)[0]))

    for name, arr, grad in [("dx", x, dx), ("dweight", w, dw), ("dbias", b, db)]:
        check_gradient(loss, arr, grad, rtol=FD_RTOL, name=name)


@pytest.mark.parametrize("hw", [(2, 2), (1, 1), (3, 1)], ids=["even", "hw_1", "odd"])
def test_upsample_block_backward_matches_finite_differences(hw):
    x, w, b, rng = _conv_inputs((2, 3, *hw), 2, 3, seed=5)
    out, cache = upsample(x, w, b)
    assert out.shape == (2, 2, 2 * hw[0], 2 * hw[1])
    g = rng.normal(size=out.shape)
    dx, dw, db = upsample_backward(g, cache)

    def loss():
        return float(np.sum(g * upsample(x, w, b)[0]))

    for name, arr, grad in [("dx", x, dx), ("dweight", w, dw), ("dbias", b, db)]:
        check_gradient(loss, arr, grad, rtol=FD_RTOL, name=name)


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=np.zeros((1, 2, 4, 4))), ValueError, "x has 2 channels but weight expects C_in = 3"),
        (dict(x=np.zeros((1, 3, 4, 4), dtype=np.int32)), TypeError, "x must have dtype"),
        (dict(x=np.zeros((3, 4, 4))), ValueError, "x must have at least 4"),
        (dict(weight=np.zeros((2, 3, 3, 3), dtype=np.float16)), TypeError, "weight must have dtype"),
        (dict(bias=np.zeros(3)), ValueError, r"bias must have shape \(2,\)"),
        (dict(stride=0), ValueError, "stride must be a positive int"),
        (dict(padding=(1, 1)), ValueError, "padding must be an int or 4 ints"),
        (dict(padding=-1), ValueError, "padding must be >= 0"),
        (dict(x=np.zeros((1, 3, 1, 1)), padding=0), ValueError, "smaller than the kernel"),
        (dict(x=np.full((1, 3, 4, 4), np.inf)), ValueError, "x contains NaN or inf"),
    ],
)
def test_conv2d_rejects_bad_inputs(kwargs, error, match):
    args = dict(x=np.zeros((1, 3, 4, 4)), weight=np.zeros((2, 3, 3, 3)), bias=np.zeros(2),
                stride=1, padding=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        conv2d(**args)


def test_conv2d_backward_rejects_wrong_dout_shape():
    _, cache = conv2d(np.zeros((1, 3, 4, 4)), np.zeros((2, 3, 3, 3)), None, 1, 1)
    with pytest.raises(ValueError, match="dout must have"):
        conv2d_backward(np.zeros((1, 2, 2, 2)), cache)


def test_downsample_rejects_unknown_padding_and_too_small_input():
    with pytest.raises(ValueError, match="padding must be 0 or 1"):
        downsample(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), None, padding=2)
    with pytest.raises(ValueError, match="smaller than the kernel"):  # 1x1 padded to 2x2
        downsample(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 3, 3)), None, padding=0)
