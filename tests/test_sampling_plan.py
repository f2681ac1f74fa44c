"""reference.sampling_plan: the timesteps, coefficient rows and noise streams of every sampler.

The plan must hold exactly what each sampler computed for itself before it existed (the
timesteps of `timestep_subset`, the rows of ddpm/ddim/dpm_solver_pp_coefficients as the single
steps compute them), its defaults, and reject bad input naming the argument. Also: the two
`check_clip`s (reference/_validate.py and kernels/validate.py, which may not import reference)
accept and reject the same values.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from reference import sampling_plan
from reference.noise import sampler_step_stream
from reference.sampling_plan import DEFAULT_NUM_STEPS, DEFAULT_SPACING, NO_NOISE

T = 40


def _schedule(kind="linear", T=T):
    return reference.make_schedule(kind, T)


# ----------------------------------------------------------------------------- what each sampler used

@pytest.mark.parametrize("prediction", reference.PREDICTIONS)
@pytest.mark.parametrize("variance", reference.VARIANCES)
@pytest.mark.parametrize("num_steps, spacing", [(None, None), (T, "trailing"), (9, "leading"), (7, "linspace")])
def test_ddpm_plan_is_the_ancestral_step_per_timestep(prediction, variance, num_steps, spacing):
    """DDPM Alg. 2 at every t, or on the respaced schedule of Improved DDPM Sec. 4; step k is
    index K-1-k of the (ascending) step schedule, as reference.ddpm_step is called."""
    s = _schedule("cosine")
    plan = sampling_plan(s, "ddpm", num_steps, spacing, prediction=prediction, variance=variance)
    K = T if num_steps is None else num_steps
    full = K == T
    timesteps = np.arange(T - 1, -1, -1) if full else reference.timestep_subset(T, K, spacing)
    step_schedule = s if full else s.respace(timesteps)
    assert plan.timesteps.dtype == np.int64 and np.array_equal(plan.timesteps, timesteps)
    assert np.array_equal(plan.timesteps_prev, np.append(timesteps[1:], -1))
    assert plan.step_kinds == ("sampler_step",) * K
    assert plan.coefficient_names == reference.STEP_COEFFICIENTS
    for k in range(K):
        row = reference.ddpm_coefficients(step_schedule, K - 1 - k, prediction, variance)[0]
        assert np.array_equal(plan.coefficients[k], row), k
    # every step but the last (sigma_0 = 0) draws z from stream k + 1
    want = [sampler_step_stream(k) for k in range(K - 1)] + [NO_NOISE]
    assert plan.noise_streams.tolist() == want and plan.needs_noise


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("spacing", reference.SPACINGS)
@pytest.mark.parametrize("prediction", reference.PREDICTIONS)
def test_ddim_plan_is_one_ddim_step_per_timestep(eta, spacing, prediction):
    s = _schedule()
    plan = sampling_plan(s, "ddim", 11, spacing, eta, prediction)
    timesteps = reference.timestep_subset(T, 11, spacing)
    assert np.array_equal(plan.timesteps, timesteps)
    for k, t in enumerate(timesteps):
        t_prev = int(timesteps[k + 1]) if k + 1 < len(timesteps) else -1
        row = reference.ddim_coefficients(s, int(t), t_prev, eta, prediction)[0]
        assert np.array_equal(plan.coefficients[k], row), k
    # with eta > 0 every step but the last (into alpha_bar_prev = 1, sigma = 0) draws z
    want = [sampler_step_stream(k) if eta > 0 and k < 10 else NO_NOISE for k in range(11)]
    assert plan.noise_streams.tolist() == want
    assert plan.needs_noise == (eta > 0)


@pytest.mark.parametrize("num_steps", [1, 2, 9])
@pytest.mark.parametrize("spacing", reference.SPACINGS)
def test_dpm_solver_pp_plan_is_the_2m_step_with_its_history(num_steps, spacing):
    s = _schedule("cosine")
    plan = sampling_plan(s, "dpm_solver++", num_steps, spacing, prediction="v_prediction")
    timesteps = reference.timestep_subset(T, num_steps, spacing)
    assert np.array_equal(plan.timesteps, timesteps)
    assert plan.step_kinds == ("dpm_solver_pp_2m",) * num_steps
    assert plan.coefficient_names == reference.DPM_SOLVER_COEFFICIENTS
    for k, t in enumerate(timesteps):
        t_prev = int(timesteps[k + 1]) if k + 1 < num_steps else -1
        t_last = int(timesteps[k - 1]) if k > 0 else -1
        row = reference.dpm_solver_pp_coefficients(s, int(t), t_prev, t_last, "v_prediction")[0]
        assert np.array_equal(plan.coefficients[k], row), k
    # first order at the first and the last step (Lu et al. 2022, Alg. 2)
    second = plan.coefficients[:, reference.DPM_SOLVER_COEFFICIENTS.index("second_order")]
    assert second.tolist() == [0.0] + [1.0] * (num_steps - 2) + [0.0] * (num_steps > 1)
    assert not plan.needs_noise and np.all(plan.noise_streams == NO_NOISE)


def test_sample_plan_is_what_the_named_loops_run():
    s = _schedule()
    model = lambda x, t: 0.8 * np.tanh(x + t[:, None] / T)  # noqa: E731
    for name, fn, kwargs in (("ddpm", reference.sample_ddpm, dict(num_steps=8)),
                             ("ddim", reference.sample_ddim, dict(num_steps=8, eta=0.5)),
                             ("dpm_solver++", reference.sample_dpm_solver_pp, dict(num_steps=8))):
        plan = sampling_plan(s, name, clip=(-1, 1), **kwargs)
        got = reference.sample_plan(model, (4, 3), plan, 9, samples=[3, 1, 4, 1])
        want = fn(model, (4, 3), s, 9, samples=[3, 1, 4, 1], clip=(-1, 1), **kwargs)
        assert np.array_equal(got, want), name


# ----------------------------------------------------------------------------- defaults

def test_defaults_per_sampler():
    s = _schedule(T=1000)
    assert sampling_plan(s, "ddpm").num_steps == 1000
    assert sampling_plan(s, "ddim").num_steps == DEFAULT_NUM_STEPS["ddim"] == 50
    assert sampling_plan(s, "dpm_solver++").num_steps == DEFAULT_NUM_STEPS["dpm_solver++"] == 20
    for name in reference.SAMPLERS:
        plan = sampling_plan(s, name, num_steps=7)
        assert plan.spacing == DEFAULT_SPACING[name]
        assert np.array_equal(plan.timesteps, reference.timestep_subset(1000, 7, plan.spacing))
    assert DEFAULT_SPACING == {"ddpm": "leading", "ddim": "leading", "dpm_solver++": "trailing"}
    # capped at T for short schedules
    small = _schedule(T=12)
    assert [reference.default_num_steps(n, 12) for n in reference.SAMPLERS] == [12, 12, 12]
    assert sampling_plan(small, "ddim").num_steps == 12


def test_plan_is_read_only_and_keeps_its_options():
    plan = sampling_plan(_schedule(), "ddim", 5, "trailing", 0.5, "sample", clip=(-2, 2))
    assert (plan.sampler, plan.spacing, plan.eta, plan.prediction, plan.clip) == (
        "ddim", "trailing", 0.5, "sample", (-2.0, 2.0))
    for name in ("timesteps", "timesteps_prev", "coefficients", "noise_streams"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(plan, name)[0] = 0
    with pytest.raises(AttributeError):
        plan.eta = 0.1
    assert "ddim" in repr(plan) and "num_steps=5" in repr(plan)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(schedule=np.linspace(1e-4, 0.02, T)), TypeError, "schedule must be a reference Schedule"),
    (dict(sampler="euler"), ValueError, r"sampler must be one of .* got 'euler'"),
    (dict(num_steps=0), ValueError, r"num_steps must lie in \[1, T=40\], got 0"),
    (dict(num_steps=T + 1), ValueError, r"num_steps must lie in \[1, T=40\], got 41"),
    (dict(num_steps=2.5), TypeError, "num_steps must be an int or None, got float"),
    (dict(num_steps=True), TypeError, "num_steps must be an int or None, got bool"),
    (dict(spacing="even"), ValueError, r"spacing must be one of .* got 'even'"),
    (dict(eta=-0.5), ValueError, r"eta must lie in \[0, 1\], got -0.5"),
    (dict(eta="1"), TypeError, "eta must be a number"),
    (dict(sampler="ddpm", eta=0.5), ValueError, "eta applies to the ddim sampler only"),
    (dict(sampler="dpm_solver++", eta=0.5), ValueError, "eta applies to the ddim sampler only"),
    (dict(prediction="x0"), ValueError, r"prediction must be one of .* got 'x0'"),
    (dict(variance="learned_range"), ValueError, r"variance must be one of .* got 'learned_range'"),
    (dict(clip=(1, -1)), ValueError, "clip must satisfy lo < hi"),
    (dict(clip=3.0), TypeError, "clip must be None or a pair"),
])
def test_bad_input_is_a_clear_error_naming_the_argument(kwargs, error, match):
    args = dict(schedule=_schedule(), sampler="ddim") | kwargs
    with pytest.raises(error, match=match):
        sampling_plan(**args)


def test_sample_plan_needs_a_plan():
    with pytest.raises(TypeError, match="plan must be a reference.SamplingPlan"):
        reference.sample_plan(lambda x, t: x, (2, 2), "ddim", 0)


# ----------------------------------------------------------------------------- one check_clip

CLIPS = [None, (-1, 1), [0.0, 0.5], (np.float32(-2), np.int64(3)), (1, 1), (2, -2), (0, np.inf),
         (np.nan, 1), (1,), (1, 2, 3), "ab", 3.0, ("a", 1)]


@pytest.mark.parametrize("clip", CLIPS, ids=repr)
def test_reference_and_kernels_check_clip_agree(clip):
    """kernels may not import reference (DESIGN), so kernels/validate.py keeps its own
    check_clip; both must accept the same pairs (with the same result) and raise the same error."""
    from kernels.validate import check_clip as kernels_check_clip
    from reference._validate import check_clip as reference_check_clip

    outcomes = []
    for check in (reference_check_clip, kernels_check_clip):
        try:
            outcomes.append(("ok", check(clip)))
        except (TypeError, ValueError) as error:
            outcomes.append((type(error), str(error)))
    assert outcomes[0] == outcomes[1]
