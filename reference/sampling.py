"""Full sampling loops for any model callable, built from the update rules of `process`.

A model is a callable `model(x_t, t) -> output` with x_t (N, ...) and t an (N,) int64 array;
`guided(model, y, null_class, guidance_scale)` makes one from a class-conditional
`model(x_t, t, y)`. All Gaussian numbers come from the noise stream (DESIGN contract 2):
x_T uses stream SAMPLER_INIT_STREAM and step k (0-based) uses stream k + 1, for the global
sample indices `samples`, so sample i is the same whatever the batch it is drawn in.

Every loop is `sample_plan`: the timesteps, coefficients and noise streams come from
`reference.sampling_plan`, the same plan `ddpm.Sampler` executes in torch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._validate import check_float_array, check_samples
from .langevin_step import langevin_snr_coefficients, langevin_step
from .learned_variance_step import learned_variance_step, split_learned_output
from .classifier_guidance import check_classifier_guidance, guidance_rows
from .noise import SAMPLER_INIT_STREAM, normal
from .process import classifier_free_guidance, dpm_solver_pp_2m_update, sampler_step
from .sampling_plan import NO_NOISE, SamplingPlan, sampling_plan
from .schedules import Schedule, check_schedule
from .score import check_process_schedule

__all__ = ["guided", "sample_plan", "READS_VARIANCE", "sample_ddpm", "sample_ddim", "sample_dpm_solver_pp",
           "initial_noise", "STEP_RULES", "sample_score"]

Model = Callable[[np.ndarray, np.ndarray], np.ndarray]


def guided(model, y, null_class: int, guidance_scale: float) -> Model:
    """Classifier-free guidance (Ho & Salimans 2022): out = u + w (c - u) for labels y."""
    y = np.asarray(y, dtype=np.int64)

    def fn(x, t):
        if guidance_scale == 1.0:
            return model(x, t, y)
        cond = model(x, t, y)
        uncond = model(x, t, np.full_like(y, null_class))
        return classifier_free_guidance(cond, uncond, guidance_scale)

    return fn


def _start(model, shape, schedule, seed, samples, x_T, dtype):
    """Validate a sampling loop's arguments; returns (shape, samples, x_T)."""
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t), got {type(model).__name__}")
    check_process_schedule(schedule)  # VP (reference.Schedule) or VE (reference.VESchedule)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a tuple of ints (N, ...), got {shape!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (N, ...) with every size >= 1, got {shape}")
    s = check_samples(samples, shape[0])
    if x_T is None:
        return shape, s, initial_noise(shape, seed, s, dtype)
    x_T = check_float_array(x_T, "x_T")
    if x_T.shape != shape:
        raise ValueError(f"x_T must have shape {shape}, got {x_T.shape}")
    return shape, s, x_T.astype(dtype)


def initial_noise(shape, seed: int, samples=None, dtype=np.float64) -> np.ndarray:
    """x_T ~ N(0, I) from the noise stream (stream SAMPLER_INIT_STREAM)."""
    shape = tuple(int(d) for d in shape)
    s = check_samples(samples, shape[0])
    return normal(seed, s, SAMPLER_INIT_STREAM, shape[1:]).astype(dtype)


def _sampler_step_rule(x, model_output, coefficients, noise, clip, carry):
    """DDPM Alg. 2 / DDIM Eq. 12 as one elementwise rule (`sampler_step`); carries nothing."""
    return sampler_step(x, model_output, coefficients, noise, clip), carry


def _dpm_solver_pp_2m_rule(x, model_output, coefficients, noise, clip, x0_last):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2); carries the step's x0_hat to the next step."""
    return dpm_solver_pp_2m_update(x, model_output, coefficients, x0_last, clip)


def _learned_variance_rule(x, model_output, coefficients, noise, clip, carry):
    """DDPM Alg. 2 with the model's per-element variance (Improved DDPM Eq. 15); reads all 2C
    output channels (`learned_variance_step`)."""
    return learned_variance_step(x, model_output, coefficients, noise, clip), carry


def _guided_sampler_step_rule(x, model_output, coefficients, noise, clip, carry, grad, grad_row):
    """`_sampler_step_rule` with classifier guidance (Dhariwal & Nichol 2021, Alg. 1 / Alg. 2)."""
    return sampler_step(x, model_output, coefficients, noise, clip, classifier_grad=grad,
                        classifier_coefficients=grad_row), carry


def _guided_dpm_solver_pp_2m_rule(x, model_output, coefficients, noise, clip, x0_last, grad, grad_row):
    """`_dpm_solver_pp_2m_rule` with classifier guidance (Alg. 2's eps shift, as an x0_hat shift)."""
    return dpm_solver_pp_2m_update(x, model_output, coefficients, x0_last, clip, classifier_grad=grad,
                                   classifier_coefficients=grad_row)


def _guided_learned_variance_rule(x, model_output, coefficients, noise, clip, carry, grad, grad_row):
    """`_learned_variance_rule` with classifier guidance (Alg. 1, Sigma the model's per-element
    variance of Improved DDPM Eq. 15)."""
    return learned_variance_step(x, model_output, coefficients, noise, clip, classifier_grad=grad,
                                 classifier_coefficients=grad_row), carry


# the kinds with a classifier-guidance term (reference.classifier_guidance.GUIDED_STEP_KINDS):
# rule(..., carry, grad, grad_row) with grad_row (N, 3) = the step's columns times the scales
GUIDED_STEP_RULES = {"sampler_step": _guided_sampler_step_rule,
                     "dpm_solver_pp_2m": _guided_dpm_solver_pp_2m_rule,
                     "learned_variance_step": _guided_learned_variance_rule}

def _langevin_rule(x, model_output, coefficients, noise, clip, carry):
    """A score-sampler step (`langevin_step`): Langevin, annealed Langevin, a predictor or the
    denoising step; a row with snr > 0 is the corrector, its step from the snr rule per sample."""
    if coefficients[4] > 0:
        return langevin_step(x, model_output, langevin_snr_coefficients(coefficients, model_output, noise),
                             noise), carry
    return langevin_step(x, model_output, coefficients[:4], noise), carry


# step kind -> rule(x, model_output, coefficients, noise, clip, carry) -> (x_next, carry);
# a new sampler whose update is none of these adds a kind here, not a loop
STEP_RULES = {"sampler_step": _sampler_step_rule, "dpm_solver_pp_2m": _dpm_solver_pp_2m_rule,
              "learned_variance_step": _learned_variance_rule, "langevin_step": _langevin_rule}
# the kinds that read the model's whole 2C-channel output under variance="learned"; the others
# read its mean part (the first C channels)
READS_VARIANCE = ("learned_variance_step",)


def _model_output_for_step(out, shape, plan: SamplingPlan, k: int):
    """The part of the model output step k reads: all of it, or the mean part (the first C of
    2C channels) under variance="learned" for the kinds that do not read v."""
    out = np.asarray(out)
    if plan.learned_variance:
        mean_part, _ = split_learned_output(out, shape[1], "model output")
        return out if plan.step_kinds[k] in READS_VARIANCE else mean_part
    if out.shape[0] == shape[0] and out.shape[2:] == tuple(shape[2:]) and out.shape[1:2] == (2 * shape[1],):
        raise ValueError(f"model output has 2 x {shape[1]} channels (shape {out.shape}, a learned-"
                         f"variance model?) but the plan's variance is {plan.variance!r}: pass "
                         "variance='learned' to use its v, or a model with x's channels")
    return out


def sample_plan(model: Model, shape, plan: SamplingPlan, seed: int, samples=None, *, x_T=None,
                dtype=np.float64, callback=None, classifier=None, classifier_scale=1.0,
                y=None) -> np.ndarray:
    """Run `plan` (from `sampling_plan`): one model call and one update per step.

    model(x_t, t) -> output of x_t's shape (N, ...), t (N,) int64; shape (N, ...); seed and the
    (N,) global `samples` pick the noise (x_T from stream SAMPLER_INIT_STREAM unless given, step
    k's z from plan.noise_streams[k]). Returns x_0, (N, ...) in `dtype`; callback(k, t, x) is
    called after every step. With plan.learned_variance the model returns (N, 2C, ...): ddpm
    steps read all of it, the others its first C channels.

    Classifier guidance (Dhariwal & Nichol 2021; reference.classifier_guidance): a classifier
    with `.config` (its UNetConfig) and `.log_prob_gradient(x, t, y)` -> (log p, grad_x log p)
    (a reference.Classifier), the classes `y` ((N,) or one id) and `classifier_scale` s (a
    number or (N,)); each step adds s times its gradient term at x_t, after the model call.
    """
    if not isinstance(plan, SamplingPlan):
        raise TypeError(f"plan must be a reference.SamplingPlan (from sampling_plan), got {type(plan).__name__}")
    shape, s, x = _start(model, shape, plan.schedule, seed, samples, x_T, dtype)
    rows = None
    if classifier is not None:
        y, scale = check_classifier_guidance(classifier.config, shape, y, classifier_scale)
        rows = guidance_rows(plan, scale)  # (K, N, 3)
    elif y is not None:
        raise ValueError("y is the class of classifier guidance: pass classifier= with it (the model's "
                         "own labels go into the model, e.g. reference.guided)")
    if x_T is None and plan.init_scale != 1.0:  # VE prior N(0, sigma_max^2 I) (score plans)
        x = (plan.init_scale * x.astype(np.float64)).astype(dtype)
    carry = None  # what one step hands the next (DPM-Solver++: x0_hat)
    for k, t in enumerate(plan.timesteps):
        t_batch = np.full(shape[0], t, dtype=np.int64)
        out = model(x, t_batch)
        out = _model_output_for_step(out, shape, plan, k)
        stream = int(plan.noise_streams[k])
        noise = None if stream == NO_NOISE else normal(seed, s, stream, shape[1:]).astype(dtype)
        if rows is None:
            rule = STEP_RULES[plan.step_kinds[k]]
            x, carry = rule(x, out, plan.coefficients[k], noise, plan.clip, carry)
        else:
            _, grad = classifier.log_prob_gradient(x, t_batch, y)  # at x_t, the model's t
            rule = GUIDED_STEP_RULES[plan.step_kinds[k]]
            x, carry = rule(x, out, plan.coefficients[k], noise, plan.clip, carry, grad, rows[k])
        x = x.astype(dtype, copy=False)  # a float64 model output would promote a float32 run
        if callback is not None:
            callback(k, int(t), x)
    return x


def sample_ddpm(model: Model, shape, schedule: Schedule, seed: int, samples=None, *,
                x_T=None, num_steps: int | None = None, spacing: str | None = None,
                prediction: str = "epsilon", variance: str = "fixed_small", clip=None,
                dtype=np.float64, callback=None, classifier=None, classifier_scale=1.0, y=None):
    """Ancestral sampling, DDPM Alg. 2; with num_steps < T on the respaced schedule (Improved DDPM Sec. 4).
    classifier / classifier_scale / y: classifier guidance (Alg. 1 of Dhariwal & Nichol 2021;
    the other loops: Alg. 2), see `sample_plan`.

    num_steps None: all T; spacing None: "leading" (see `sampling_plan`). Returns x_0 of the
    given shape. callback(step, t, x) is called after every step.
    """
    plan = sampling_plan(schedule, "ddpm", num_steps, spacing, prediction=prediction,
                         variance=variance, clip=clip)
    return sample_plan(model, shape, plan, seed, samples, x_T=x_T, dtype=dtype, callback=callback,
                       classifier=classifier, classifier_scale=classifier_scale, y=y)


def sample_ddim(model: Model, shape, schedule: Schedule, seed: int, samples=None, *,
                num_steps: int | None = None, eta: float = 0.0, spacing: str | None = None,
                x_T=None, prediction: str = "epsilon", clip=None, dtype=np.float64, callback=None,
                classifier=None, classifier_scale=1.0, y=None):
    """DDIM sampling over a descending timestep subset (Song et al. 2021, Eq. 12).

    num_steps None: min(50, T); spacing None: "leading" (see `sampling_plan`)."""
    plan = sampling_plan(schedule, "ddim", num_steps, spacing, eta, prediction, clip=clip)
    return sample_plan(model, shape, plan, seed, samples, x_T=x_T, dtype=dtype, callback=callback,
                       classifier=classifier, classifier_scale=classifier_scale, y=y)


def sample_dpm_solver_pp(model: Model, shape, schedule: Schedule, seed: int, samples=None, *,
                         num_steps: int | None = None, spacing: str | None = None, x_T=None,
                         prediction: str = "epsilon", clip=None, dtype=np.float64, callback=None,
                         classifier=None, classifier_scale=1.0, y=None):
    """DPM-Solver++(2M) sampling (Lu et al. 2022, Alg. 2), first order at the first and last step.

    num_steps None: min(20, T). Default spacing "trailing": with "leading"/"linspace" the last
    second-order step goes into t = 0 over a log-SNR step ~10x the previous one and its
    extrapolation costs quality."""
    plan = sampling_plan(schedule, "dpm_solver++", num_steps, spacing, prediction=prediction, clip=clip)
    return sample_plan(model, shape, plan, seed, samples, x_T=x_T, dtype=dtype, callback=callback,
                       classifier=classifier, classifier_scale=classifier_scale, y=y)


def sample_score(model: Model, shape, schedule, sampler: str, seed: int, samples=None, *,
                 num_steps: int | None = None, spacing: str | None = None, x_T=None,
                 dtype=np.float64, callback=None, **options):
    """The score samplers "langevin", "annealed_langevin", "pc" (reference/score_plan.py) over a
    VP `reference.Schedule` (a DDPM eps-model) or a VE `reference.VESchedule` (a score model
    predicting z, score = -out / sigma_t); options: step_size, level, steps_per_level, snr,
    corrector_steps, predictor, denoise (see `reference.score_sampling_plan`)."""
    plan = sampling_plan(schedule, sampler, num_steps, spacing, **options)
    return sample_plan(model, shape, plan, seed, samples, x_T=x_T, dtype=dtype, callback=callback)
