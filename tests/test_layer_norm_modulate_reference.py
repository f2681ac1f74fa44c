"""reference.layer_norm_modulate: definition, backward vs central finite differences, bad input.

FD: float64, eps = 1e-6, loss = sum(g * y), every entry of x, shift and scale; bound
max |a - n| / max |n| <= 1e-7 (the estimate's round-off u |loss| / eps is ~1e-9 here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import layer_norm_modulate, layer_norm_modulate_backward
from tests.helpers import assert_close, check_gradient


def _inputs(n=2, length=3, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, length, d)) * 2 + 1, rng.normal(size=(n, d)), rng.normal(size=(n, d))


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 3), (3, 4, 1)], ids=["odd", "one-token", "D=1"])
def test_backward_matches_finite_differences(shape):
    x, shift, scale = _inputs(*shape)
    g = np.random.default_rng(1).normal(size=x.shape)
    y, cache = layer_norm_modulate(x, shift, scale, 1e-6)
    dx, dshift, dscale = layer_norm_modulate_backward(g, cache)

    def loss():
        return float(np.sum(g * layer_norm_modulate(x, shift, scale, 1e-6)[0]))

    if shape[-1] > 1:  # D = 1: x_hat = 0 whatever x, dx = 0 exactly (checked below)
        check_gradient(loss, x, dx, name="dx")
    else:
        assert np.all(dx == 0)
    check_gradient(loss, shift, dshift, name="dshift")
    check_gradient(loss, scale, dscale, name="dscale")


def test_forward_is_torch_layer_norm_then_modulation():
    x, shift, scale = _inputs()
    y, _ = layer_norm_modulate(x, shift, scale, 1e-5)
    xt = torch.from_numpy(x)
    want = torch.nn.functional.layer_norm(xt, (x.shape[-1],), eps=1e-5) * (1 + torch.from_numpy(scale)[:, None]) \
        + torch.from_numpy(shift)[:, None]
    assert_close(y, want, atol=1e-13, rtol=1e-13, name="y")


def test_float32_stays_float32():
    x, shift, scale = (a.astype(np.float32) for a in _inputs())
    assert layer_norm_modulate(x, shift, scale)[0].dtype == np.float32


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((2, 5))), "x must have at least 3"),
    (dict(shift=np.zeros((2, 4))), "shift must have shape"),
    (dict(scale=np.zeros((3, 5))), "scale must have shape"),
    (dict(eps=0.0), "eps must be"),
    (dict(x=np.full((2, 3, 5), np.nan)), "x contains NaN"),
])
def test_bad_input_names_the_argument(bad, match):
    x, shift, scale = _inputs()
    args = dict(x=x, shift=shift, scale=scale, eps=1e-6, **{})
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        layer_norm_modulate(**args)
