"""reference.layers: linear, SiLU, ELU, embedding (forward + hand-written backward), timestep embedding.

Gradient checks: central differences in float64 with eps = 1e-6 on f = sum(out * w) for a random
w. Truncation error is O(eps^2 f''') ~ 1e-12 relative; round-off is O(1e-16 |f| / eps) ~ 1e-10 |f|
absolute, which matters only where a gradient happens to be tiny. Bound: |analytic - numeric| <=
1e-7 |numeric| + 1e-8 max(1, |f|) (DESIGN: rtol ~1e-6 or tighter); a wrong term is off by O(1).
Measured worst relative error on unit-scale gradients: ~4e-10.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close, numerical_gradient
from reference.layers import (
    elu,
    elu_backward,
    embedding,
    embedding_backward,
    linear,
    linear_backward,
    silu,
    silu_backward,
    timestep_embedding,
)

GRAD_RTOL = 1e-7


def assert_gradient(f, x, analytic, *, rtol=GRAD_RTOL, name="grad"):
    """helpers.numerical_gradient vs the analytic gradient, with the absolute round-off term."""
    assert_close(analytic, numerical_gradient(f, x), atol=1e-8 * max(1.0, abs(f())), rtol=rtol, name=name)


@given(seed=st.integers(0, 2**32), lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       fan_in=st.integers(1, 5), fan_out=st.integers(1, 5), with_bias=st.booleans())
def test_linear_backward_matches_central_differences(seed, lead, fan_in, fan_out, with_bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, fan_in))
    weight, bias = rng.standard_normal((fan_out, fan_in)), rng.standard_normal(fan_out) if with_bias else None
    w = rng.standard_normal((*lead, fan_out))
    out, cache = linear(x, weight, bias)
    assert_close(out, x @ weight.T + (0 if bias is None else bias), atol=1e-14, rtol=1e-14, name="x W^T + b")
    dx, dweight, dbias = linear_backward(w, cache)
    f = lambda: float(np.sum(linear(x, weight, bias)[0] * w))  # noqa: E731
    assert_gradient(f, x, dx, rtol=GRAD_RTOL, name="dx")
    assert_gradient(f, weight, dweight, rtol=GRAD_RTOL, name="dweight")
    if with_bias:
        assert_gradient(f, bias, dbias, rtol=GRAD_RTOL, name="dbias")
    else:
        assert dbias is None


@given(seed=st.integers(0, 2**32), scale=st.sampled_from([0.1, 1.0, 8.0]))
def test_silu_forward_and_backward(seed, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 5)) * scale
    w = rng.standard_normal((4, 5))
    y, cache = silu(x)
    assert_close(y, x / (1.0 + np.exp(-x)), atol=1e-15, rtol=1e-14, name="x sigmoid(x)")
    assert_gradient(lambda: float(np.sum(silu(x)[0] * w)), x, silu_backward(w, cache), rtol=GRAD_RTOL, name="dx")


def test_silu_is_stable_for_large_inputs():
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow in exp
        y, cache = silu(x)
        dy = silu_backward(np.ones_like(x), cache)
    assert_close(y, [0.0, -40.0 * math.exp(-40.0), 0.0, 40.0, 800.0], atol=1e-300, rtol=1e-14, name="silu")
    assert_close(dy, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-15, rtol=0, name="dsilu")


@given(seed=st.integers(0, 2**32), alpha=st.sampled_from([1.0, 0.5, 2.0]))
def test_elu_forward_and_backward(seed, alpha):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 5)) * 2
    x = np.where(np.abs(x) < 1e-3, 0.5, x)  # ELU has a kink at 0 for alpha != 1: stay away from it
    w = rng.standard_normal((4, 5))
    y, cache = elu(x, alpha)
    assert_close(y, np.where(x > 0, x, alpha * (np.exp(x) - 1)), atol=1e-15, rtol=1e-14, name="elu")
    assert_gradient(lambda: float(np.sum(elu(x, alpha)[0] * w)), x, elu_backward(w, cache), rtol=GRAD_RTOL,
                   name="dx")


def test_embedding_backward_sums_repeated_ids():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((5, 3))
    ids = np.array([4, 1, 4, 0, 4])
    rows, cache = embedding(ids, table)
    assert_close(rows, table[ids], atol=0, rtol=0, name="rows")
    w = rng.standard_normal((5, 3))
    dtable = embedding_backward(w, cache)
    assert_close(dtable[4], w[0] + w[2] + w[4], atol=1e-15, rtol=0, name="row 4 (three uses)")
    assert_close(dtable[[2, 3]], np.zeros((2, 3)), atol=0, rtol=0, name="unused rows")
    assert_gradient(lambda: float(np.sum(embedding(ids, table)[0] * w)), table, dtable, rtol=GRAD_RTOL, name="dtable")


def test_timestep_embedding_known_values():
    # dim 4, freq_shift 1: half = 2, freq_k = exp(-log(1e4) k / (2 - 1)) = (1, 1e-4)
    emb = timestep_embedding(np.array([0, 1, 500]), 4)
    t = np.array([0.0, 1.0, 500.0])[:, None]
    expected = np.concatenate([np.sin(t * [1.0, 1e-4]), np.cos(t * [1.0, 1e-4])], axis=1)
    assert_close(emb, expected, atol=1e-15, rtol=1e-13, name="[sin, cos]")
    flipped = timestep_embedding(np.array([0, 1, 500]), 4, flip_sin_to_cos=True)
    assert_close(flipped, emb[:, [2, 3, 0, 1]], atol=0, rtol=0, name="[cos, sin]")
    odd = timestep_embedding(np.array([3]), 5)
    assert odd.shape == (1, 5) and odd[0, 4] == 0.0
    assert timestep_embedding(np.array([3]), 6, dtype=np.float32).dtype == np.float32


def test_timestep_embedding_matches_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    torch = pytest.importorskip("torch")
    t = np.array([0, 1, 17, 999])
    for flip, shift in ((False, 1.0), (True, 0.0)):  # DDPM's CIFAR-10 UNet; Stable Diffusion's
        theirs = embeddings.get_timestep_embedding(torch.tensor(t), 32, flip_sin_to_cos=flip,
                                                   downscale_freq_shift=shift)
        # diffusers evaluates in float32
        assert_close(timestep_embedding(t, 32, flip, shift), theirs.numpy(), atol=1e-4, rtol=1e-5, name=str(flip))


def test_float32_in_float32_out():
    x = np.ones((2, 3), np.float32)
    assert linear(x, np.ones((4, 3), np.float32), np.ones(4, np.float32))[0].dtype == np.float32
    assert silu(x)[0].dtype == np.float32 and elu(x)[0].dtype == np.float32


X = np.zeros((2, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: linear(X, np.zeros((4, 2)), None), ValueError, "x has 3 features but weight expects 2"),
    (lambda: linear(X, np.zeros(3), None), ValueError, r"weight must have shape \(OUT, IN\)"),
    (lambda: linear(X, np.zeros((4, 3)), np.zeros(3)), ValueError, r"bias must have shape \(4,\)"),
    (lambda: linear(X.astype(int), np.zeros((4, 3)), None), TypeError, "x must have dtype float32 or float64"),
    (lambda: linear(X, np.zeros((4, 3), np.complex128), None), TypeError, "weight must have dtype"),
    (lambda: linear([[0.0, 0.0, 0.0]], np.zeros((4, 3)), None), TypeError, "x must be a NumPy array"),
    (lambda: silu(np.zeros(3, np.int64)), TypeError, "x must have dtype"),
    (lambda: elu(np.zeros(3, bool)), TypeError, "x must have dtype"),
    (lambda: embedding(np.array([0, 5]), np.zeros((5, 2))), ValueError, r"ids must lie in \[0, 4\]"),
    (lambda: embedding(np.array([-1]), np.zeros((5, 2))), ValueError, "ids must lie in"),
    (lambda: embedding(np.array([0.0]), np.zeros((5, 2))), TypeError, "ids must be integers"),
    (lambda: embedding(np.array([0]), np.zeros(5)), ValueError, r"table must have shape \(V, D\)"),
    (lambda: timestep_embedding(np.array([1]), 2), ValueError, "dim must satisfy"),
    (lambda: timestep_embedding(np.array([1]), 4.0), TypeError, "dim must be an int"),
    (lambda: timestep_embedding(np.array([np.nan]), 4), ValueError, "t contains NaN"),
    (lambda: timestep_embedding(np.array(["a"]), 4), TypeError, "t must be integer or float"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
