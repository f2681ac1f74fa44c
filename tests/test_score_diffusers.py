"""External truth: the VE predictor and corrector equal diffusers' ScoreSdeVeScheduler.

For the same score and the same noise (diffusers' `randn_tensor` replaced by the noise our
stream draws), `step_pred` (reverse diffusion, Song et al. 2021 Eq. 47) and `step_correct`
(Langevin corrector with the snr rule, Alg. 5) give the same x as `reference.langevin_step` with
the rows of our pc plan, and a whole PC run of diffusers' loop (ScoreSdeVePipeline's order:
corrector(s), then predictor, per level; the last predictor's mean returned) equals
`ddpm.sample(sampler="pc")`. diffusers averages the corrector's norms over the batch; ours are
per sample (batch invariance), so the corrector is compared at batch size 1 and per sample.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import kernels
import reference
from tests.helpers import assert_close

diffusers = pytest.importorskip("diffusers")
from diffusers import ScoreSdeVeScheduler  # noqa: E402
from diffusers.schedulers import scheduling_sde_ve  # noqa: E402

N_LEVELS, SIGMA_MIN, SIGMA_MAX, SNR = 12, 0.01, 30.0, 0.16
SHAPE = (1, 2, 3, 3)


def make_scheduler():
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=N_LEVELS, snr=SNR, sigma_min=SIGMA_MIN,
                                    sigma_max=SIGMA_MAX, sampling_eps=1e-5, correct_steps=1)
    scheduler.set_timesteps(N_LEVELS)
    scheduler.set_sigmas(N_LEVELS)
    scheduler.discrete_sigmas = scheduler.discrete_sigmas.double()  # diffusers' float32 table, read in float64
    # our VE schedule over diffusers' own discrete sigmas (ascending = our t order), in float64
    schedule = reference.VESchedule(scheduler.discrete_sigmas.double().numpy())
    return scheduler, schedule


class FixedNoise:
    """Stands in for diffusers' randn_tensor: hands out the given noises in order."""

    def __init__(self, noises):
        self.noises = list(noises)

    def __call__(self, shape, **kwargs):
        z = self.noises.pop(0)
        assert tuple(z.shape) == tuple(shape)
        return z.clone()


def score_model(x, t):
    """A smooth stand-in for a z-predicting network (float64 torch)."""
    tt = (t.double() / N_LEVELS).reshape(-1, 1, 1, 1)
    return 0.8 * torch.tanh(0.3 * x + tt) + 0.1 * x


def test_step_pred_and_step_correct_equal_the_plan_rows(monkeypatch):
    scheduler, schedule = make_scheduler()
    plan = reference.sampling_plan(schedule, "pc", N_LEVELS, snr=SNR, corrector_steps=1, denoise=False)
    gen = torch.Generator().manual_seed(0)
    for i, t_cont in enumerate(scheduler.timesteps):
        level = N_LEVELS - 1 - i
        x = torch.randn(SHAPE, generator=gen, dtype=torch.float64) * 3
        out = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
        z = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
        score = -out / schedule.sigmas[level]
        corrector, predictor = plan.coefficients[2 * i], plan.coefficients[2 * i + 1]
        assert plan.timesteps[2 * i] == plan.timesteps[2 * i + 1] == level
        monkeypatch.setattr(scheduling_sde_ve, "randn_tensor", FixedNoise([z]))
        want = scheduler.step_pred(score, t_cont, x).prev_sample
        got = reference.langevin_step(x.numpy(), out.numpy(), predictor[:4], z.numpy())
        assert_close(got, want, atol=1e-12, rtol=1e-10, name=f"step_pred level {level}")
        monkeypatch.setattr(scheduling_sde_ve, "randn_tensor", FixedNoise([z]))
        want = scheduler.step_correct(score, x).prev_sample
        rows = reference.langevin_snr_coefficients(corrector, out.numpy(), z.numpy())
        got = reference.langevin_step(x.numpy(), out.numpy(), rows, z.numpy())
        # step_correct multiplies its step by torch.ones(N) (float32): the step is rounded to float32
        # (relative 2**-24), so x moves by ~6e-8 of the update: compare at 1e-6
        assert_close(got, want, atol=1e-6, rtol=1e-6, name=f"step_correct level {level}")
        fused = kernels.langevin_step(x, out, torch.from_numpy(rows), noise=z, backend="torch")
        assert_close(fused, got, atol=1e-12, rtol=1e-12, name="kernels.langevin_step")


def test_step_correct_with_batch_norms_equals_diffusers_for_a_batch(monkeypatch):
    """snr_norms="batch": the batch-mean norms of diffusers (and Song's code) for N = 4."""
    scheduler, schedule = make_scheduler()
    plan = reference.sampling_plan(schedule, "pc", N_LEVELS, snr=SNR, snr_norms="batch")
    gen = torch.Generator().manual_seed(1)
    x, out, z = (torch.randn((4,) + SHAPE[1:], generator=gen, dtype=torch.float64) for _ in range(3))
    level = 5
    k = int(np.flatnonzero((plan.timesteps == level) & (plan.coefficients[:, 4] > 0))[0])
    monkeypatch.setattr(scheduling_sde_ve, "randn_tensor", FixedNoise([z]))
    want = scheduler.step_correct(-out / schedule.sigmas[level], x).prev_sample
    rows = reference.langevin_snr_coefficients(plan.coefficients[k], out.numpy(), z.numpy())
    got = reference.langevin_step(x.numpy(), out.numpy(), rows, z.numpy())
    assert_close(got, want, atol=1e-6, rtol=1e-6, name="batch-norm corrector")  # diffusers' float32 step


def test_a_whole_pc_run_equals_diffusers_loop(monkeypatch):
    scheduler, schedule = make_scheduler()
    seed = 3
    plan = reference.sampling_plan(schedule, "pc", N_LEVELS, snr=SNR, corrector_steps=1)
    # the noises our run draws: x_T (stream 0, times sigma_max), then step k from stream k + 1
    noises = [torch.from_numpy(reference.normal(seed, [0], 0, SHAPE[1:]).astype(np.float64))]
    noises += [torch.from_numpy(reference.normal(seed, [0], int(s), SHAPE[1:]).astype(np.float64))
               for s in plan.noise_streams if s >= 0]
    # diffusers also draws z for its last predictor step, whose mean it returns (our plan draws none)
    monkeypatch.setattr(scheduling_sde_ve, "randn_tensor", FixedNoise(noises[1:] + [torch.zeros(SHAPE)]))
    sample = noises[0] * float(scheduler.discrete_sigmas[-1].double())   # ScoreSdeVePipeline's x_T
    for i, t_cont in enumerate(scheduler.timesteps):
        level = torch.full((1,), N_LEVELS - 1 - i, dtype=torch.int64)
        sigma = schedule.sigmas[level.item()]
        sample = scheduler.step_correct(-score_model(sample, level) / sigma, sample).prev_sample
        output = scheduler.step_pred(-score_model(sample, level) / sigma, t_cont, sample)
        sample, sample_mean = output.prev_sample, output.prev_sample_mean
    ours = ddpm.sample(score_model, SHAPE, schedule, sampler="pc", num_steps=N_LEVELS, snr=SNR,
                       corrector_steps=1, seed=seed, dtype=torch.float64, backend="torch")
    # float32 corrector steps in diffusers (see above), 12 levels: 1e-5
    assert_close(ours, sample_mean, atol=1e-5, rtol=1e-5, name="PC run vs diffusers")
