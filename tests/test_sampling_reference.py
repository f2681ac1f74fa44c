"""reference.sampling: the full DDPM / DDIM / DPM-Solver++ loops for any eps-model callable.

For Gaussian data N(mu, diag(sd^2)) the optimal eps-model is known in closed form,
eps*(x_t, t) = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab sd^2 + 1 - ab), and so is the
probability-flow ODE (each coordinate keeps its z-score), which makes exact checks of whole
sampling loops possible: convergence orders of the ODE samplers, moments of ancestral sampling.
"""

import numpy as np
import pytest

from helpers import assert_close
from reference import (
    ddim_step,
    guided,
    initial_noise,
    make_schedule,
    normal,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver_pp,
    sampler_step_stream,
    timestep_subset,
)

MU = np.array([1.0, -2.0])
SD = np.array([0.3, 0.05])


def gaussian_eps_model(schedule, mu=MU, sd=SD):
    """The exact E[eps | x_t] for data N(mu, diag(sd^2)): a model(x, t) callable."""
    def model(x, t):
        ab = schedule.alpha_bars[t][:, None]
        return np.sqrt(1 - ab) * (x - np.sqrt(ab) * mu) / (ab * sd**2 + 1 - ab)
    return model


def ode_solution(x_start, t_start, t_end, schedule):
    """The probability-flow ODE from x at t_start to t_end for the Gaussian data (z-score kept)."""
    ab0, ab1 = schedule.alpha_bars[t_start], schedule.alpha_bars[t_end]
    z = (x_start - np.sqrt(ab0) * MU) / np.sqrt(ab0 * SD**2 + 1 - ab0)
    return np.sqrt(ab1) * MU + np.sqrt(ab1 * SD**2 + 1 - ab1) * z


def state_at_t0(sampler, model, schedule, num_steps, n=64):
    """Run a leading-spaced sampler and return (x_T, t_start, its state on landing at t = 0)."""
    states = {}
    sampler(model, (n, 2), schedule, 11, num_steps=num_steps, spacing="leading",
            callback=lambda k, t, x: states.__setitem__(k, x.copy()))
    return initial_noise((n, 2), 11), timestep_subset(schedule.T, num_steps)[0], states[num_steps - 2]


def test_ode_samplers_converge_at_first_and_second_order():
    # Errors of the state at t = 0 against the exact ODE solution, on a grid that halves exactly
    # (T = 1024, leading spacing): DDIM (Euler in the data prediction) halves per doubling of the
    # steps, DPM-Solver++(2M) quarters. Measured on the sd = 0.3 coordinate; the sd = 0.05 one is
    # stiff near t = 0 and not yet asymptotic for 2M at these step counts.
    s = make_schedule("linear", 1024)
    model = gaussian_eps_model(s)
    errors = {}
    for name, sampler in (("ddim", sample_ddim), ("dpm", sample_dpm_solver_pp)):
        for steps in (128, 256, 512):
            x_T, t_start, x0_state = state_at_t0(sampler, model, s, steps)
            errors[name, steps] = np.abs(x0_state - ode_solution(x_T, t_start, 0, s))[:, 0].max()
    for coarse, fine in ((128, 256), (256, 512)):
        assert 1.8 < errors["ddim", coarse] / errors["ddim", fine] < 2.2, errors
        assert 3.5 < errors["dpm", coarse] / errors["dpm", fine] < 4.5, errors
    assert errors["dpm", 512] < errors["ddim", 512] / 4, errors


def test_ddim_loop_ends_at_the_x0_prediction_of_its_last_state():
    # The last DDIM step goes to alpha_bar = 1: x = x0_hat(x at t = 0). With the exact model that
    # is E[x0 | x_0], i.e. the state at t = 0 shrunk towards mu by sd^2 sqrt(ab) / (ab sd^2 + 1 - ab).
    s = make_schedule("linear", 1000)
    model = gaussian_eps_model(s)
    states = {}
    out = sample_ddim(model, (16, 2), s, 3, num_steps=25, callback=lambda k, t, x: states.__setitem__(k, x.copy()))
    x0_state, ab = states[23], s.alpha_bars[0]
    expected = MU + SD**2 * np.sqrt(ab) * (x0_state - np.sqrt(ab) * MU) / (ab * SD**2 + 1 - ab)
    assert_close(out, expected, atol=1e-12, rtol=1e-12, name="final x0_hat")
    manual = initial_noise((16, 2), 3)
    ts = timestep_subset(1000, 25)
    for k, t in enumerate(ts):
        t_prev = int(ts[k + 1]) if k + 1 < len(ts) else -1
        manual = ddim_step(manual, int(t), t_prev, model(manual, np.full(16, t)), s)
    assert out.tobytes() == manual.tobytes()


def propagated_moments(schedule, model_coefficients, timesteps, steps_schedule):
    """Mean/variance of DDPM ancestral sampling with a linear-Gaussian eps-model, step by step.

    x_{t-1} = coef1 x0_hat + coef2 x_t + sigma z,
    x0_hat = (x_t - sqrt(1-alpha_bar) eps) / sqrt(alpha_bar) and eps = k_t (x_t - sqrt(alpha_bar) mu): an affine map per step, so moments propagate exactly.
    """
    mean, var = np.zeros(2), np.ones(2)
    for k, t in enumerate(timesteps):
        respaced_index = len(timesteps) - 1 - k  # timesteps[k] in the ascending respaced schedule
        alpha_bar = schedule.alpha_bars[t]
        kt = model_coefficients(alpha_bar)
        # x0_hat = a x + b, a = (1 - sqrt(1-alpha_bar) k) / sqrt(alpha_bar), b = sqrt(1-alpha_bar) k mu
        a = (1 - np.sqrt(1 - alpha_bar) * kt) / np.sqrt(alpha_bar)
        b = np.sqrt(1 - alpha_bar) * kt * MU
        c1 = steps_schedule.posterior_mean_coef1[respaced_index]
        c2 = steps_schedule.posterior_mean_coef2[respaced_index]
        sigma2 = steps_schedule.posterior_variance[respaced_index] if respaced_index > 0 else 0.0
        mean = (c1 * a + c2) * mean + c1 * b
        var = (c1 * a + c2) ** 2 * var + sigma2
    return mean, var


@pytest.mark.parametrize("T, num_steps", [(200, None), (1000, 50)])
def test_ddpm_ancestral_sampling_has_the_propagated_moments(T, num_steps):
    s = make_schedule("linear", T, rescale=True)
    model = gaussian_eps_model(s)
    n = 20000
    x = sample_ddpm(model, (n, 2), s, 5, num_steps=num_steps)
    if num_steps is None:
        timesteps, steps_schedule = np.arange(T - 1, -1, -1), s
    else:
        timesteps = timestep_subset(T, num_steps)
        steps_schedule = s.respace(timesteps)
    mean, var = propagated_moments(s, lambda ab: np.sqrt(1 - ab) / (ab * SD**2 + 1 - ab), timesteps, steps_schedule)
    # 5 standard errors of the sample mean and variance
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0) - var) < 5 * var * np.sqrt(2.0 / n))
    # The mean is the data's; the variance falls short of it, the more so the fewer the steps:
    # fixed_small (beta_tilde) is DDPM's lower bound on the reverse variance (sd 0.05 comes out
    # 0.046 at T = 1000, 0.040 at T = 200, 0.027 at 50 respaced steps).
    assert_close(mean, MU, atol=1e-4, rtol=0, name="mean vs data")
    assert np.all(np.sqrt(var) < SD) and np.all(np.sqrt(var) > 0.5 * SD)


def test_sample_i_is_the_same_whatever_batch_it_is_drawn_in():
    s = make_schedule("linear", 100)
    model = gaussian_eps_model(s)
    for sampler, kwargs in ((sample_ddpm, {}), (sample_ddim, dict(num_steps=10, eta=0.7)),
                            (sample_dpm_solver_pp, dict(num_steps=8))):
        full = sampler(model, (9, 2), s, 42, **kwargs)
        part = sampler(model, (3, 2), s, 42, samples=np.array([7, 0, 4]), **kwargs)
        assert part.tobytes() == full[[7, 0, 4]].tobytes(), sampler.__name__


def test_loops_draw_noise_from_the_documented_streams():
    # x_T from stream 0; DDPM's step k adds sigma z with z from stream k + 1 (sample indices kept).
    s = make_schedule("linear", 10)
    zero_model = lambda x, t: np.zeros_like(x)  # noqa: E731
    samples = np.array([3, 8])
    x_T = initial_noise((2, 4), 9, samples)
    assert x_T.tobytes() == normal(9, samples, 0, (4,)).astype(np.float64).tobytes()
    states = {}
    sample_ddpm(zero_model, (2, 4), s, 9, samples, callback=lambda k, t, x: states.__setitem__(k, x.copy()))
    c1, c2 = s.posterior_mean_coef1[9], s.posterior_mean_coef2[9]
    x0_hat = x_T / np.sqrt(s.alpha_bars[9])
    z = normal(9, samples, sampler_step_stream(0), (4,)).astype(np.float64)
    assert_close(states[0], c1 * x0_hat + c2 * x_T + np.sqrt(s.posterior_variance[9]) * z,
                 atol=1e-14, rtol=1e-14, name="first DDPM step")


def test_guided_combines_conditional_and_null_class_outputs():
    calls = []

    def conditional(x, t, y):
        calls.append(y.copy())
        return x * 0 + y[:, None].astype(float)

    x, t = np.zeros((3, 2)), np.zeros(3, dtype=np.int64)
    y = np.array([1, 2, 0])
    out = guided(conditional, y, null_class=5, guidance_scale=3.0)(x, t)
    assert [c.tolist() for c in calls] == [[1, 2, 0], [5, 5, 5]]
    assert_close(out, (5 + 3.0 * (y - 5))[:, None] * np.ones((3, 2)), atol=0, rtol=0, name="guided")
    calls.clear()
    assert_close(guided(conditional, y, 5, 1.0)(x, t), y[:, None] * np.ones((3, 2)), atol=0, rtol=0, name="w=1")
    assert len(calls) == 1  # scale 1 needs no unconditional pass


def test_callback_and_dtype():
    s = make_schedule("cosine", 50)
    model = gaussian_eps_model(s)
    seen = []
    out = sample_ddim(model, (4, 2), s, 0, num_steps=5, dtype=np.float32,
                      callback=lambda k, t, x: seen.append((k, t, x.dtype)))
    assert out.dtype == np.float32
    assert [(k, t) for k, t, _ in seen] == list(enumerate(timestep_subset(50, 5).tolist()))
    assert sample_ddpm(model, (4, 2), s, 0, num_steps=10).dtype == np.float64
    assert sample_dpm_solver_pp(model, (4, 2), s, 0, num_steps=5, dtype=np.float32).dtype == np.float32


S = make_schedule("linear", 20)
MODEL = gaussian_eps_model(S)


@pytest.mark.parametrize("call, error, match", [
    (lambda: sample_ddpm("model", (2, 2), S, 0), TypeError, "model must be callable"),
    (lambda: sample_ddim(MODEL, (2, 2), "linear", 0), TypeError, "schedule must be a reference Schedule"),
    (lambda: sample_ddim(MODEL, (2,), S, 0), ValueError, r"shape must be \(N, \.\.\.\)"),
    (lambda: sample_ddim(MODEL, (0, 2), S, 0), ValueError, "every size >= 1"),
    (lambda: sample_ddim(MODEL, "ab", S, 0), TypeError, "shape must be a tuple of ints"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, x_T=np.zeros((3, 2))), ValueError, r"x_T must have shape \(2, 2\)"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, x_T=np.full((2, 2), np.nan)), ValueError, "x_T contains NaN"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, samples=[0, 1, 2]), ValueError, r"samples must have shape \(2,\)"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, samples=[0.0, 1.0]), TypeError, "samples must be integer"),
    (lambda: sample_ddim(MODEL, (2, 2), S, -1), ValueError, "seed must lie in"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, num_steps=21), ValueError, "num_steps must lie in"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, num_steps=5, eta=-1.0), ValueError, "eta must lie"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, num_steps=5, eta="1"), TypeError, "eta must be a number"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, num_steps=5, spacing="even"), ValueError, "spacing must be one of"),
    (lambda: sample_ddim(MODEL, (2, 2), S, 0, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (lambda: sample_ddpm(MODEL, (2, 2), S, 0, num_steps=0), ValueError, "num_steps must lie in"),
    (lambda: sample_ddpm(MODEL, (2, 2), S, 0, variance="learned_range"), ValueError, "variance must be one of"),
    (lambda: sample_ddpm(lambda x, t: x[:, :1], (2, 2), S, 0), ValueError, "model_output must have the shape"),
    (lambda: sample_ddpm(lambda x, t: x * np.nan, (2, 2), S, 0), ValueError, "model_output contains NaN"),
    (lambda: sample_dpm_solver_pp(MODEL, (2, 2), S, 0, prediction="x0"), ValueError, "prediction must be one of"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
