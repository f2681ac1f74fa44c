"""reference.losses: training targets, Min-SNR-gamma weights, the weighted MSE and its gradient."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close, check_gradient
from reference import (
    PREDICTIONS,
    make_schedule,
    min_snr_weights,
    predict_eps_from_x0,
    q_sample,
    training_target,
    v_from_x0_eps,
    weighted_mse,
    weighted_mse_backward,
)

S = make_schedule("linear", 1000)


def test_weighted_mse_known_value():
    out = np.array([[1.0, 2.0], [0.0, 0.0]])
    target = np.array([[0.0, 0.0], [1.0, 3.0]])
    # per sample: mean of squares = 2.5 and 5.0; weighted by (2, 0.5): (5 + 2.5) / 2
    loss, _ = weighted_mse(out, target, np.array([2.0, 0.5]))
    assert loss == 3.75
    assert weighted_mse(out, target)[0] == 3.75  # unweighted: (2.5 + 5) / 2


@given(seed=st.integers(0, 2**32), n=st.integers(1, 5), weighted=st.booleans(), dloss=st.floats(0.1, 10))
def test_weighted_mse_backward_matches_central_differences(seed, n, weighted, dloss):
    # The loss is quadratic in the output, so central differences have no truncation error:
    # what is left is round-off, ~1e-16 |loss| / eps = 1e-10 relative with eps = 1e-6. Bound 1e-8.
    rng = np.random.default_rng(seed)
    out, target = rng.standard_normal((n, 2, 3)), rng.standard_normal((n, 2, 3))
    weights = rng.uniform(0.1, 3.0, n) if weighted else None
    _, cache = weighted_mse(out, target, weights)
    analytic = weighted_mse_backward(cache, dloss)
    err = check_gradient(lambda: dloss * weighted_mse(out, target, weights)[0], out, analytic, rtol=1e-8, name="dout")
    assert err < 1e-8


def test_training_targets():
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    t = np.array([0, 10, 500, 999])
    assert_close(training_target(x0, eps, t, S, "epsilon"), eps, atol=0, rtol=0, name="eps target")
    assert_close(training_target(x0, eps, t, S, "sample"), x0, atol=0, rtol=0, name="x0 target")
    ab = S.alpha_bars[t][:, None]
    assert_close(training_target(x0, eps, t, S, "v_prediction"), np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0,
                 atol=1e-15, rtol=1e-15, name="v target")


@given(seed=st.integers(0, 2**32), gamma=st.one_of(st.none(), st.floats(0.1, 20.0)))
def test_min_snr_weights_make_every_target_the_same_x0_loss(seed, gamma):
    # Hang et al. 2023: weight min(SNR, gamma) on the x0 loss. ||eps_hat - eps||^2 = SNR ||x0_hat - x0||^2
    # and ||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2, so the three weighted losses are equal.
    rng = np.random.default_rng(seed)
    n = 6
    x0, eps, x0_hat = rng.standard_normal((n, 4)), rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
    t = rng.integers(0, 1000, n)
    x_t = q_sample(x0, t, eps, S)
    eps_hat = predict_eps_from_x0(x_t, t, x0_hat, S)
    outputs = {"sample": x0_hat, "epsilon": eps_hat, "v_prediction": v_from_x0_eps(x0_hat, eps_hat, t, S)}
    for prediction in PREDICTIONS:
        w = min_snr_weights(t, S, prediction, gamma)
        if gamma is None:  # no weighting: the plain losses
            assert_close(w, np.ones(n), atol=0, rtol=0, name="ones")
            continue
        loss, _ = weighted_mse(outputs[prediction], training_target(x0, eps, t, S, prediction), w)
        expected = np.mean(np.minimum(S.snr[t], gamma) * np.mean((x0_hat - x0) ** 2, axis=1))
        assert_close(loss, expected, atol=1e-12, rtol=1e-9, name=prediction)


def test_min_snr_eps_weight_is_one_where_snr_is_below_gamma():
    t = np.array([0, 100, 300, 999])
    w = min_snr_weights(t, S, "epsilon", gamma=5.0)
    snr = S.snr[t]
    assert_close(w, np.where(snr <= 5.0, 1.0, 5.0 / snr), atol=0, rtol=1e-15, name="eps weights")
    assert min_snr_weights(7, S, "sample", 5.0).shape == (1,)


X = np.zeros((2, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: training_target(X, np.zeros((2, 2)), 0, S), ValueError, "noise must have the shape of x0"),
    (lambda: training_target(X, X, 0, S, "score"), ValueError, "prediction must be one of"),
    (lambda: training_target(X, X, 1000, S), ValueError, r"t must lie in \[0, 999\]"),
    (lambda: training_target(X, X, 0, "linear"), TypeError, "schedule must be a reference Schedule"),
    (lambda: training_target(np.full((2, 3), np.nan), X, 0, S), ValueError, "x0 contains NaN"),
    (lambda: training_target(X.astype(int), X, 0, S), TypeError, "x0 must have dtype"),
    (lambda: min_snr_weights([0, 1000], S), ValueError, "t must lie in"),
    (lambda: min_snr_weights([0.5], S), TypeError, "t must be an int"),
    (lambda: min_snr_weights([0], S, gamma=0.0), ValueError, "gamma must be a positive number"),
    (lambda: min_snr_weights([0], S, gamma=float("nan")), ValueError, "gamma must be a positive number"),
    (lambda: min_snr_weights([0], S, gamma="5"), TypeError, "gamma must be a number"),
    (lambda: min_snr_weights([0], S, "x0"), ValueError, "prediction must be one of"),
    (lambda: min_snr_weights([0], None), TypeError, "schedule must be a reference Schedule"),
    (lambda: weighted_mse(X, np.zeros((2, 2))), ValueError, "target must have the shape of output"),
    (lambda: weighted_mse(X, X, np.ones(3)), ValueError, r"weights must have shape \(2,\)"),
    (lambda: weighted_mse(X, X, np.array([1.0, -1.0])), ValueError, "weights must be >= 0"),
    (lambda: weighted_mse(X, X, np.array([1.0, np.nan])), ValueError, "weights contains NaN"),
    (lambda: weighted_mse(np.full((2, 3), np.inf), X), ValueError, "output contains NaN or inf"),
    (lambda: weighted_mse(X, X.astype(np.int64)), TypeError, "target must have dtype"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_dtypes_follow_every_input():
    """float32 only when every array is float32: targets and the loss gradient included."""
    from reference import make_schedule, training_target, weighted_mse, weighted_mse_backward

    s = make_schedule("linear", 10)
    x32, x64 = np.ones((2, 3), np.float32), np.ones((2, 3), np.float64)
    for prediction in ("epsilon", "sample", "v_prediction"):
        assert training_target(x64, x32, 3, s, prediction).dtype == np.float64, prediction
        assert training_target(x32, x32, 3, s, prediction).dtype == np.float32, prediction
    _, cache = weighted_mse(x32, x32 * 2)
    assert weighted_mse_backward(cache).dtype == np.float32
    _, cache = weighted_mse(x32, x64)
    assert weighted_mse_backward(cache).dtype == np.float64
