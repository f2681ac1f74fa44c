"""The forward and reverse diffusion process: the exact definition every fast path is held to.

Arrays are (N, ...) batches; t is an int or an (N,) integer array of timesteps in [0, T).
Computation is float64 unless every array argument is float32 ("float32 on request").

The sampler updates are written as one elementwise rule with per-sample float64 coefficients,
which is also the specification of the fused GPU kernel (`kernels.sampler_step`):

    x0_hat  = c[0] x_t + c[1] out          (prediction -> x0)
    eps_hat = c[2] x_t + c[3] out          (prediction -> eps)
    x0_hat  = clip(x0_hat)                 (optional)
    x_prev  = c[4] x0_hat + c[5] x_t + c[6] eps_hat + c[7] z

`ddpm_coefficients` and `ddim_coefficients` give c (columns named in STEP_COEFFICIENTS).
"""

from __future__ import annotations

import numpy as np

from ._validate import check_clip, check_eta, check_float_array, check_same_shape, check_timesteps, per_sample, result_dtype
from .schedules import Schedule, check_schedule

__all__ = [
    "PREDICTIONS",
    "VARIANCES",
    "STEP_COEFFICIENTS",
    "q_sample",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "predict_x0_from_eps",
    "predict_eps_from_x0",
    "v_from_x0_eps",
    "predict_x0_from_v",
    "predict_eps_from_v",
    "prediction_coefficients",
    "ddpm_coefficients",
    "ddim_coefficients",
    "sampler_step",
    "ddpm_step",
    "ddim_step",
    "dpm_solver_pp_coefficients",
    "dpm_solver_pp_2m_step",
    "dpm_solver_pp_2m_update",
    "DPM_SOLVER_COEFFICIENTS",
    "classifier_free_guidance",
    "dynamic_threshold",
]

PREDICTIONS = ("epsilon", "sample", "v_prediction")
VARIANCES = ("fixed_small", "fixed_large")
DPM_SOLVER_COEFFICIENTS = (
    "x0_from_xt", "x0_from_out", "d_from_x0", "d_from_x0_last", "prev_from_xt", "prev_from_d",
    "second_order",
)
STEP_COEFFICIENTS = (
    "x0_from_xt", "x0_from_out", "eps_from_xt", "eps_from_out",
    "prev_from_x0", "prev_from_xt", "prev_from_eps", "sigma",
)


def _check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


# ----------------------------------------------------------------------------- forward process

def q_sample(x0: np.ndarray, t, noise: np.ndarray, schedule: Schedule) -> np.ndarray:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps  (DDPM Eq. 4, closed form)."""
    schedule = check_schedule(schedule)
    x0 = check_float_array(x0, "x0")
    noise = check_float_array(noise, "noise")
    check_same_shape(x0, noise, "x0", "noise")
    t = check_timesteps(t, x0.shape[0], schedule.T)
    dtype = result_dtype(x0, noise)
    a = per_sample(schedule.sqrt_alpha_bars[t], x0.ndim).astype(dtype)
    s = per_sample(schedule.sqrt_one_minus_alpha_bars[t], x0.ndim).astype(dtype)
    return (a * x0.astype(dtype) + s * noise.astype(dtype)).astype(dtype)


def q_mean_variance(x0: np.ndarray, t, schedule: Schedule):
    """Mean and variance of q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)  (Eq. 4)."""
    schedule = check_schedule(schedule)
    x0 = check_float_array(x0, "x0")
    t = check_timesteps(t, x0.shape[0], schedule.T)
    mean = per_sample(schedule.sqrt_alpha_bars[t], x0.ndim) * x0
    var = np.broadcast_to(per_sample(1.0 - schedule.alpha_bars[t], x0.ndim), x0.shape)
    dtype = result_dtype(x0)
    return mean.astype(dtype), var.astype(dtype)


def q_posterior_mean_variance(x0: np.ndarray, x_t: np.ndarray, t, schedule: Schedule):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)  (DDPM Eqs. 6-7)."""
    schedule = check_schedule(schedule)
    x0 = check_float_array(x0, "x0")
    x_t = check_float_array(x_t, "x_t")
    check_same_shape(x0, x_t, "x0", "x_t")
    t = check_timesteps(t, x0.shape[0], schedule.T)
    dtype = result_dtype(x0, x_t)
    c1 = per_sample(schedule.posterior_mean_coef1[t], x0.ndim)
    c2 = per_sample(schedule.posterior_mean_coef2[t], x0.ndim)
    mean = c1 * x0 + c2 * x_t
    var = per_sample(schedule.posterior_variance[t], x0.ndim)
    logvar = per_sample(schedule.posterior_log_variance_clipped[t], x0.ndim)
    return (mean.astype(dtype), np.broadcast_to(var, x0.shape).astype(dtype),
            np.broadcast_to(logvar, x0.shape).astype(dtype))


# ----------------------------------------------------------------------------- parameterisations

def _convert(x_t, t, out, schedule: Schedule, prediction: str, target: str, out_name: str) -> np.ndarray:
    """x0 (target "x0") or eps (target "eps") from x_t and a model output of kind `prediction`,
    with the coefficients of `prediction_coefficients` (the same ones the samplers use)."""
    schedule = check_schedule(schedule)
    x_t, out = check_float_array(x_t, "x_t"), check_float_array(out, out_name)
    check_same_shape(x_t, out, "x_t", out_name)
    t = check_timesteps(t, x_t.shape[0], schedule.T)
    c = prediction_coefficients(schedule.alpha_bars[t], prediction)
    a, b = (c[:, 0], c[:, 1]) if target == "x0" else (c[:, 2], c[:, 3])
    return (per_sample(a, x_t.ndim) * x_t + per_sample(b, x_t.ndim) * out).astype(result_dtype(x_t, out))


def predict_x0_from_eps(x_t, t, eps, schedule: Schedule) -> np.ndarray:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)  (inverse of DDPM Eq. 4)."""
    return _convert(x_t, t, eps, schedule, "epsilon", "x0", "eps")


def predict_eps_from_x0(x_t, t, x0, schedule: Schedule) -> np.ndarray:
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)  (DDPM Eq. 4 solved for eps)."""
    return _convert(x_t, t, x0, schedule, "sample", "eps", "x0")


def v_from_x0_eps(x0, eps, t, schedule: Schedule) -> np.ndarray:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0  (Salimans & Ho 2022, Sec. 4)."""
    schedule = check_schedule(schedule)
    x0, eps = check_float_array(x0, "x0"), check_float_array(eps, "eps")
    check_same_shape(x0, eps, "x0", "eps")
    t = check_timesteps(t, x0.shape[0], schedule.T)
    alpha_bar = per_sample(schedule.alpha_bars[t], x0.ndim)
    return (np.sqrt(alpha_bar) * eps - np.sqrt(1.0 - alpha_bar) * x0).astype(result_dtype(x0, eps))


def predict_x0_from_v(x_t, t, v, schedule: Schedule) -> np.ndarray:
    """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v  (Salimans & Ho 2022, Sec. 4)."""
    return _convert(x_t, t, v, schedule, "v_prediction", "x0", "v")


def predict_eps_from_v(x_t, t, v, schedule: Schedule) -> np.ndarray:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v  (Salimans & Ho 2022, Sec. 4)."""
    return _convert(x_t, t, v, schedule, "v_prediction", "eps", "v")


# ----------------------------------------------------------------------------- the update rule

def prediction_coefficients(alpha_bar: np.ndarray, prediction: str = "epsilon") -> np.ndarray:
    """(..., 4) float64 [x0_from_xt, x0_from_out, eps_from_xt, eps_from_out] for alpha_bar_t.

    DDPM Eq. 4 (x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps) solved for the unknowns, and
    v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, Sec. 4):
    epsilon:      x0 = (x_t - sqrt(1 - alpha_bar) out) / sqrt(alpha_bar),   eps = out
    sample:       x0 = out,   eps = (x_t - sqrt(alpha_bar) out) / sqrt(1 - alpha_bar)
    v_prediction: x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) out,
                  eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) out
    """
    _check_prediction(prediction)
    alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
    one, zero = np.ones_like(alpha_bar), np.zeros_like(alpha_bar)
    if prediction == "epsilon":
        cols = (np.sqrt(1.0 / alpha_bar), -np.sqrt(1.0 / alpha_bar - 1.0), zero, one)
    elif prediction == "sample":
        cols = (zero, one, 1.0 / np.sqrt(1.0 - alpha_bar), -np.sqrt(alpha_bar) / np.sqrt(1.0 - alpha_bar))
    else:
        cols = (np.sqrt(alpha_bar), -np.sqrt(1.0 - alpha_bar), np.sqrt(1.0 - alpha_bar), np.sqrt(alpha_bar))
    return np.stack(cols, axis=-1)


def ddpm_coefficients(schedule: Schedule, t, prediction: str = "epsilon",
                      variance: str = "fixed_small") -> np.ndarray:
    """(N, 8) coefficients of one DDPM ancestral step t -> t-1  (DDPM Alg. 2, Eqs. 6-7).

    x_{t-1} = coef1_t x0_hat + coef2_t x_t + sigma_t z, the posterior mean of (x0_hat, x_t);
    sigma_t^2 = beta_tilde_t ("fixed_small") or beta_t ("fixed_large"), and sigma_0 = 0.
    """
    schedule = check_schedule(schedule)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    t = np.atleast_1d(schedule.check_t(t))
    pred = prediction_coefficients(schedule.alpha_bars[t], prediction)
    var = schedule.posterior_variance[t] if variance == "fixed_small" else schedule.betas[t]
    sigma = np.where(t > 0, np.sqrt(var), 0.0)
    step = np.stack([schedule.posterior_mean_coef1[t], schedule.posterior_mean_coef2[t],
                     np.zeros_like(sigma), sigma], axis=-1)
    return np.concatenate([pred, step], axis=-1)


def ddim_coefficients(schedule: Schedule, t, t_prev, eta: float = 0.0,
                      prediction: str = "epsilon") -> np.ndarray:
    """(N, 8) coefficients of one DDIM step t -> t_prev  (Song et al. 2021, Eqs. 12 and 16).

    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev);
    t_prev = -1: alpha_bar_prev = 1.
    """
    schedule = check_schedule(schedule)
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)):
        raise TypeError(f"eta must be a number, got {type(eta).__name__}")
    eta = check_eta(eta)  # eta > 1: sigma^2 > 1 - alpha_bar_prev, no DDIM step (diffusers: NaN)
    t = np.atleast_1d(schedule.check_t(t))
    t_prev = np.atleast_1d(np.asarray(t_prev))
    if not np.issubdtype(t_prev.dtype, np.integer):
        raise TypeError(f"t_prev must be integer, got dtype {t_prev.dtype}")
    t_prev = np.broadcast_to(t_prev, t.shape).astype(np.int64)
    if np.any(t_prev < -1) or np.any(t_prev >= t):
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t, got t={t.tolist()}, t_prev={t_prev.tolist()}")
    alpha_bar = schedule.alpha_bars[t]
    alpha_bar_prev = schedule.alpha_bar_at(t_prev)
    sigma = (eta * np.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
             * np.sqrt(1.0 - alpha_bar / alpha_bar_prev))
    direction = np.sqrt(np.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0))
    pred = prediction_coefficients(alpha_bar, prediction)
    step = np.stack([np.sqrt(alpha_bar_prev), np.zeros_like(alpha_bar), direction, sigma], axis=-1)
    return np.concatenate([pred, step], axis=-1)


def dynamic_threshold(x0: np.ndarray, percentile: float = 0.995, max_value: float = float("inf")) -> np.ndarray:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3), per sample.

    s = max(quantile(|x0|, percentile), 1), capped at max_value; x0 -> clip(x0, -s, s) / s.
    """
    x0 = check_float_array(x0, "x0")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.integer, np.floating)):
        raise TypeError(f"percentile must be a number, got {type(percentile).__name__}")
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must lie in (0, 1], got {percentile}")
    if not (max_value >= 1.0):  # also rejects NaN
        raise ValueError(f"max_value must be >= 1 (s is clipped to [1, max_value]), got {max_value!r}")
    flat = np.abs(x0.reshape(x0.shape[0], -1))
    s = np.clip(np.quantile(flat, percentile, axis=1), 1.0, max_value)
    s = per_sample(s, x0.ndim)
    return (np.clip(x0, -s, s) / s).astype(x0.dtype)


def sampler_step(x_t: np.ndarray, model_output: np.ndarray, coefficients: np.ndarray,
                   noise: np.ndarray | None = None, clip=None,
                   threshold: float | None = None, *, classifier_grad: np.ndarray | None = None,
                   classifier_coefficients=None) -> np.ndarray:
    """The elementwise update shared by DDPM and DDIM steps (see module docstring).

    coefficients: (8,) or (N, 8) float64 from ddpm_coefficients / ddim_coefficients.
    The noise term is skipped for samples whose sigma is 0, so noise may be None there.
    threshold: a percentile for dynamic thresholding of x0_hat (instead of or after `clip`).
    classifier_grad (N, ...) with classifier_coefficients (3,) or (N, 3) = (a0, a1, a2) times
    the scale: classifier guidance (reference.classifier_guidance): x0_hat += a0 g and
    eps_hat += a1 g before clipping, x_prev += a2 g before the noise term.
    """
    x_t = check_float_array(x_t, "x_t")
    model_output = check_float_array(model_output, "model_output")
    check_same_shape(x_t, model_output, "x_t", "model_output")
    clip = check_clip(clip)
    c = np.asarray(coefficients, dtype=np.float64)
    if c.shape == (8,):
        c = np.broadcast_to(c, (x_t.shape[0], 8))
    if c.shape != (x_t.shape[0], 8):
        raise ValueError(f"coefficients must have shape (8,) or ({x_t.shape[0]}, 8), got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("coefficients contain NaN or inf")
    # float32 only when every array given is float32 (noise counts even where it is not used)
    dtype = result_dtype(x_t, model_output, *([noise] if isinstance(noise, np.ndarray) else []))
    col = [per_sample(c[:, k], x_t.ndim) for k in range(8)]
    grad, a = classifier_term(x_t, classifier_grad, classifier_coefficients)
    x0 = col[0] * x_t + col[1] * model_output
    eps = col[2] * x_t + col[3] * model_output
    if grad is not None:
        x0 = x0 + a[0] * grad
        eps = eps + a[1] * grad
    if clip is not None:
        x0 = np.clip(x0, clip[0], clip[1])
    if threshold is not None:
        x0 = dynamic_threshold(x0, threshold)
    x_prev = col[4] * x0 + col[5] * x_t + col[6] * eps
    if grad is not None:
        x_prev = x_prev + a[2] * grad
    has_noise = c[:, 7] != 0
    if np.any(has_noise):
        if noise is None:
            raise ValueError("noise is required when sigma > 0 (t > 0 for DDPM, eta > 0 for DDIM)")
        noise = check_float_array(noise, "noise")
        check_same_shape(x_t, noise, "x_t", "noise")
        term = col[7] * noise
        x_prev = x_prev + np.where(per_sample(has_noise, x_t.ndim), term, 0.0)
    return x_prev.astype(dtype)


def classifier_term(x_t, classifier_grad, classifier_coefficients):
    """(grad, [a0, a1, a2] per sample) of classifier guidance, or (None, None) without it."""
    if classifier_grad is None:
        if classifier_coefficients is not None:
            raise ValueError("classifier_coefficients given without classifier_grad")
        return None, None
    grad = check_float_array(classifier_grad, "classifier_grad")
    check_same_shape(x_t, grad, "x_t", "classifier_grad")
    if classifier_coefficients is None:
        raise ValueError("classifier_grad needs classifier_coefficients (3,) or (N, 3)")
    a = np.asarray(classifier_coefficients, dtype=np.float64)
    if a.shape == (3,):
        a = np.broadcast_to(a, (x_t.shape[0], 3))
    if a.shape != (x_t.shape[0], 3) or not np.all(np.isfinite(a)):
        raise ValueError(f"classifier_coefficients must be finite with shape (3,) or ({x_t.shape[0]}, 3), "
                         f"got {a.shape}")
    return grad.astype(np.float64), [per_sample(a[:, k], x_t.ndim) for k in range(3)]


def ddpm_step(x_t, t, model_output, schedule: Schedule, noise=None, prediction: str = "epsilon",
              variance: str = "fixed_small", clip=None, threshold: float | None = None) -> np.ndarray:
    """One ancestral step x_t -> x_{t-1}  (DDPM Alg. 2; posterior mean of Eq. 7); noise ignored at t = 0."""
    schedule = check_schedule(schedule)
    x_t = check_float_array(x_t, "x_t")
    t = check_timesteps(t, x_t.shape[0], schedule.T)
    c = ddpm_coefficients(schedule, t, prediction, variance)
    return sampler_step(x_t, model_output, c, noise, clip, threshold)


def ddim_step(x_t, t, t_prev, model_output, schedule: Schedule, eta: float = 0.0, noise=None,
              prediction: str = "epsilon", clip=None, threshold: float | None = None) -> np.ndarray:
    """One DDIM step x_t -> x_{t_prev}  (Song et al. 2021, Eq. 12); t_prev = -1 means alpha_bar = 1.

    With `clip`, x0_hat is clipped and eps_hat stays the model's own, as diffusers does.
    """
    schedule = check_schedule(schedule)
    x_t = check_float_array(x_t, "x_t")
    t = check_timesteps(t, x_t.shape[0], schedule.T)
    t_prev = check_timesteps(t_prev, x_t.shape[0], schedule.T, "t_prev", allow_minus_one=True)
    c = ddim_coefficients(schedule, t, t_prev, eta, prediction)
    return sampler_step(x_t, model_output, c, noise, clip, threshold)


def dpm_solver_pp_coefficients(schedule: Schedule, t, t_prev, t_last=None,
                               prediction: str = "epsilon") -> np.ndarray:
    """(N, 7) float64 coefficients of DPM-Solver++(2M) steps t -> t_prev  (Lu et al. 2022, Alg. 2).

    Columns (DPM_SOLVER_COEFFICIENTS): x0_hat = c0 x_t + c1 out;  D = c2 x0_hat - c3 x0_last;
    x_prev = c4 x_t - c5 D;  c6 = 1 where the step is second order. With lambda = log(alpha/sigma),
    alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), h = lambda_prev - lambda_t:
    c4 = sigma_prev / sigma_t,
    c5 = alpha_prev expm1(-h); second order (D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_last,
    r = h_last / h) where a previous step exists (t_last >= 0, the previous step's t, > t) and
    t_prev >= 0; first order (D = x0_hat) otherwise, so the step into t_prev = -1 returns x0_hat.
    t_last: None (no history) or integers, -1 marking samples without history.
    """
    schedule = check_schedule(schedule)
    t = np.atleast_1d(schedule.check_t(t))
    n = t.shape[0]
    t_prev = check_timesteps(np.broadcast_to(np.asarray(t_prev), (n,)) if np.ndim(t_prev) == 0 else t_prev,
                             n, schedule.T, "t_prev", allow_minus_one=True)
    if np.any(t_prev >= t):
        raise ValueError(f"t_prev must be < t, got t={t.tolist()}, t_prev={t_prev.tolist()}")
    if t_last is None:
        t_last = np.full(n, -1, dtype=np.int64)
    t_last = check_timesteps(np.broadcast_to(np.asarray(t_last), (n,)) if np.ndim(t_last) == 0 else t_last,
                             n, schedule.T, "t_last", allow_minus_one=True)
    has_history = t_last >= 0
    if np.any(has_history & (t_last <= t)):
        raise ValueError("t_last (the previous step's t) must be > t")

    def lam(tt):  # half log-SNR; +inf at t = -1
        alpha_bar = schedule.alpha_bar_at(tt)
        with np.errstate(divide="ignore"):
            return 0.5 * (np.log(alpha_bar) - np.log1p(-alpha_bar))

    pred = prediction_coefficients(schedule.alpha_bars[t], prediction)
    alpha_bar_t, alpha_bar_prev = schedule.alpha_bars[t], schedule.alpha_bar_at(t_prev)
    sigma_t, sigma_prev = np.sqrt(1.0 - alpha_bar_t), np.sqrt(1.0 - alpha_bar_prev)
    final = t_prev < 0
    h = np.where(final, np.inf, lam(t_prev) - lam(t))
    phi = np.where(final, -1.0, np.expm1(-np.where(final, 0.0, h)))  # expm1(-inf) = -1
    second = has_history & ~final
    h_last = lam(t) - lam(np.where(has_history, t_last, t))
    r = np.where(second, h_last / np.where(final, 1.0, h), 1.0)  # r = 1 where unused: finite
    c_x0 = np.where(second, 1.0 + 0.5 / r, 1.0)
    c_last = np.where(second, 0.5 / r, 0.0)
    return np.stack([pred[:, 0], pred[:, 1], c_x0, c_last, sigma_prev / sigma_t,
                     np.sqrt(alpha_bar_prev) * phi, second.astype(np.float64)], axis=-1)


def dpm_solver_pp_2m_step(x_t, t, t_prev, model_output, schedule: Schedule, history=None,
                          prediction: str = "epsilon", clip=None):
    """One DPM-Solver++(2M) step t -> t_prev  (Lu et al. 2022, Alg. 2, data prediction).

    x_prev = (sigma_prev / sigma_t) x_t - alpha_prev expm1(-h) D with D = x0_hat (first order:
    the first step, or t_prev = -1) or (1 + 1/(2r)) x0_hat - 1/(2r) x0_last (second order);
    coefficients from `dpm_solver_pp_coefficients`. history: None or (x0_last, t_last) from the
    previous step. Returns (x_prev, (x0_hat, t)).
    """
    schedule = check_schedule(schedule)
    x_t = check_float_array(x_t, "x_t")  # model_output and clip: checked by the update
    n = x_t.shape[0]
    t = check_timesteps(t, n, schedule.T)
    t_prev = check_timesteps(t_prev, n, schedule.T, "t_prev", allow_minus_one=True)
    x0_last, t_last = None, None
    if history is not None:
        x0_last, t_last = history
        x0_last = check_float_array(x0_last, "history[0]")
        check_same_shape(x_t, x0_last, "x_t", "history[0]")
        t_last = check_timesteps(t_last, n, schedule.T, "history[1]")
        if np.any(t_last <= t):
            raise ValueError("history[1] (the previous step's t) must be > t")
    c = dpm_solver_pp_coefficients(schedule, t, t_prev, t_last, prediction)
    x_prev, x0 = dpm_solver_pp_2m_update(x_t, model_output, c, x0_last, clip)
    return x_prev, (x0, t)


def dpm_solver_pp_2m_update(x_t, model_output, coefficients, x0_last=None, clip=None, *,
                            classifier_grad=None, classifier_coefficients=None):
    """The elementwise DPM-Solver++(2M) update with given coefficients (Lu et al. 2022, Alg. 2).

    x_t, model_output, x0_last: (N, ...); coefficients: (7,) or (N, 7) float64 rows of
    `dpm_solver_pp_coefficients` (columns DPM_SOLVER_COEFFICIENTS); x0_last: the previous step's
    x0_hat, None at the first step (only read where c6 marks a second-order step).
    classifier_grad / classifier_coefficients: classifier guidance as in `sampler_step`
    (x0_hat += a0 g before clipping; a1 and a2 are not read: the update has no eps_hat).
    Returns (x_prev, x0_hat), both (N, ...): x0_hat is the next step's x0_last.
    """
    x_t = check_float_array(x_t, "x_t")
    model_output = check_float_array(model_output, "model_output")
    check_same_shape(x_t, model_output, "x_t", "model_output")
    clip = check_clip(clip)
    c = np.asarray(coefficients, dtype=np.float64)
    if c.shape == (7,):
        c = np.broadcast_to(c, (x_t.shape[0], 7))
    if c.shape != (x_t.shape[0], 7):
        raise ValueError(f"coefficients must have shape (7,) or ({x_t.shape[0]}, 7), got {c.shape}")
    if x0_last is not None:
        x0_last = check_float_array(x0_last, "x0_last")
        check_same_shape(x_t, x0_last, "x_t", "x0_last")
    elif np.any(c[:, 6] != 0):
        raise ValueError("x0_last (the previous step's x0_hat) is required by a second-order step")
    dtype = result_dtype(x_t, model_output, x0_last)
    col = [per_sample(c[:, k], x_t.ndim) for k in range(7)]
    grad, a = classifier_term(x_t, classifier_grad, classifier_coefficients)
    x0 = col[0] * x_t + col[1] * model_output
    if grad is not None:
        x0 = x0 + a[0] * grad
    if clip is not None:
        x0 = np.clip(x0, clip[0], clip[1])
    D = x0 if x0_last is None else np.where(col[6] != 0, col[2] * x0 - col[3] * x0_last, x0)
    x_prev = col[4] * x_t - col[5] * D
    return x_prev.astype(dtype), x0.astype(dtype)


def classifier_free_guidance(cond: np.ndarray, uncond: np.ndarray, guidance_scale: float) -> np.ndarray:
    """out = uncond + w (cond - uncond)  (Ho & Salimans 2022, Eq. 6 with w = 1 + their w)."""
    cond = check_float_array(cond, "cond")
    uncond = check_float_array(uncond, "uncond")
    check_same_shape(cond, uncond, "cond", "uncond")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"guidance_scale must be a number, got {type(guidance_scale).__name__}")
    if not np.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
    return (uncond + guidance_scale * (cond - uncond)).astype(result_dtype(cond, uncond))
