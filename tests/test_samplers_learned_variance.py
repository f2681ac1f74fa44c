"""ddpm.sample with variance="learned" (Improved DDPM) against the reference loops, float64.

The model is one deterministic function written twice (NumPy and torch) returning 2C channels
(a smooth eps-like prediction, then v in (-1.2, 1.2)), so the only differences are round-off:
every intermediate x of DDPM ancestral (full T and respaced: `kernels.learned_variance_step`
per step), DDIM and DPM-Solver++ (mean part) and classifier-free guidance agrees to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ddpm
import reference
from ddpm.fast_sampler import FastSampler
from reference.sampling import sample_plan
from tests.helpers import assert_close

T = 40
SHAPE = (3, 2, 4, 4)
TOL = dict(atol=1e-12, rtol=1e-12)
SCHEDULE = reference.make_schedule("linear", T)


def numpy_model(x, t, y=None):
    w = np.full(x.shape[0], 0.6) if y is None else 0.5 + 0.1 * np.asarray(y, dtype=np.float64)
    w = w[:, None, None, None]
    tt = (np.asarray(t, dtype=np.float64) / T)[:, None, None, None]
    mean = 0.9 * np.tanh(w * x + tt) + 0.05 * x
    return np.concatenate([mean, 1.2 * np.tanh(0.8 * x - tt + 0.3 * w)], axis=1)


class TorchModel(nn.Module):
    """numpy_model in torch (2C output channels)."""

    null_class = 3

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # a device for FastSampler

    def forward(self, x, t, y=None):
        w = torch.full((x.shape[0],), 0.6, dtype=torch.float64) if y is None else 0.5 + 0.1 * y.to(torch.float64)
        w = w[:, None, None, None].to(x.dtype)
        tt = (t.to(torch.float64) / T)[:, None, None, None].to(x.dtype)
        mean = 0.9 * torch.tanh(w * x + tt) + 0.05 * x
        return torch.cat([mean, 1.2 * torch.tanh(0.8 * x - tt + 0.3 * w)], dim=1)


def _run_both(sampler, numpy_fn=numpy_model, model=None, **kwargs):
    torch_steps, reference_steps = [], []
    out = ddpm.sample(model or TorchModel(), SHAPE, SCHEDULE, sampler=sampler, variance="learned",
                      seed=7, dtype=torch.float64,
                      callback=lambda k, t, x: torch_steps.append((k, t, x.clone())), **kwargs)
    plan_kwargs = {k: v for k, v in kwargs.items() if k in ("num_steps", "spacing", "eta", "prediction", "clip")}
    plan = reference.sampling_plan(SCHEDULE, sampler, variance="learned", **plan_kwargs)
    expected = sample_plan(numpy_fn, SHAPE, plan, 7,
                           callback=lambda k, t, x: reference_steps.append((k, t, x.copy())))
    assert len(torch_steps) == len(reference_steps) == plan.num_steps
    for (k, t, x), (k_ref, t_ref, x_ref) in zip(torch_steps, reference_steps):
        assert (k, t) == (k_ref, t_ref)
        assert_close(x, x_ref, **TOL, name=f"x after step {k} (t={t})")
    assert_close(out, expected, **TOL, name="x_0")
    return plan


@pytest.mark.parametrize("num_steps, prediction, clip, spacing", [
    (None, "epsilon", None, None),              # all T steps on the training schedule
    (8, "epsilon", None, "leading"),             # respaced: the respaced betas' logs
    (13, "v_prediction", (-1.0, 1.0), "trailing"),
    (5, "sample", None, "linspace"),
])
def test_ddpm_learned_variance_trajectory_equals_reference(num_steps, prediction, clip, spacing):
    plan = _run_both("ddpm", num_steps=num_steps, prediction=prediction, clip=clip, spacing=spacing)
    assert set(plan.step_kinds) == {"learned_variance_step"}


@pytest.mark.parametrize("sampler, kwargs", [
    ("ddim", dict(num_steps=10)),
    ("ddim", dict(num_steps=10, eta=1.0, clip=(-1.0, 1.0))),
    ("dpm_solver++", dict(num_steps=8, prediction="v_prediction")),
])
def test_ddim_and_dpm_solver_use_the_mean_part_as_the_reference(sampler, kwargs):
    _run_both(sampler, **kwargs)


def test_guided_learned_variance_equals_reference_guided():
    y = np.array([0, 2, 1])
    guided = reference.guided(numpy_model, y, 3, 2.5)
    _run_both("ddpm", numpy_fn=guided, num_steps=10, y=torch.tensor(y), guidance_scale=2.5)


def test_float32_learned_sampling_tracks_the_float64_reference():
    model = TorchModel()
    got = ddpm.sample(model, SHAPE, SCHEDULE, sampler="ddpm", num_steps=10, variance="learned", seed=3)
    plan = reference.sampling_plan(SCHEDULE, "ddpm", 10, variance="learned")
    expected = sample_plan(numpy_model, SHAPE, plan, 3)
    assert got.dtype == torch.float32
    assert_close(got, expected, atol=1e-5, rtol=1e-5, name="float32 x_0")


def test_fast_sampler_runs_the_learned_plan_as_ddpm_sample():
    model = TorchModel()
    fast = FastSampler(model, SCHEDULE, image_shape=SHAPE[1:], sampler="ddpm", num_steps=6,
                       variance="learned", dtype=torch.float64)
    got = fast(3, seed=5)
    want = ddpm.sample(model, SHAPE, SCHEDULE, sampler="ddpm", num_steps=6, variance="learned", seed=5,
                       dtype=torch.float64)
    assert fast.stochastic and torch.equal(got, want)


class FixedVarianceModel(nn.Module):
    def forward(self, x, t):
        return 0.5 * x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++"])
def test_learned_variance_asked_of_a_model_without_the_extra_channels(sampler):
    with pytest.raises(ValueError, match=r"model output must have shape \(3, 4, 4, 4\) for variance='learned'"):
        ddpm.sample(FixedVarianceModel(), SHAPE, SCHEDULE, sampler=sampler, num_steps=4, variance="learned")


def test_a_variance_half_without_variance_learned_is_named():
    with pytest.raises(ValueError, match="pass variance='learned'"):
        ddpm.sample(TorchModel(), SHAPE, SCHEDULE, sampler="ddpm", num_steps=4)


def test_unknown_variance_is_rejected():
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm.sample(TorchModel(), SHAPE, SCHEDULE, sampler="ddpm", variance="learned_range")
