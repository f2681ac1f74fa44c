"""The DDPM ancestral step with a learned variance (Nichol & Dhariwal 2021, Sec. 3.1, Eq. 15).

The model outputs 2C channels on axis 1: the first C are its eps/x0/v prediction (the mean
part, as for a fixed-variance model), the last C are v, which interpolates the log-variance
per element between the two fixed choices of DDPM:

    log sigma^2 = frac log beta_t + (1 - frac) log beta_tilde_t,   frac = (v + 1) / 2   (Eq. 15)

with beta_tilde's log at t = 0 taken as its t = 1 value (beta_tilde_0 = 0; improved-diffusion's
`posterior_log_variance_clipped`, our `Schedule.posterior_log_variance_clipped`). The step is one
elementwise rule with per-sample float64 coefficients, which is also the specification of the
fused kernel `kernels.learned_variance_step`:

    x0_hat  = c0 x_t + c1 out ;  eps_hat = c2 x_t + c3 out     (out: the first C channels)
    x0_hat  = clip(x0_hat)                                     (optional)
    mean    = c4 x0_hat + c5 x_t + c6 eps_hat                  (posterior mean, DDPM Eq. 7)
    frac    = (v + 1) / 2                                      (v: the last C channels)
    x_prev  = mean + exp(0.5 (frac c7 + (1 - frac) c8)) z      (only where c9 != 0, i.e. t > 0)

Classifier guidance (Dhariwal & Nichol 2021, Alg. 1: the mean shifted by s Sigma g, g = grad_x
log p_phi(y | x_t, t)) with Sigma the model's own per-element variance, Sigma = exp(log sigma^2)
of Eq. 15: with (a0, a1, a2) per sample (reference.classifier_guidance, scale included),

    x0_hat += a0 g ;  eps_hat += a1 g                          (before clipping)
    mean   += a2 Sigma g                                       (before the noise term)

The ddpm plan's rows are (0, 0, s c9): Sigma is the step's variance, 0 into x_0 as for the fixed
variances here (guided-diffusion's code also shifts that last mean, by the model's variance at
t = 0, which is of the order of beta_0 = 1e-4).

Columns LEARNED_VARIANCE_COEFFICIENTS: c0..c6 are `ddpm_coefficients`' mean columns, c7 = log
beta_t, c8 = log beta_tilde_t (clipped), c9 = 1 where the step draws z (t > 0). Respaced runs
pass the respaced schedule (its betas recomputed from the kept alpha_bar, Improved DDPM
Sec. 4) and the respaced index, so c7 and c8 are the respaced betas' logs.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_clip, check_float_array, check_same_shape, check_timesteps, per_sample, result_dtype
from .process import STEP_COEFFICIENTS, classifier_term, ddpm_coefficients
from .schedules import Schedule, check_schedule
from .variational import log_variance_bounds

__all__ = ["LEARNED_VARIANCE", "LEARNED_VARIANCE_COEFFICIENTS", "learned_variance_coefficients",
           "learned_variance_step", "split_learned_output", "ddpm_learned_step"]

LEARNED_VARIANCE = "learned"  # the variance option that selects this step
LEARNED_VARIANCE_COEFFICIENTS = STEP_COEFFICIENTS[:7] + ("log_beta", "log_beta_tilde", "has_noise")
_MEAN_COLUMNS = 7


def learned_variance_coefficients(schedule: Schedule, t, prediction: str = "epsilon") -> np.ndarray:
    """(N, 10) float64 rows of `learned_variance_step` for steps t -> t-1 on `schedule`.

    The log-variance columns are the two ends of `reference.learned_log_variance`
    (`reference.log_variance_bounds`): log beta_t (v = +1) and the clipped log beta_tilde_t
    (v = -1); the step interpolates between them linearly in v, as Eq. 15 does.
    """
    schedule = check_schedule(schedule)
    t = np.atleast_1d(schedule.check_t(t))
    mean = ddpm_coefficients(schedule, t, prediction, "fixed_small")[:, :_MEAN_COLUMNS]
    log_beta_tilde, log_beta = log_variance_bounds(t, schedule)
    has_noise = (t > 0).astype(np.float64)  # DDPM Alg. 2: no z into x_0
    return np.concatenate([mean, np.stack([log_beta, log_beta_tilde, has_noise], axis=-1)], axis=-1)


def split_learned_output(model_output: np.ndarray, channels: int, name: str = "model_output"):
    """(mean part, v): the first and last `channels` channels of a 2 x channels model output.

    A model output without the extra channels is a ValueError naming the argument.
    """
    if model_output.ndim < 2 or model_output.shape[1] != 2 * channels:
        raise ValueError(f"{name} must have 2 x {channels} = {2 * channels} channels on axis 1 "
                         f"for variance='learned' (the mean part, then v), got shape "
                         f"{model_output.shape}: is the model's output channels 2 x image channels?")
    return model_output[:, :channels], model_output[:, channels:]


def learned_variance_step(x_t: np.ndarray, model_output: np.ndarray, coefficients: np.ndarray,
                          noise: np.ndarray | None = None, clip=None, *,
                          classifier_grad: np.ndarray | None = None,
                          classifier_coefficients=None) -> np.ndarray:
    """The elementwise learned-variance update (module docstring): x_t (N, C, ...), model_output
    (N, 2C, ...), coefficients (10,) or (N, 10) float64, noise (N, C, ...) needed where c9 != 0.
    classifier_grad (N, C, ...) with classifier_coefficients (3,) or (N, 3) (a0, a1, a2): the
    guidance term of the module docstring (a2 multiplies Sigma g, Sigma per element).

    Computed in float64 (float32 when every array is float32, rounded once at the end).
    """
    x_t = check_float_array(x_t, "x_t")
    model_output = check_float_array(model_output, "model_output")
    if x_t.ndim < 2:
        raise ValueError(f"x_t must be (N, C, ...), got shape {x_t.shape}")
    out, v = split_learned_output(model_output, x_t.shape[1])
    check_same_shape(x_t, out, "x_t", "model_output[:, :C]")
    clip = check_clip(clip)
    width = len(LEARNED_VARIANCE_COEFFICIENTS)
    c = np.asarray(coefficients, dtype=np.float64)
    if c.shape == (width,):
        c = np.broadcast_to(c, (x_t.shape[0], width))
    if c.shape != (x_t.shape[0], width):
        raise ValueError(f"coefficients must have shape ({width},) or ({x_t.shape[0]}, {width}), got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("coefficients contain NaN or inf")
    dtype = result_dtype(x_t, model_output, *([noise] if isinstance(noise, np.ndarray) else []))
    col = [per_sample(c[:, k], x_t.ndim) for k in range(width)]
    grad, a = classifier_term(x_t, classifier_grad, classifier_coefficients)
    x0 = col[0] * x_t + col[1] * out
    eps = col[2] * x_t + col[3] * out
    if grad is not None:
        x0 = x0 + a[0] * grad
        eps = eps + a[1] * grad
    if clip is not None:
        x0 = np.clip(x0, clip[0], clip[1])
    x_prev = col[4] * x0 + col[5] * x_t + col[6] * eps
    frac = (v.astype(np.float64) + 1.0) / 2.0
    log_variance = frac * col[7] + (1.0 - frac) * col[8]  # Eq. 15, per element
    if grad is not None:  # Alg. 1: mu + s Sigma g, Sigma = exp(log sigma^2) of this step
        x_prev = x_prev + a[2] * (np.exp(log_variance) * grad)
    has_noise = c[:, 9] != 0
    if np.any(has_noise):
        if noise is None:
            raise ValueError("noise is required for a learned-variance step into t > 0 (has_noise != 0)")
        noise = check_float_array(noise, "noise")
        check_same_shape(x_t, noise, "x_t", "noise")
        term = np.exp(0.5 * log_variance) * noise
        x_prev = x_prev + np.where(per_sample(has_noise, x_t.ndim), term, 0.0)
    return x_prev.astype(dtype)


def ddpm_learned_step(x_t, t, model_output, schedule: Schedule, noise=None,
                      prediction: str = "epsilon", clip=None) -> np.ndarray:
    """One ancestral step x_t -> x_{t-1} with the model's learned variance (Eq. 15) on `schedule`
    (for a respaced run: the respaced schedule and index); noise ignored at t = 0."""
    schedule = check_schedule(schedule)
    x_t = check_float_array(x_t, "x_t")
    t = check_timesteps(t, x_t.shape[0], schedule.T)
    c = learned_variance_coefficients(schedule, t, prediction)
    return learned_variance_step(x_t, model_output, c, noise, clip)
