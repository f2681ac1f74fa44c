"""reference.learned_variance_step and the learned-variance sampling plans (Improved DDPM Eq. 15).

The step is held to three independent statements of the same number: the posterior mean of
`reference.ddpm_step` plus exp(0.5 reference.learned_log_variance(v, t, schedule)) z (the
variational module's definition, full and respaced schedules), diffusers' DDPMScheduler with
variance_type="learned_range" (float64 tables, same model output and noise, every step of full
and respaced runs), and, for DDIM / DPM-Solver++, the fixed-variance loop on the mean part.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from reference.sampling import sample_plan
from tests.helpers import assert_close

T = 100
SCHEDULE = reference.make_schedule("linear", T)
COSINE = reference.make_schedule("cosine", T)


def learned_model(channels: int):
    """A smooth stand-in for a learned-variance network: (N, C, ...) -> (N, 2C, ...), v in (-1.2, 1.2)."""
    def model(x, t):
        tt = (np.asarray(t, dtype=np.float64) / T).reshape((-1,) + (1,) * (x.ndim - 1))
        mean = 0.9 * np.tanh(0.6 * x + tt) + 0.05 * x
        v = 1.2 * np.tanh(0.8 * x - tt + 0.3)
        return np.concatenate([mean, v], axis=1)
    return model


@pytest.mark.parametrize("schedule", [SCHEDULE, COSINE, SCHEDULE.respace(reference.timestep_subset(T, 10, "trailing"))])
@pytest.mark.parametrize("prediction", reference.PREDICTIONS)
@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
def test_step_is_the_posterior_mean_plus_the_learned_standard_deviation(schedule, prediction, clip):
    rng = np.random.default_rng(0)
    t = np.array([schedule.T - 1, schedule.T // 2, 1, 0])
    x_t, z = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 3, 2, 2))
    model_output = rng.standard_normal((4, 6, 2, 2)) * 1.5
    got = reference.ddpm_learned_step(x_t, t, model_output, schedule, z, prediction, clip)
    mean = reference.ddpm_step(x_t, t, model_output[:, :3], schedule, np.zeros_like(z), prediction,
                               "fixed_small", clip)
    log_variance = reference.learned_log_variance(model_output[:, 3:], t, schedule)
    expected = mean + (t > 0)[:, None, None, None] * np.exp(0.5 * log_variance) * z
    assert_close(got, expected, atol=1e-15, rtol=1e-14, name="x_prev")


def test_v_at_the_ends_gives_the_two_fixed_variances():
    """v = +1: sigma^2 = beta_t (fixed_large); v = -1: beta_tilde_t (fixed_small)  (Eq. 15)."""
    rng = np.random.default_rng(1)
    t = np.array([99, 40, 1])
    x_t, out, z = (rng.standard_normal((3, 2, 5)) for _ in range(3))
    for v, variance in ((1.0, "fixed_large"), (-1.0, "fixed_small")):
        model_output = np.concatenate([out, np.full_like(out, v)], axis=1)
        got = reference.ddpm_learned_step(x_t, t, model_output, SCHEDULE, z)
        assert_close(got, reference.ddpm_step(x_t, t, out, SCHEDULE, z, variance=variance),
                     atol=1e-15, rtol=1e-13, name=variance)


@pytest.mark.parametrize("num_steps, spacing", [(T, "leading"), (25, "leading"), (10, "leading"),
                                                (7, "leading")])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_learned_plan_equals_diffusers_learned_range(num_steps, spacing, prediction):
    """Every step of the plan equals DDPMScheduler(variance_type="learned_range").step for the
    same x, model output and noise, in float64, along diffusers' own trajectory (full T and
    respaced: diffusers' previous_timestep gives the same respaced betas)."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, variance_type="learned_range",
                                        prediction_type=prediction, clip_sample=False)
    scheduler.betas = torch.tensor(SCHEDULE.betas)
    scheduler.alphas = torch.tensor(SCHEDULE.alphas)
    scheduler.alphas_cumprod = torch.tensor(SCHEDULE.alpha_bars)
    if num_steps < T:
        scheduler.set_timesteps(num_steps)
    plan = reference.sampling_plan(SCHEDULE, "ddpm", num_steps, spacing, prediction=prediction,
                                   variance="learned")
    np.testing.assert_array_equal(plan.timesteps, scheduler.timesteps.numpy())
    assert set(plan.step_kinds) == {"learned_variance_step"}
    model = learned_model(2)
    x = np.random.default_rng(2).standard_normal((3, 2, 3, 3))
    for k, t in enumerate(plan.timesteps.tolist()):
        out = model(x, np.full(3, t))
        z = torch.randn((3, 2, 3, 3), generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        theirs = scheduler.step(torch.tensor(out), t, torch.tensor(x),
                                generator=torch.Generator().manual_seed(k)).prev_sample.numpy()
        ours = reference.learned_variance_step(x, out, plan.coefficients[k], z.numpy())
        assert_close(ours, theirs, atol=1e-13, rtol=1e-12, name=f"step {k} (t={t})")
        x = theirs


def test_plan_rows_hold_the_respaced_log_betas_and_draw_no_noise_into_x0():
    plan = reference.sampling_plan(SCHEDULE, "ddpm", 10, "linspace", variance="learned")
    respaced = SCHEDULE.respace(plan.timesteps)
    names = plan.coefficient_names
    assert names == reference.LEARNED_VARIANCE_COEFFICIENTS
    index = np.arange(9, -1, -1)  # step k is the respaced schedule's index K-1-k
    np.testing.assert_array_equal(plan.coefficients[:, names.index("log_beta")], np.log(respaced.betas[index]))
    np.testing.assert_array_equal(plan.coefficients[:, names.index("log_beta_tilde")],
                                  respaced.posterior_log_variance_clipped[index])
    assert plan.noise_streams[-1] == -1 and np.all(plan.noise_streams[:-1] == np.arange(1, 10))
    assert plan.learned_variance and plan.needs_noise


@pytest.mark.parametrize("sampler, kwargs", [("ddim", dict(num_steps=10)), ("ddim", dict(num_steps=10, eta=1.0)),
                                             ("dpm_solver++", dict(num_steps=8))])
def test_ddim_and_dpm_solver_use_the_mean_part(sampler, kwargs):
    model = learned_model(2)

    def mean_only(x, t):
        return model(x, t)[:, :2]

    learned = reference.sampling_plan(SCHEDULE, sampler, variance="learned", **kwargs)
    fixed = reference.sampling_plan(SCHEDULE, sampler, **kwargs)
    got = sample_plan(model, (3, 2, 3), learned, seed=4)
    np.testing.assert_array_equal(got, sample_plan(mean_only, (3, 2, 3), fixed, seed=4))


def test_learned_variance_needs_the_extra_channels():
    plan = reference.sampling_plan(SCHEDULE, "ddpm", 5, variance="learned")
    with pytest.raises(ValueError, match=r"model output must have 2 x 2 = 4 channels"):
        sample_plan(lambda x, t: x, (3, 2, 3), plan, seed=0)
    with pytest.raises(ValueError, match="model_output must have 2 x 3 = 6 channels"):
        reference.ddpm_learned_step(np.zeros((2, 3, 4)), 5, np.zeros((2, 3, 4)), SCHEDULE, np.zeros((2, 3, 4)))
    ddim = reference.sampling_plan(SCHEDULE, "ddim", 5, variance="learned")
    with pytest.raises(ValueError, match="model output must have 2 x 2"):
        sample_plan(lambda x, t: x, (3, 2, 3), ddim, seed=0)


def test_a_variance_half_without_learned_variance_is_named():
    plan = reference.sampling_plan(SCHEDULE, "ddpm", 5)
    with pytest.raises(ValueError, match="variance='learned'"):
        sample_plan(learned_model(2), (3, 2, 3), plan, seed=0)


def test_bad_learned_step_inputs_are_rejected():
    x, out = np.zeros((2, 3)), np.zeros((2, 6))
    c = reference.learned_variance_coefficients(SCHEDULE, np.array([4, 3]))
    with pytest.raises(ValueError, match="noise is required"):
        reference.learned_variance_step(x, out, c)
    with pytest.raises(ValueError, match=r"coefficients must have shape \(10,\)"):
        reference.learned_variance_step(x, out, c[:, :8], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="noise"):
        reference.learned_variance_step(x, out, c, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="variance must be one of"):
        reference.sampling_plan(SCHEDULE, "ddpm", variance="learned_range")
