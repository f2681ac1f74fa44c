"""The variational bound of Improved DDPM (Nichol & Dhariwal 2021), forward above backward.

Timesteps are 0-based (DESIGN contract 1): the paper's L_0 (the decoder) is t = 0 here, its
L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0, and L_T (the prior) is the KL
of q(x_{T-1} | x0) from N(0, I). Per-t terms are in bits per dimension: the mean over the
non-batch dimensions of the natural-log quantity, divided by ln 2 (improved-diffusion's
`mean_flat(...) / log(2)`), so sum_t L_t + L_prior is the negative log-likelihood bound in bits/dim.

Learned variance (Improved DDPM Eq. 15): the model outputs v per element and

    log sigma^2_t = frac log beta_t + (1 - frac) log beta_tilde_t,   frac = (v + 1) / 2.

Convention at t = 0: beta_tilde_0 = 0, so log beta_tilde_0 is replaced by log beta_tilde_1, as
improved-diffusion's `posterior_log_variance_clipped` does (the Schedule's table of that name).
Respaced schedules (Improved DDPM Sec. 4): pass `schedule.respace(timesteps)` and the index into
it; its betas are recomputed from the kept alpha_bars, so the interpolation runs between the
respaced beta_k and beta_tilde_k (and the clip at k = 0 uses the respaced beta_tilde_1).
"""

from __future__ import annotations

import numpy as np

from ._validate import check_float_array, check_timesteps, per_sample, result_dtype
from .schedules import Schedule, check_schedule

__all__ = ["learned_log_variance", "learned_log_variance_backward", "log_variance_bounds"]


def log_variance_bounds(t, schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """(min_log, max_log) = (log beta_tilde_t clipped at t = 0, log beta_t), float64 of t's shape."""
    schedule = check_schedule(schedule)
    t = schedule.check_t(t)
    return schedule.posterior_log_variance_clipped[t], np.log(schedule.betas[t])


def learned_log_variance(v: np.ndarray, t, schedule: Schedule) -> np.ndarray:
    """log sigma^2 = frac log beta_t + (1 - frac) log beta_tilde_t, frac = (v + 1) / 2  (Eq. 15).

    v: (N, ...) the variance half of the model output (not clipped: v outside [-1, 1]
    extrapolates, as in the paper's code); t: int or (N,) int timesteps of `schedule` (for a
    respaced schedule, its own index k). Returns (N, ...) in v's dtype (float64 unless v is float32).
    """
    schedule = check_schedule(schedule)
    v = check_float_array(v, "v")
    t = check_timesteps(t, v.shape[0], schedule.T)
    min_log, max_log = (per_sample(b, v.ndim) for b in log_variance_bounds(t, schedule))
    frac = (v.astype(np.float64) + 1.0) / 2.0
    return (frac * max_log + (1.0 - frac) * min_log).astype(result_dtype(v))


def learned_log_variance_backward(dlogvar: np.ndarray, t, schedule: Schedule) -> np.ndarray:
    """dL/dv = dL/dlog sigma^2 * (log beta_t - log beta_tilde_t) / 2 (the map is affine in v)."""
    schedule = check_schedule(schedule)
    dlogvar = check_float_array(dlogvar, "dlogvar")
    t = check_timesteps(t, dlogvar.shape[0], schedule.T)
    min_log, max_log = (per_sample(b, dlogvar.ndim) for b in log_variance_bounds(t, schedule))
    return (dlogvar * 0.5 * (max_log - min_log)).astype(result_dtype(dlogvar))
