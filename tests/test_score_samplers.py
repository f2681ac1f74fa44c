"""The score samplers in torch (ddpm.sample) against the reference loops, VP and VE.

The model is one deterministic function written twice (tests/test_samplers_torch.py), so in
float64 every intermediate x (through the callback, after every step) must agree to 1e-10
(snr corrector: norms summed in another order, ~1e-15 relative). Also: batch invariance with
per-sample snr norms, the model-evaluation counts, and the errors named in issue 13.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from tests.helpers import assert_close
from tests.test_samplers_torch import UnconditionalModel, numpy_model

VP = reference.make_schedule("linear", 40)
VE = reference.ve_schedule(8.0, 0.02, 40)
SHAPE = (3, 2, 4, 4)
CASES = [
    ("langevin", {"step_size": 1e-3, "level": 3}, 6),
    ("annealed_langevin", {"step_size": 1e-2, "steps_per_level": 3}, 4),
    ("pc", {"snr": 0.16, "corrector_steps": 2}, 5),
    ("pc", {"predictor": "ancestral", "corrector_steps": 1}, 4),
    ("pc", {"predictor": "reverse_diffusion", "corrector_steps": 0, "denoise": False}, 6),
    ("pc", {"snr_norms": "batch", "corrector_steps": 1}, 4),
]


def run_both(schedule, sampler, options, num_steps, samples=None, n=SHAPE[0]):
    shape = (n,) + SHAPE[1:]
    ref_xs, torch_xs = [], []
    ref = reference.sample_score(lambda x, t: numpy_model(x, t), shape, schedule, sampler, 5, samples,
                                 num_steps=num_steps, callback=lambda k, t, x: ref_xs.append(x.copy()), **options)
    got = ddpm.sample(UnconditionalModel(), shape, schedule, sampler=sampler, num_steps=num_steps, seed=5,
                      samples=samples, dtype=torch.float64, backend="torch",
                      callback=lambda k, t, x: torch_xs.append(x.clone()), **options)
    return ref, got, ref_xs, torch_xs


@pytest.mark.parametrize("schedule", [VP, VE], ids=["vp", "ve"])
@pytest.mark.parametrize("sampler, options, num_steps", CASES)
def test_torch_trajectory_equals_reference_every_step(schedule, sampler, options, num_steps):
    ref, got, ref_xs, torch_xs = run_both(schedule, sampler, options, num_steps)
    plan = reference.sampling_plan(schedule, sampler, num_steps, **options)
    assert len(ref_xs) == len(torch_xs) == plan.num_steps
    for k, (a, b) in enumerate(zip(torch_xs, ref_xs)):
        assert_close(a, b, atol=1e-10, rtol=1e-10, name=f"step {k} ({plan.step_kinds[k]})")
    assert np.all(np.isfinite(ref))


def test_pc_with_snr_is_batch_invariant():
    """Per-sample snr norms: sample 4 drawn alone equals sample 4 in a batch of 5."""
    _, batch, _, _ = run_both(VE, "pc", {"corrector_steps": 2}, 4, samples=range(5), n=5)
    _, alone, _, _ = run_both(VE, "pc", {"corrector_steps": 2}, 4, samples=[4], n=1)
    assert_close(alone[0], batch[4], atol=1e-12, rtol=1e-12, name="sample 4")


def test_model_evaluations_per_sampler():
    assert reference.sampling_plan(VE, "annealed_langevin", 4, steps_per_level=3).num_steps == 4 * 3 + 1
    assert reference.sampling_plan(VE, "pc", 5, corrector_steps=2).num_steps == 5 * 3
    assert reference.sampling_plan(VP, "langevin", 7, denoise=False).num_steps == 7
    plan = reference.sampling_plan(VE, "pc", 5)
    assert plan.init_scale == pytest.approx(8.0) and plan.timesteps[0] == VE.T - 1
    assert plan.coefficients[-1, 3] == 0  # the last predictor step returns the mean (denoise)


@pytest.mark.parametrize("call, match", [
    (lambda: reference.VESchedule.from_sigmas([1.0, 1.0, 0.1]), "strictly decreasing"),
    (lambda: reference.VESchedule.from_sigmas([0.1, 0.5, 1.0]), "strictly decreasing"),
    (lambda: reference.ve_schedule(0.1, 1.0, 10), "sigma_max must be > sigma_min"),
    (lambda: reference.sampling_plan(VE, "langevin", 3, step_size=0.0), "step_size must be a positive"),
    (lambda: reference.sampling_plan(VE, "annealed_langevin", 3, step_size=-1e-3), "step_size"),
    (lambda: reference.sampling_plan(VE, "pc", 3, snr=0.0), "snr must be a positive"),
    (lambda: reference.sampling_plan(VP, "pc", 3, snr=-0.1), "snr"),
    (lambda: reference.sampling_plan(VE, "annealed_langevin", 3, steps_per_level=0), "steps_per_level"),
    (lambda: reference.sampling_plan(VE, "ddim", 3), "VE schedule"),
    (lambda: reference.sampling_plan(VE, "ddpm"), "use sampler 'langevin'"),
    (lambda: reference.sampling_plan(VP, "ddim", 3, snr=0.1), "snr apply to the score samplers"),
    (lambda: reference.sampling_plan(VE, "langevin", 3, snr=0.1), "takes"),
    (lambda: reference.sampling_plan(VE, "pc", 3, predictor="euler"), "predictor must be one of"),
    (lambda: reference.sampling_plan(VP, "pc", 3, prediction="v_prediction"), "prediction='epsilon'"),
    (lambda: reference.sampling_plan(VP, "pc", 3, clip=(-1, 1)), "clip applies"),
    (lambda: ddpm.sample(UnconditionalModel(), SHAPE, VE, sampler="ddim", num_steps=3), "VE schedule"),
])
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
