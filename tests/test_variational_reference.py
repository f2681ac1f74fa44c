"""reference.variational: learned variance, normal_kl, the discretized decoder, the bound in bits/dim."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close, check_gradient
from reference import (
    LossSecondMomentHistory,
    bits_per_dim,
    check_8bit_grid,
    discretized_gaussian_log_likelihood,
    discretized_gaussian_log_likelihood_backward,
    importance_draws,
    learned_log_variance,
    learned_log_variance_backward,
    make_schedule,
    normal_kl,
    normal_kl_backward,
    prior_bpd,
    q_sample,
    split_model_output,
    timestep_subset,
    training_draws,
    variational_loss,
    variational_loss_backward,
    vlb_terms,
    vlb_terms_backward,
)
from reference.variational import _tanh_cdf

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


def grid(rng, shape):
    """Random 8-bit data 2 k / 255 - 1, the edges k = 0 and 255 included often."""
    k = rng.integers(-20, 276, shape).clip(0, 255)
    return k / 127.5 - 1.0


def test_normal_kl_closed_forms():
    # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    m1, s1, m2, s2 = 0.3, 0.7, -1.1, 1.9
    expected = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    got = normal_kl(np.array([m1]), np.array([2 * np.log(s1)]), np.array([m2]), np.array([2 * np.log(s2)]))
    assert_close(got, np.array([expected]), atol=0, rtol=1e-14, name="kl")
    assert normal_kl(np.zeros(3), np.zeros(3), 0.0, 0.0).tolist() == [0.0, 0.0, 0.0]


@given(seed=st.integers(0, 2**32))
def test_normal_kl_backward_matches_central_differences(seed):
    # smooth in every argument (exp and squares of O(1) values): truncation eps^2 |f'''| ~ 1e-12,
    # round-off ~1e-16 |f| / eps ~ 1e-9 against gradients of O(1). Bound 1e-6.
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((2, 3)) for _ in range(4)]
    w = rng.standard_normal((2, 3))
    grads = normal_kl_backward(w, *args)
    for i, name in enumerate(("mean1", "logvar1", "mean2", "logvar2")):
        check_gradient(lambda: float(np.sum(w * normal_kl(*args))), args[i], grads[i], rtol=1e-6, name=name)


@pytest.mark.parametrize("mean, log_scale", [(0.0, np.log(0.3)), (0.9, np.log(0.004)), (-0.7, np.log(2.0)),
                                            (3.0, np.log(0.5)), (0.2, np.log(1e-3))])
def test_decoder_probabilities_of_all_256_bins_sum_to_one(mean, log_scale):
    # The bins tile the real line (edge bins open), so the masses of x = 2k/255 - 1 sum to 1,
    # up to the 1e-12 floor of the bins the Gaussian does not reach.
    x = (np.arange(256) / 127.5 - 1.0).reshape(1, -1)
    mass = np.exp(discretized_gaussian_log_likelihood(x, np.full_like(x, mean), np.full_like(x, log_scale)))
    floored = mass <= 1.000001e-12
    assert abs(mass[~floored].sum() - 1.0) < 1e-12 + floored.sum() * 1e-12


def test_decoder_matches_direct_integration_and_says_how_far_tanh_is():
    # a mid bin: the exact CDF against Simpson's rule of the density over the bin
    x, mean, log_scale = np.array([[0.2 + 2 / 255]]), np.array([[0.1]]), np.array([[np.log(0.05)]])
    z = np.linspace(x[0, 0] - 1 / 255, x[0, 0] + 1 / 255, 2001)
    pdf = np.exp(-0.5 * ((z - 0.1) / 0.05) ** 2) / (0.05 * np.sqrt(2 * np.pi))
    h = z[1] - z[0]
    simpson = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    exact = discretized_gaussian_log_likelihood(x, mean, log_scale)
    assert_close(exact, np.log([[simpson]]), atol=0, rtol=1e-10, name="exact vs Simpson")
    tanh = discretized_gaussian_log_likelihood(x, mean, log_scale, cdf="tanh")
    assert 1e-6 < abs(tanh - exact).max() < 1e-2  # the approximation is visible in log P
    zs = np.linspace(-6, 6, 20001)
    from math import erfc
    err = np.abs(_tanh_cdf(zs) - np.array([0.5 * erfc(-v / np.sqrt(2)) for v in zs])).max()
    assert 1e-4 < err < 2e-4  # the tanh CDF's absolute error (docstring: up to ~2e-4)


def test_decoder_is_accurate_far_in_the_tails():
    # A 6-sigma-away bin of mass ~5e-10: Phi(b) - Phi(a) taken as 1 - 1 keeps ~6 digits of it;
    # the tail form keeps all. Checked against pdf(x) * width: their logs differ by the bin's
    # curvature, (z^2 - 1) w^2 / 24 ~ 0.009 for z = 6, w = (2/255) / 0.1.
    x = np.array([[0.0]])
    for mean in (-0.6, 0.6):
        logp = discretized_gaussian_log_likelihood(x, np.array([[mean]]), np.array([[np.log(0.1)]]))
        zc = (0.0 - mean) / 0.1
        approx = np.log(np.exp(-0.5 * zc**2) / np.sqrt(2 * np.pi) * (2 / 255) / 0.1)
        assert abs(logp[0, 0] - approx) < 0.015


@given(seed=st.integers(0, 2**32))
def test_decoder_backward_matches_central_differences(seed):
    # log of erfc differences, smooth where the mass is above the 1e-12 floor (means kept near x
    # so it is): truncation eps^2 |f'''| with |f'''| up to ~1e3 / sigma^3, round-off
    # ~1e-16 |f| / eps. Bound 1e-5 relative to the largest gradient.
    rng = np.random.default_rng(seed)
    x = grid(rng, (3, 4))
    means = np.clip(x + 0.05 * rng.standard_normal(x.shape), -1.2, 1.2)
    log_scales = np.log(rng.uniform(0.02, 0.5, x.shape))
    w = rng.standard_normal(x.shape)
    dmeans, dlog_scales = discretized_gaussian_log_likelihood_backward(w, x, means, log_scales)

    def f():
        return float(np.sum(w * discretized_gaussian_log_likelihood(x, means, log_scales)))
    check_gradient(f, means, dmeans, rtol=1e-5, name="dmeans")
    check_gradient(f, log_scales, dlog_scales, rtol=1e-5, name="dlog_scales")


def _vlb_inputs(rng, n, variance, t=None, schedule=COS):
    x0 = grid(rng, (n, 2, 3, 3))
    t = rng.integers(0, schedule.T, n) if t is None else t
    x_t = q_sample(x0, t, rng.standard_normal(x0.shape), schedule)
    channels = 4 if variance == "learned" else 2
    out = rng.standard_normal((n, channels, 3, 3)) * 0.5
    return x0, x_t, t, out


@pytest.mark.parametrize("variance", ["learned", "fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_vlb_terms_backward_matches_central_differences(variance, prediction):
    # t = 0 (decoder), 1 and larger t (KL) in one batch; smooth in the output, eps = 1e-6 on O(1)
    # outputs: round-off ~1e-9 relative, truncation below it. Bound 1e-5.
    rng = np.random.default_rng(7)
    x0, x_t, t, out = _vlb_inputs(rng, 4, variance, t=np.array([0, 1, 17, 49]))
    w = np.array([0.7, -1.3, 0.4, 2.0])
    _, cache = vlb_terms(out, x0, x_t, t, COS, prediction, variance)
    analytic = vlb_terms_backward(w, cache)
    check_gradient(lambda: float(w @ vlb_terms(out, x0, x_t, t, COS, prediction, variance)[0]), out, analytic,
                   rtol=1e-5, name=f"d output ({variance}, {prediction})")


def test_perfect_model_has_zero_kl_terms_and_bits_per_dim_adds_them_up():
    # A model that knows x0 predicts eps exactly and v = -1 (sigma^2 = beta_tilde): p equals the
    # posterior q, so L_t = 0 for t > 0; what is left is the decoder and the prior.
    S20 = make_schedule("cosine", 20)
    x0 = grid(np.random.default_rng(1), (3, 1, 2, 2))

    class Oracle:
        def forward(self, x_t, t, y=None):
            ab = S20.alpha_bars[t][:, None, None, None]
            eps = (x_t - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
            return np.concatenate([eps, -np.ones_like(eps)], axis=1)

    total, terms = bits_per_dim(Oracle(), x0, S20, variance="learned")
    assert terms.shape == (3, 21)
    assert np.abs(terms[:, 1:20]).max() < 1e-9
    assert_close(terms[:, 20], prior_bpd(x0, S20), atol=0, rtol=0, name="prior")
    sigma = np.exp(0.5 * S20.posterior_log_variance_clipped[0])  # p(x0 | x1) = N(x0, beta_tilde_1)
    decoder = -discretized_gaussian_log_likelihood(x0, x0, np.full_like(x0, np.log(sigma)))
    assert_close(terms[:, 0], decoder.reshape(3, -1).mean(1) / np.log(2), atol=0, rtol=1e-12, name="L_0")
    assert_close(total, terms.sum(1), atol=0, rtol=0, name="total")


def test_bits_per_dim_of_a_sample_does_not_depend_on_the_batch():
    S10 = make_schedule("cosine", 10)
    x0 = grid(np.random.default_rng(2), (4, 1, 2, 2))

    class Model:
        config = None

        def forward(self, x_t, t, y=None):
            return 0.3 * x_t

    total, _ = bits_per_dim(Model(), x0, S10, seed=5)
    part, _ = bits_per_dim(Model(), x0[2:], S10, seed=5, samples=np.array([2, 3]))
    assert_close(part, total[2:], atol=0, rtol=0, name="rows 2, 3")
    assert np.all(total > 0)


def test_prior_bpd_closed_form():
    x0 = np.array([[[0.5, -1.0]]])
    ab = COS.alpha_bars[-1]
    kl = 0.5 * (-1 - np.log1p(-ab) + (1 - ab) + ab * x0**2)
    assert_close(prior_bpd(x0, COS), kl.mean(axis=(1, 2)) / np.log(2), atol=0, rtol=1e-13, name="L_T")


@pytest.mark.parametrize("loss, variance", [("hybrid", "learned"), ("vlb", "learned"), ("vlb", "fixed_large"),
                                            ("simple", "fixed_small")])
def test_variational_loss_backward_matches_central_differences(loss, variance):
    # Bound 1e-5 as for vlb_terms (the MSE part is quadratic: exact up to round-off).
    rng = np.random.default_rng(3)
    x0, x_t, t, out = _vlb_inputs(rng, 5, variance, t=np.array([0, 3, 11, 30, 49]))
    target = rng.standard_normal(x0.shape)
    weights = rng.uniform(0.5, 2, 5) if loss == "vlb" else None
    kw = dict(loss=loss, variance=variance, weights=weights)
    value, terms, cache = variational_loss(out, x0, x_t, target, t, COS, **kw)
    analytic = variational_loss_backward(cache, 1.7)
    if loss == "hybrid":
        # the stop-gradient: the mean half gets exactly the MSE gradient; v the scaled L_vlb one
        mse_only, _, mse_cache = variational_loss(out[:, :2], x0, x_t, target, t, COS, loss="simple",
                                                  variance="fixed_small")
        assert_close(analytic[:, :2], variational_loss_backward(mse_cache, 1.7), atol=0, rtol=1e-15, name="mean")
        assert_close(value, mse_only + np.mean(0.001 * COS.T * terms), atol=0, rtol=1e-14, name="L_hybrid")
        v = np.ascontiguousarray(out[:, 2:])
        check_gradient(lambda: 1.7 * variational_loss(np.concatenate([out[:, :2], v], 1), x0, x_t, target, t,
                                                      COS, **kw)[0], v, analytic[:, 2:], rtol=1e-5, name="dv")
        return
    check_gradient(lambda: 1.7 * variational_loss(out, x0, x_t, target, t, COS, **kw)[0], out, analytic,
                   rtol=1e-5, name=f"d output ({loss})")


def test_importance_history_is_uniform_until_full_then_follows_the_second_moment():
    T = 4
    h = LossSecondMomentHistory(T, history=2, uniform_prob=0.0)
    draws = training_draws(9, np.arange(64), 3, T)
    assert h.probabilities() is None
    t, w = importance_draws(9, np.arange(64), 3, h.probabilities(), T)
    assert np.array_equal(t, draws.t) and np.all(w == 1)
    h.update([0, 1, 2, 3, 0, 1, 2], [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0])
    assert h.probabilities() is None  # t = 3 has one value of two
    h.update([3, 3], [5.0, 4.0])  # a full row drops its oldest value: t = 3 holds (5, 4)
    p = h.probabilities()
    rms = np.sqrt([1.0, 4.0, 9.0, (25 + 16) / 2])
    assert_close(p, rms / rms.sum(), atol=0, rtol=1e-15, name="p_t")


def test_importance_draws_follow_the_probabilities_with_unbiased_weights():
    T = 5
    p = np.array([0.05, 0.1, 0.2, 0.25, 0.4])
    t, w = importance_draws(0, np.arange(40000), 11, p, T)
    freq = np.bincount(t, minlength=T) / t.size
    assert np.abs(freq - p).max() < 0.01  # binomial sd <= 0.0025 at n = 40000
    assert_close(w, 1 / (T * p[t]), atol=0, rtol=0, name="weights")
    losses = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # E_p[w T L_t] = sum_t L_t: unbiased for L_vlb
    assert abs(np.mean(w * T * losses[t]) - losses.sum()) < 0.2
    again, _ = importance_draws(0, np.arange(100, 200), 11, p, T)  # a function of (seed, sample, step)
    assert np.array_equal(again, t[100:200])


def test_bad_input_is_named():
    x = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="variance='learned' needs 2 x 1"):
        split_model_output(x, 1, "learned")
    with pytest.raises(ValueError, match="a variance half: use variance='learned'"):
        split_model_output(np.zeros((1, 2, 2, 2)), 1, "fixed_small")
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
        discretized_gaussian_log_likelihood(x + 1.5, x, x)
    with pytest.raises(ValueError, match="x0 must lie on the 8-bit grid"):
        check_8bit_grid(x + 0.001)
    with pytest.raises(ValueError, match="x0 must lie in"):
        bits_per_dim(None, x - 2, COS)
    with pytest.raises(ValueError, match="loss='simple' does not train a learned variance"):
        variational_loss(np.zeros((1, 2, 2, 2)), x, x, x, 0, COS, loss="simple", variance="learned")
    with pytest.raises(ValueError, match="loss='hybrid' .* needs variance='learned'"):
        variational_loss(x, x, x, x, 0, COS, loss="hybrid", variance="fixed_small")


def test_reference_train_step_runs_the_vlb_objective_with_importance_sampled_t():
    from reference import Adam, UNet, UNetConfig, normal, train_step, train_stream

    S6 = make_schedule("cosine", 6)
    model = UNet(UNetConfig.tiny(out_channels=2), seed=0, zero_init=False)
    x0 = grid(np.random.default_rng(4), (6, 1, 4, 4))
    history = LossSecondMomentHistory(S6.T, history=1, uniform_prob=0.0)
    history.update(np.arange(6), [0.1, 0.2, 0.3, 0.4, 0.5, 4.0])  # full: p_5 is 40 %
    p = history.probabilities()
    t, w = importance_draws(3, np.arange(6), 2, p, S6.T)
    eps = normal(3, np.arange(6), train_stream(2), (1, 4, 4)).astype(np.float64)
    x_t = q_sample(x0, t, eps, S6)
    expected, terms, _ = variational_loss(model.forward(x_t, t), x0, x_t, eps, t, S6, loss="vlb",
                                          variance="learned", weights=w)
    record = train_step(model, Adam(model.params, lr=1e-3), x0, S6, 3, 2, loss="vlb", variance="learned",
                        history=history)
    assert_close(record["loss"], expected, atol=0, rtol=1e-12, name="loss")
    assert_close(record["terms"], terms, atol=0, rtol=1e-12, name="L_t")
    latest = {int(ti): term for ti, term in zip(t, terms)}  # history 1: the last L_t seen per t
    for ti, term in latest.items():
        assert history.losses[ti, 0] == term
    with pytest.raises(ValueError, match="min_snr_gamma weights the simple loss only"):
        train_step(model, Adam(model.params), x0, S6, 3, 2, loss="vlb", variance="learned", min_snr_gamma=5.0)


def test_reference_train_loop_warms_up_the_importance_history():
    from reference import UNet, UNetConfig
    from reference.train import train

    S4 = make_schedule("cosine", 4)
    model = UNet(UNetConfig.tiny(out_channels=2), seed=0, zero_init=False)
    history = LossSecondMomentHistory(S4.T, history=3)
    record = train(model, grid(np.random.default_rng(6), (10, 1, 4, 4)), S4, steps=3, batch_size=8, seed=2,
                   loss="vlb", variance="learned", importance_history=history)
    assert history.warmed_up and np.all(np.isfinite(record["loss"]))
