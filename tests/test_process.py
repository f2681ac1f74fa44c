"""reference.process: forward noising, posteriors, parameterisations and the sampler steps.

Property tests (hypothesis) for the identities of DDPM (Ho et al. 2020), DDIM (Song et al.
2021) and DPM-Solver++ (Lu et al. 2022); known answers against diffusers' schedulers with the
reference's float64 tables swapped in; bad input for every public function.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close
from reference import (
    PREDICTIONS,
    SCHEDULE_KINDS,
    STEP_COEFFICIENTS,
    classifier_free_guidance,
    ddim_coefficients,
    ddim_step,
    ddpm_coefficients,
    ddpm_step,
    dpm_solver_pp_2m_step,
    dynamic_threshold,
    make_schedule,
    normal,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    prediction_coefficients,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    sampler_step,
    v_from_x0_eps,
)

_SCHEDULES = {}


def schedule_of(kind, T):
    if (kind, T) not in _SCHEDULES:
        _SCHEDULES[(kind, T)] = make_schedule(kind, T)
    return _SCHEDULES[(kind, T)]


@st.composite
def batches(draw, min_t=0):
    """(schedule, x0 (N, 3), eps (N, 3), t (N,)) with per-sample timesteps."""
    kind = draw(st.sampled_from(SCHEDULE_KINDS), label="kind")
    T = draw(st.sampled_from([2, 10, 100, 1000]), label="T")
    n = draw(st.integers(1, 6), label="N")
    seed = draw(st.integers(0, 2**32), label="seed")
    rng = np.random.default_rng(seed)
    t = rng.integers(min(min_t, T - 1), T, n)
    return schedule_of(kind, T), rng.standard_normal((n, 3)) * 2, rng.standard_normal((n, 3)), t


def col(values, like):
    return np.asarray(values, dtype=np.float64).reshape((-1,) + (1,) * (like.ndim - 1))


# ----------------------------------------------------------------------------- forward process

@given(kind=st.sampled_from(SCHEDULE_KINDS), t=st.integers(0, 999), x0=st.floats(-3, 3))
def test_q_sample_has_the_marginal_mean_and_variance_of_q_xt_given_x0(kind, t, x0):
    # DDPM Eq. 4: q(x_t | x0) = N(sqrt(ab_t) x0, (1 - ab_t) I); 20000 draws, 5-sigma bounds.
    s = schedule_of(kind, 1000)
    n = 20000
    x0s = np.full((n, 1), x0)
    eps = normal(t, np.arange(n), 3, (1,)).astype(np.float64)
    x_t = q_sample(x0s, t, eps, s)
    mean, var = q_mean_variance(x0s[:1], t, s)
    sd = np.sqrt(var[0, 0])
    assert abs(x_t.mean() - mean[0, 0]) < 5 * sd / np.sqrt(n)
    assert abs(x_t.var() - var[0, 0]) < 5 * var[0, 0] * np.sqrt(2.0 / n)


@given(batch=batches())
def test_q_sample_is_eq4_per_sample(batch):
    s, x0, eps, t = batch
    expected = col(np.sqrt(s.alpha_bars[t]), x0) * x0 + col(np.sqrt(1 - s.alpha_bars[t]), x0) * eps
    assert_close(q_sample(x0, t, eps, s), expected, atol=1e-15, rtol=1e-15, name="x_t")
    # an int t broadcasts to the batch
    assert_close(q_sample(x0, int(t[0]), eps, s), q_sample(x0, np.full_like(t, t[0]), eps, s),
                 atol=0, rtol=0, name="int t")


@given(batch=batches(min_t=1))
def test_q_posterior_is_the_bayes_posterior_of_eqs_6_7(batch):
    # Independent derivation: prior q(x_{t-1} | x0) = N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}),
    # likelihood q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t); precisions add.
    s, x0, eps, t = batch
    x_t = q_sample(x0, t, eps, s)
    ab_prev, alpha, beta = s.alpha_bars[t - 1], s.alphas[t], s.betas[t]
    precision = 1.0 / (1.0 - ab_prev) + alpha / beta
    var = 1.0 / precision
    mean = col(var, x0) * (col(np.sqrt(ab_prev) / (1 - ab_prev), x0) * x0 + col(np.sqrt(alpha) / beta, x0) * x_t)
    got_mean, got_var, got_logvar = q_posterior_mean_variance(x0, x_t, t, s)
    assert_close(got_mean, mean, atol=1e-12, rtol=1e-9, name="posterior mean")
    assert_close(got_var, np.broadcast_to(col(var, x0), x0.shape), atol=0, rtol=1e-9, name="posterior variance")
    assert_close(np.exp(got_logvar), got_var, atol=0, rtol=1e-12, name="log variance")


# ----------------------------------------------------------------------------- parameterisations

@given(batch=batches())
def test_eps_x0_v_conversions_invert_each_other(batch):
    s, x0, eps, t = batch
    x_t = q_sample(x0, t, eps, s)
    ab = col(s.alpha_bars[t], x0)
    # Inverting Eq. 4 divides by sqrt(ab) or sqrt(1 - ab): round-off grows like 1 / that.
    cond = 1.0 / np.sqrt(ab * (1 - ab))
    tol = 1e-14 * cond * (1 + np.abs(x0) + np.abs(eps))
    assert np.all(np.abs(predict_x0_from_eps(x_t, t, eps, s) - x0) <= tol)
    assert np.all(np.abs(predict_eps_from_x0(x_t, t, x0, s) - eps) <= tol)
    v = v_from_x0_eps(x0, eps, t, s)
    assert_close(v, np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0, atol=1e-15, rtol=1e-15, name="v")
    assert_close(predict_x0_from_v(x_t, t, v, s), x0, atol=1e-13, rtol=1e-13, name="x0 from v")
    assert_close(predict_eps_from_v(x_t, t, v, s), eps, atol=1e-13, rtol=1e-13, name="eps from v")
    # prediction_coefficients gives (x0, eps) from (x_t, output) for every parameterisation
    outputs = {"epsilon": eps, "sample": x0, "v_prediction": v}
    for prediction in PREDICTIONS:
        c = prediction_coefficients(s.alpha_bars[t], prediction)
        assert c.shape == (len(t), 4)
        out = outputs[prediction]
        assert np.all(np.abs(col(c[:, 0], x0) * x_t + col(c[:, 1], x0) * out - x0) <= tol), prediction
        assert np.all(np.abs(col(c[:, 2], x0) * x_t + col(c[:, 3], x0) * out - eps) <= tol), prediction


# ----------------------------------------------------------------------------- DDPM step

@given(batch=batches(min_t=1), prediction=st.sampled_from(PREDICTIONS),
       variance=st.sampled_from(["fixed_small", "fixed_large"]))
def test_ddpm_step_given_the_true_noise_lands_on_the_posterior_mean(batch, prediction, variance):
    s, x0, eps, t = batch
    x_t = q_sample(x0, t, eps, s)
    output = {"epsilon": eps, "sample": x0, "v_prediction": v_from_x0_eps(x0, eps, t, s)}[prediction]
    mean, posterior_var, _ = q_posterior_mean_variance(x0, x_t, t, s)
    cond = 1.0 / np.sqrt(col(s.alpha_bars[t] * (1 - s.alpha_bars[t]), x0))
    tol = 1e-13 * cond * (1 + np.abs(x0) + np.abs(eps))
    no_noise = ddpm_step(x_t, t, output, s, np.zeros_like(x0), prediction, variance)
    assert np.all(np.abs(no_noise - mean) <= tol)
    # the noise enters as sigma_t z, sigma_t^2 = beta_tilde_t (fixed_small) or beta_t (fixed_large)
    z = np.random.default_rng(0).standard_normal(x0.shape)
    sigma2 = posterior_var[:, 0] if variance == "fixed_small" else s.betas[t]
    with_noise = ddpm_step(x_t, t, output, s, z, prediction, variance)
    assert_close(with_noise - no_noise, col(np.sqrt(sigma2), x0) * z, atol=1e-12, rtol=1e-9, name="sigma z")


def test_ddpm_step_at_t0_returns_x0_and_ignores_noise():
    s = make_schedule("linear", 1000)
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    x_t = q_sample(x0, 0, eps, s)
    assert_close(ddpm_step(x_t, 0, eps, s, None), x0, atol=1e-12, rtol=1e-12, name="x_{-1}")
    assert_close(ddpm_step(x_t, 0, eps, s, np.full_like(x0, 1e6)), x0, atol=1e-12, rtol=1e-12, name="noise ignored")
    c = ddpm_coefficients(s, np.array([0, 5]))
    assert c.shape == (2, len(STEP_COEFFICIENTS)) and c[0, 7] == 0.0 and c[1, 7] > 0.0


# ----------------------------------------------------------------------------- DDIM step

@given(batch=batches(min_t=1), data=st.data(), prediction=st.sampled_from(PREDICTIONS))
def test_ddim_eta0_with_the_true_eps_moves_along_the_same_noise(batch, data, prediction):
    # x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps = q_sample(x0, t_prev, eps); to t_prev = -1: x0.
    s, x0, eps, t = batch
    t_prev = np.array([data.draw(st.integers(-1, int(ti) - 1)) for ti in t])
    x_t = q_sample(x0, t, eps, s)
    output = {"epsilon": eps, "sample": x0, "v_prediction": v_from_x0_eps(x0, eps, t, s)}[prediction]
    got = ddim_step(x_t, t, t_prev, output, s, eta=0.0, prediction=prediction)
    ab_prev = col(s.alpha_bar_at(t_prev), x0)
    expected = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
    cond = 1.0 / np.sqrt(col(s.alpha_bars[t] * (1 - s.alpha_bars[t]), x0))
    assert np.all(np.abs(got - expected) <= 1e-13 * cond * (1 + np.abs(x0) + np.abs(eps)))
    to_data = ddim_step(x_t, t, -1, output, s, prediction=prediction)
    assert np.all(np.abs(to_data - x0) <= 1e-13 * cond * (1 + np.abs(x0) + np.abs(eps)))


@given(batch=batches(min_t=1), prediction=st.sampled_from(PREDICTIONS))
def test_ddim_eta1_to_t_minus_1_is_the_ddpm_step(batch, prediction):
    # Song et al. Eq. 16 with eta = 1: sigma^2 = beta_tilde and the DDPM posterior mean.
    s, x0, eps, t = batch
    x_t = q_sample(x0, t, eps, s)
    output = np.random.default_rng(2).standard_normal(x0.shape)  # any model output
    z = np.random.default_rng(3).standard_normal(x0.shape)
    sigma = ddim_coefficients(s, t, t - 1, eta=1.0, prediction=prediction)[:, 7]
    assert_close(sigma**2, s.posterior_variance[t], atol=1e-15, rtol=1e-10, name="sigma^2 = beta_tilde")
    ddim = ddim_step(x_t, t, t - 1, output, s, eta=1.0, noise=z, prediction=prediction)
    ddpm = ddpm_step(x_t, t, output, s, z, prediction=prediction)
    cond = 1.0 / np.sqrt(col(s.alpha_bars[t] * (1 - s.alpha_bars[t]), x0))
    assert np.all(np.abs(ddim - ddpm) <= 1e-12 * cond * (1 + np.abs(x_t) + np.abs(output)))


@given(batch=batches(min_t=1), eta=st.floats(0.0, 1.0))
def test_ddim_sigma_is_eq16_for_any_jump(batch, eta):
    s, _, _, t = batch
    t_prev = t // 2 - 1
    ab, ab_prev = s.alpha_bars[t], s.alpha_bar_at(t_prev)
    expected = eta * np.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    c = ddim_coefficients(s, t, t_prev, eta)
    assert_close(c[:, 7], expected, atol=1e-15, rtol=1e-12, name="sigma")
    assert_close(c[:, 4], np.sqrt(ab_prev), atol=0, rtol=1e-15, name="sqrt(ab_prev)")
    direction = np.sqrt(np.maximum(1 - ab_prev - expected**2, 0))
    # 1 - ab_prev - sigma^2 cancels: an absolute error of a few ulp(1) in the radicand moves
    # its square root by ~1e-15 / (2 direction).
    assert np.all(np.abs(c[:, 6] - direction) <= 1e-12 * direction + 1e-15 / np.maximum(direction, 1e-8))


# ----------------------------------------------------------------------------- the update rule, clipping

def test_sampler_step_is_the_documented_elementwise_rule():
    rng = np.random.default_rng(4)
    x, out, z = (rng.standard_normal((5, 2, 3)) for _ in range(3))
    c = rng.standard_normal((5, 8))
    c[1, 7] = 0.0  # a row without noise ignores its noise entries
    x0 = col(c[:, 0], x) * x + col(c[:, 1], x) * out
    eps = col(c[:, 2], x) * x + col(c[:, 3], x) * out
    expected = col(c[:, 4], x) * np.clip(x0, -1, 1) + col(c[:, 5], x) * x + col(c[:, 6], x) * eps + col(c[:, 7], x) * z
    z_row1 = z.copy()
    z_row1[1] = 1e9
    assert_close(sampler_step(x, out, c, z_row1, clip=(-1, 1)), expected, atol=1e-14, rtol=1e-14, name="x_prev")
    c[:, 7] = 0.0
    assert sampler_step(x, out, c, None).shape == x.shape  # no noise needed when every sigma is 0
    assert_close(sampler_step(x, out, c[0]), sampler_step(x, out, np.tile(c[0], (5, 1))),
                 atol=0, rtol=0, name="(8,) broadcasts")


@given(batch=batches(min_t=1), percentile=st.floats(0.5, 1.0))
def test_dynamic_threshold_is_imagen_per_sample(batch, percentile):
    _, x0, _, _ = batch
    x0 = x0 * 2
    got = dynamic_threshold(x0, percentile)
    for i in range(x0.shape[0]):
        s = max(np.quantile(np.abs(x0[i]), percentile), 1.0)
        assert_close(got[i], np.clip(x0[i], -s, s) / s, atol=0, rtol=1e-15, name=f"sample {i}")
    assert np.abs(got).max() <= 1.0
    small = np.clip(x0, -0.9, 0.9)  # every |x| <= 1: s = 1, identity
    assert_close(dynamic_threshold(small, percentile), small, atol=0, rtol=0, name="identity")


def test_clip_uses_the_clipped_x0_and_keeps_the_models_eps():
    # DESIGN contract 5: x0_hat is clipped, eps_hat stays the model's own (as diffusers does).
    s = make_schedule("linear", 1000)
    x_t = np.array([[3.0, -0.2]])
    eps = np.array([[-1.5, 0.1]])
    ab, ab_prev = s.alpha_bars[500], s.alpha_bars[400]
    x0 = (x_t - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    got = ddim_step(x_t, 500, 400, eps, s, clip=(-1, 1))
    assert_close(got, np.sqrt(ab_prev) * np.clip(x0, -1, 1) + np.sqrt(1 - ab_prev) * eps,
                 atol=1e-14, rtol=1e-14, name="clipped DDIM")
    mean, _, _ = q_posterior_mean_variance(np.clip(x0, -1, 1), x_t, 500, s)
    assert_close(ddpm_step(x_t, 500, eps, s, np.zeros_like(x_t), clip=(-1, 1)), mean,
                 atol=1e-14, rtol=1e-14, name="clipped DDPM")


# ----------------------------------------------------------------------------- DPM-Solver++

@given(batch=batches(min_t=1), data=st.data(), prediction=st.sampled_from(PREDICTIONS))
def test_first_order_dpm_solver_pp_is_ddim_eta0(batch, data, prediction):
    # Lu et al. 2022: DPM-Solver++(1) = DDIM. Without history the step is first order.
    s, x0, eps, t = batch
    t_prev = np.array([data.draw(st.integers(-1, int(ti) - 1)) for ti in t])
    x_t = q_sample(x0, t, eps, s)
    output = np.random.default_rng(5).standard_normal(x0.shape)
    dpm, (x0_hat, t_out) = dpm_solver_pp_2m_step(x_t, t, t_prev, output, s, None, prediction)
    ddim = ddim_step(x_t, t, t_prev, output, s, prediction=prediction)
    cond = 1.0 / np.sqrt(col(s.alpha_bars[t] * (1 - s.alpha_bars[t]), x0))
    assert np.all(np.abs(dpm - ddim) <= 1e-12 * cond * (1 + np.abs(x_t) + np.abs(output)))
    assert t_out.tolist() == t.tolist()


def test_dpm_solver_pp_2m_is_second_order_in_lambda():
    # Lu et al. 2022, Eq. 9: x_prev = (sigma_prev / sigma_t) x_t + sigma_prev int e^l x0(l) dl over
    # [lambda_t, lambda_prev]. For x0_hat linear in lambda, x0(l) = a + b l, the 2M combination
    # (1 + 1/2r) D_t - 1/2r D_last is x0 at the midpoint lambda_t + h/2, so the step's error is
    # exactly sigma_prev b e^lambda_t E(h), E(h) = int_0^h e^u (u - h/2) du = e^h (h/2 - 1) + 1 + h/2
    # = h^3 / 12 + O(h^4): third order locally, where the first-order step is off by O(h^2).
    s = make_schedule("linear", 1000)
    lam = lambda t: 0.5 * np.log(s.alpha_bars[t] / (1 - s.alpha_bars[t]))  # noqa: E731
    a, b = np.array([[0.3, -1.0]]), np.array([[0.2, 0.5]])
    x0_of = lambda t: a + b * lam(t)  # noqa: E731
    x_t = np.array([[0.7, -0.4]])
    for t_last, t, t_prev in ((700, 600, 500), (300, 280, 250), (120, 100, 95)):
        ab, ab_prev = s.alpha_bars[t], s.alpha_bars[t_prev]
        sigma_t, sigma_prev = np.sqrt(1 - ab), np.sqrt(1 - ab_prev)
        out = (x_t - np.sqrt(ab) * x0_of(t)) / sigma_t          # the eps with x0_hat = x0_of(t)
        got, _ = dpm_solver_pp_2m_step(x_t, t, t_prev, out, s, (x0_of(t_last), t_last))
        l0, l1 = lam(t), lam(t_prev)
        h = l1 - l0
        integral = a * (np.exp(l1) - np.exp(l0)) + b * ((l1 - 1) * np.exp(l1) - (l0 - 1) * np.exp(l0))
        exact = sigma_prev / sigma_t * x_t + sigma_prev * integral
        E = np.exp(h) * (h / 2 - 1) + 1 + h / 2
        assert_close(exact - got, sigma_prev * b * np.exp(l0) * E, atol=1e-13, rtol=1e-7, name=f"2M error t={t}")
        first_order, _ = dpm_solver_pp_2m_step(x_t, t, t_prev, out, s, None)
        assert np.abs(first_order - exact).min() > 2 / h * np.abs(got - exact).max()


def test_dpm_solver_pp_matches_diffusers_multistep():
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    s = make_schedule("linear", 1000)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
        final_sigmas_type="zero", timestep_spacing="leading")
    scheduler.alphas_cumprod = torch.tensor(s.alpha_bars)              # the reference's float64 table
    scheduler.alpha_t = torch.sqrt(scheduler.alphas_cumprod)
    scheduler.sigma_t = torch.sqrt(1 - scheduler.alphas_cumprod)
    scheduler.lambda_t = torch.log(scheduler.alpha_t) - torch.log(scheduler.sigma_t)
    scheduler.set_timesteps(12)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4))
    theirs = torch.tensor(x)
    history = None
    timesteps = [int(v) for v in scheduler.timesteps]
    for k, t in enumerate(timesteps):
        out = np.tanh(x) * 0.5 + 0.1 * t / 1000  # a smooth stand-in eps-model
        theirs = scheduler.step(torch.tensor(np.tanh(theirs.numpy()) * 0.5 + 0.1 * t / 1000), t, theirs).prev_sample
        t_prev = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        x, history = dpm_solver_pp_2m_step(x, t, t_prev, out, s, history)
        # diffusers' step upcasts the sample to float32 and keeps float32 sigmas: float32 agreement
        assert_close(x, theirs.numpy(), atol=2e-6, rtol=2e-6, name=f"step {k} (t={t})")


# ----------------------------------------------------------------------------- vs diffusers

@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("variance, clip, threshold", [
    ("fixed_small", None, None), ("fixed_large", None, None), ("fixed_small", (-1, 1), None),
    ("fixed_small", None, 0.9)])
def test_ddpm_step_matches_diffusers_ddpm_scheduler(prediction, variance, clip, threshold):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    s = make_schedule("linear", 1000)
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, variance_type=variance, prediction_type=prediction,
        clip_sample=clip is not None, thresholding=threshold is not None,
        dynamic_thresholding_ratio=threshold or 0.995, sample_max_value=1e9)
    scheduler.betas = torch.tensor(s.betas)                          # float64 tables
    scheduler.alphas = torch.tensor(s.alphas)
    scheduler.alphas_cumprod = torch.tensor(s.alpha_bars)
    rng = np.random.default_rng(7)
    x_t, out = rng.standard_normal((3, 4, 4)) * 2, rng.standard_normal((3, 4, 4))
    for t in (999, 500, 37, 1, 0):
        noise = torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        theirs = scheduler.step(torch.tensor(out), t, torch.tensor(x_t),
                                generator=torch.Generator().manual_seed(t)).prev_sample
        ours = ddpm_step(x_t, t, out, s, noise.numpy(), prediction, variance, clip, threshold)
        assert_close(ours, theirs.numpy(), atol=1e-12, rtol=1e-10, name=f"t={t}")


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta, clip", [(0.0, None), (0.5, None), (1.0, (-1, 1)), (0.0, (-1, 1))])
def test_ddim_step_matches_diffusers_ddim_scheduler(prediction, eta, clip):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    s = make_schedule("cosine", 1000)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type=prediction,
                                        clip_sample=clip is not None, set_alpha_to_one=True)
    scheduler.alphas_cumprod = torch.tensor(s.alpha_bars)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    scheduler.set_timesteps(20)
    rng = np.random.default_rng(8)
    x_t, out = rng.standard_normal((2, 8)) * 2, rng.standard_normal((2, 8))
    for t in scheduler.timesteps.tolist():
        t_prev = max(t - 1000 // 20, -1)    # diffusers: alpha_bar_prev = 1 for prev < 0
        z = rng.standard_normal((2, 8))
        theirs = scheduler.step(torch.tensor(out), t, torch.tensor(x_t), eta=eta,
                                variance_noise=torch.tensor(z)).prev_sample
        ours = ddim_step(x_t, t, t_prev, out, s, eta, z if eta > 0 else None, prediction, clip)
        assert_close(ours, theirs.numpy(), atol=1e-12, rtol=1e-10, name=f"t={t}")


# ----------------------------------------------------------------------------- guidance, dtypes

def test_classifier_free_guidance_combines_linearly():
    rng = np.random.default_rng(9)
    cond, uncond = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    assert_close(classifier_free_guidance(cond, uncond, 1.0), cond, atol=1e-15, rtol=0, name="w=1")
    assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond, atol=0, rtol=0, name="w=0")
    assert_close(classifier_free_guidance(cond, uncond, 3.0), uncond + 3 * (cond - uncond),
                 atol=0, rtol=0, name="w=3")


def test_float32_on_request_and_float64_otherwise():
    s = make_schedule("linear", 100)
    x32 = np.ones((2, 3), np.float32)
    assert q_sample(x32, 5, x32, s).dtype == np.float32
    assert q_sample(x32, 5, x32.astype(np.float64), s).dtype == np.float64
    assert ddpm_step(x32, 5, x32, s, x32).dtype == np.float32
    assert ddim_step(x32, 5, 2, x32, s).dtype == np.float32
    assert dpm_solver_pp_2m_step(x32, 5, 2, x32, s)[0].dtype == np.float32
    assert classifier_free_guidance(x32, x32, 2.0).dtype == np.float32
    assert q_sample([[0.5]], 1, [[0.1]], s).dtype == np.float64  # lists are taken as float64


# ----------------------------------------------------------------------------- bad input

S = make_schedule("linear", 10)
X = np.zeros((2, 3))
NAN = np.full((2, 3), np.nan)
COEF = ddim_coefficients(S, 5, 2)


@pytest.mark.parametrize("call, error, match", [
    (lambda: q_sample(X, 0, np.zeros((2, 4)), S), ValueError, "noise must have the shape of x0"),
    (lambda: q_sample(X.astype(int), 0, X, S), TypeError, "x0 must have dtype float32 or float64"),
    (lambda: q_sample(X, 10, X, S), ValueError, r"t must lie in \[0, 9\]"),
    (lambda: q_sample(X, -1, X, S), ValueError, r"t must lie in \[0, 9\]"),
    (lambda: q_sample(X, 1.0, X, S), TypeError, "t must be an int"),
    (lambda: q_sample(X, np.array([1, 2, 3]), X, S), ValueError, r"t must be an int or have shape \(2,\)"),
    (lambda: q_sample(NAN, 0, X, S), ValueError, "x0 contains NaN"),
    (lambda: q_sample(X, 0, NAN, S), ValueError, "noise contains NaN"),
    (lambda: q_sample(X, 0, X, "linear"), TypeError, "schedule must be a reference Schedule"),
    (lambda: q_sample("x", 0, X, S), TypeError, "x0 must be a NumPy array"),
    (lambda: q_mean_variance(NAN, 0, S), ValueError, "x0 contains NaN"),
    (lambda: q_mean_variance(X, 11, S), ValueError, "t must lie in"),
    (lambda: q_posterior_mean_variance(X, np.zeros((3, 3)), 1, S), ValueError, "x_t must have the shape of x0"),
    (lambda: q_posterior_mean_variance(X, NAN, 1, S), ValueError, "x_t contains NaN"),
    (lambda: predict_x0_from_eps(X, 0, np.zeros(3), S), ValueError, "eps must have the shape of x_t"),
    (lambda: predict_eps_from_x0(X, 0, NAN, S), ValueError, "x0 contains NaN"),
    (lambda: v_from_x0_eps(X, X.astype(np.int32), 0, S), TypeError, "eps must have dtype"),
    (lambda: predict_x0_from_v(X, 12, X, S), ValueError, "t must lie in"),
    (lambda: predict_eps_from_v(X, 0, NAN, S), ValueError, "v contains NaN"),
    (lambda: prediction_coefficients(np.array([0.5]), "score"), ValueError, "prediction must be one of"),
    (lambda: ddpm_coefficients(S, 3, variance="learned"), ValueError, "variance must be one of"),
    (lambda: ddpm_coefficients(S, 10), ValueError, "t must lie in"),
    (lambda: ddim_coefficients(S, 5, 5), ValueError, "t_prev must satisfy -1 <= t_prev < t"),
    (lambda: ddim_coefficients(S, 5, -2), ValueError, "t_prev must satisfy"),
    (lambda: ddim_coefficients(S, 5, 2.0), TypeError, "t_prev must be integer"),
    (lambda: ddim_coefficients(S, 5, 2, eta=-0.1), ValueError, r"eta must lie in \[0, 1\]"),
    (lambda: ddim_coefficients(S, 5, 2, eta=1.5), ValueError, r"eta must lie in \[0, 1\]"),
    (lambda: ddim_coefficients(S, 5, 2, eta=float("nan")), ValueError, r"eta must lie in \[0, 1\]"),
    (lambda: ddim_coefficients(S, 5, 2, eta="1"), TypeError, "eta must be a number"),
    (lambda: sampler_step(X, X, np.zeros((3, 8))), ValueError, r"coefficients must have shape \(8,\) or \(2, 8\)"),
    (lambda: sampler_step(X, X, np.full(8, np.nan)), ValueError, "coefficients contain NaN"),
    (lambda: sampler_step(X, np.zeros((2, 2)), COEF), ValueError, "model_output must have the shape of x_t"),
    (lambda: sampler_step(X, X, ddim_coefficients(S, 5, 2, eta=1.0)[0]), ValueError, "noise is required"),
    (lambda: sampler_step(X, X, COEF, clip=(1, -1)), ValueError, "clip must satisfy lo < hi"),
    (lambda: sampler_step(X, X, COEF, clip=1.0), TypeError, "clip must be None or a pair"),
    (lambda: ddpm_step(X, 5, X, S, None), ValueError, "noise is required"),
    (lambda: ddpm_step(X, 5, X, S, np.zeros((2, 2))), ValueError, "noise must have the shape of x_t"),
    (lambda: ddpm_step(X, 5, NAN, S, X), ValueError, "model_output contains NaN"),
    (lambda: ddpm_step(X, 5, X, S, NAN), ValueError, "noise contains NaN"),
    (lambda: ddpm_step(X, 10, X, S, X), ValueError, "t must lie in"),
    (lambda: ddpm_step(X, 5, X, S, X, prediction="eps"), ValueError, "prediction must be one of"),
    (lambda: ddim_step(X, 5, 6, X, S), ValueError, "t_prev must satisfy"),
    (lambda: ddim_step(X, 5, -2, X, S), ValueError, r"t_prev must lie in \[-1, 9\]"),
    (lambda: ddim_step(NAN, 5, 2, X, S), ValueError, "x_t contains NaN"),
    (lambda: ddim_step(X, 5, 2, X, S, eta=0.5), ValueError, "noise is required"),
    (lambda: dpm_solver_pp_2m_step(X, 5, 5, X, S), ValueError, "t_prev must be < t"),
    (lambda: dpm_solver_pp_2m_step(X, 5, 2, NAN, S), ValueError, "model_output contains NaN"),
    (lambda: dpm_solver_pp_2m_step(X, 5, 2, X, S, (X, 4)), ValueError, r"history\[1\]"),
    (lambda: dpm_solver_pp_2m_step(X, 5, 2, X, S, (np.zeros((2, 2)), 7)), ValueError, r"history\[0\] must have"),
    (lambda: dpm_solver_pp_2m_step(X, 5, 2, X, S, prediction="x0"), ValueError, "prediction must be one of"),
    (lambda: classifier_free_guidance(X, np.zeros((2, 2)), 2.0), ValueError, "uncond must have the shape"),
    (lambda: classifier_free_guidance(X, X, float("inf")), ValueError, "guidance_scale must be finite"),
    (lambda: classifier_free_guidance(X, NAN, 2.0), ValueError, "uncond contains NaN"),
    (lambda: dynamic_threshold(X, 0.0), ValueError, r"percentile must lie in \(0, 1\]"),
    (lambda: dynamic_threshold(X, 1.5), ValueError, "percentile must lie in"),
    (lambda: dynamic_threshold(NAN, 0.9), ValueError, "x0 contains NaN"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_dpm_solver_pp_coefficients_orders_and_errors():
    """First order without history (t_last = -1) and into t_prev = -1 (returns x0_hat: c4 = 0,
    c5 = -1); second order otherwise with D = (1 + 1/(2r)) x0 - 1/(2r) x0_last."""
    from reference import dpm_solver_pp_coefficients

    s = make_schedule("linear", 100)
    c = dpm_solver_pp_coefficients(s, [50, 30, 10], [30, 10, -1], [-1, 50, 30])
    assert c[:, 6].tolist() == [0.0, 1.0, 0.0]
    assert c[0, 2:4].tolist() == [1.0, 0.0] and c[2, 2:4].tolist() == [1.0, 0.0]
    assert c[2, 4] == 0.0 and c[2, 5] == -1.0
    lam = 0.5 * np.log(s.alpha_bars / (1 - s.alpha_bars))
    r = (lam[30] - lam[50]) / (lam[10] - lam[30])
    assert abs(c[1, 2] - (1 + 0.5 / r)) < 1e-12 and abs(c[1, 3] - 0.5 / r) < 1e-12
    with pytest.raises(ValueError, match="t_last"):
        dpm_solver_pp_coefficients(s, [50], [30], [40])
    with pytest.raises(ValueError, match="t_prev"):
        dpm_solver_pp_coefficients(s, [50], [60])


def test_step_dtypes_count_the_noise_and_the_history():
    s = make_schedule("linear", 10)
    x32, z64 = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float64)
    assert ddpm_step(x32, 5, x32, s, noise=z64).dtype == np.float64
    assert ddpm_step(x32, 5, x32, s, noise=z64.astype(np.float32)).dtype == np.float32
    out, _ = dpm_solver_pp_2m_step(x32, 5, 2, x32, s, (z64, 7))
    assert out.dtype == np.float64


def test_dynamic_threshold_max_value_is_checked():
    from reference import dynamic_threshold

    with pytest.raises(ValueError, match="max_value"):
        dynamic_threshold(np.ones((2, 3)), max_value=float("nan"))
    with pytest.raises(ValueError, match="max_value"):
        dynamic_threshold(np.ones((2, 3)), max_value=0.5)


def test_dpm_solver_pp_2m_update_is_the_step_with_given_rows():
    """The step = its coefficient rows + the shared update (what the plan-driven loops call)."""
    from reference import dpm_solver_pp_2m_update, dpm_solver_pp_coefficients

    s = make_schedule("cosine", 50)
    rng = np.random.default_rng(0)
    x, out, x0_last = (rng.standard_normal((3, 2, 2)) for _ in range(3))
    want, (x0_want, _) = dpm_solver_pp_2m_step(x, 30, 12, out, s, (x0_last, 41), "v_prediction", (-1, 1))
    row = dpm_solver_pp_coefficients(s, 30, 12, 41, "v_prediction")[0]
    got, x0 = dpm_solver_pp_2m_update(x, out, row, x0_last, (-1, 1))
    assert np.array_equal(got, want) and np.array_equal(x0, x0_want)
    with pytest.raises(ValueError, match="x0_last .* is required by a second-order step"):
        dpm_solver_pp_2m_update(x, out, row)
    with pytest.raises(ValueError, match=r"coefficients must have shape \(7,\) or \(3, 7\)"):
        dpm_solver_pp_2m_update(x, out, row[:6], x0_last)
    with pytest.raises(ValueError, match="x0_last must have the shape of x_t"):
        dpm_solver_pp_2m_update(x, out, row, x0_last[:2])
