"""reference.variational: learned variance, normal_kl, the discretized decoder, the bound in bits/dim."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close, check_gradient
from reference import learned_log_variance, learned_log_variance_backward, make_schedule, timestep_subset

S = make_schedule("linear", 1000)
COS = make_schedule("cosine", 50)


def test_learned_log_variance_endpoints_are_beta_and_beta_tilde():
    t = np.array([0, 1, 500, 999])
    ones = np.ones((4, 2, 3))
    assert_close(learned_log_variance(ones, t, S), np.log(S.betas[t])[:, None, None] * ones,
                 atol=0, rtol=1e-15, name="v = 1: log beta_t")
    lo = learned_log_variance(-ones, t, S)
    # v = -1: log beta_tilde_t, with t = 0 clipped to beta_tilde_1 (improved-diffusion)
    expected = np.log(S.posterior_variance[np.maximum(t, 1)])
    assert_close(lo[:, 0, 0], expected, atol=0, rtol=1e-14, name="v = -1: log beta_tilde_t")
    mid = learned_log_variance(np.zeros((4, 1)), t, S)[:, 0]
    assert_close(mid, 0.5 * (np.log(S.betas[t]) + expected), atol=0, rtol=1e-14, name="v = 0: midpoint")


def test_learned_log_variance_on_a_respaced_schedule_uses_the_respaced_betas():
    ts = timestep_subset(1000, 25, "leading")
    R = S.respace(ts)
    k = np.arange(R.T)
    v = np.full((R.T, 1), 0.3)
    got = learned_log_variance(v, k, R)[:, 0]
    alpha_bars = S.alpha_bars[np.sort(ts)]
    betas = 1 - alpha_bars / np.concatenate([[1.0], alpha_bars[:-1]])
    beta_tilde = betas[1:] * (1 - alpha_bars[:-1]) / (1 - alpha_bars[1:])
    log_tilde = np.log(np.concatenate([[beta_tilde[0]], beta_tilde]))
    frac = 0.65
    assert_close(got, frac * np.log(betas) + (1 - frac) * log_tilde, atol=0, rtol=1e-12, name="respaced")
    # the respaced betas are far larger than the training schedule's at the same timestep
    assert np.all(R.betas[1:] > 10 * S.betas[np.sort(ts)][1:])


@given(seed=st.integers(0, 2**32), n=st.integers(1, 4))
def test_learned_log_variance_backward_matches_central_differences(seed, n):
    # affine in v: no truncation error, only round-off ~1e-16 |f| / 1e-6 with |f| ~ 10-100 and
    # gradients ~0.1-1 (half the log-variance gap), i.e. up to ~1e-7 relative. Bound 1e-6.
    rng = np.random.default_rng(seed)
    v, t = rng.uniform(-1.5, 1.5, (n, 2, 3)), rng.integers(0, COS.T, n)
    w = rng.standard_normal(v.shape)
    analytic = learned_log_variance_backward(w, t, COS)
    check_gradient(lambda: float(np.sum(w * learned_log_variance(v, t, COS))), v, analytic, rtol=1e-6, name="dv")


def test_learned_log_variance_float32_on_request_and_bad_input():
    v = np.zeros((2, 3), dtype=np.float32)
    assert learned_log_variance(v, 3, S).dtype == np.float32
    assert learned_log_variance(v.astype(np.float64), 3, S).dtype == np.float64
    with pytest.raises(ValueError, match="t must lie"):
        learned_log_variance(v, 1000, S)
    with pytest.raises(TypeError, match="schedule"):
        learned_log_variance(v, 0, "linear")
    with pytest.raises(ValueError, match="v contains NaN"):
        learned_log_variance(np.full((1, 2), np.nan), 0, S)
