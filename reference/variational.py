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

from ._validate import check_float_array, check_same_shape, check_timesteps, per_sample, result_dtype
from .schedules import Schedule, check_schedule

__all__ = ["learned_log_variance", "learned_log_variance_backward", "log_variance_bounds", "normal_kl",
           "normal_kl_backward", "discretized_gaussian_log_likelihood",
           "discretized_gaussian_log_likelihood_backward", "check_8bit_grid", "check_unit_interval",
           "HALF_BIN", "MIN_PROBABILITY", "CDF_KINDS"]


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


# ----------------------------------------------------------------------------- Gaussian KL

def normal_kl(mean1, logvar1, mean2, logvar2) -> np.ndarray:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats (improved-diffusion):

        0.5 (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2).

    Arguments broadcast against each other (scalars allowed, e.g. the prior's 0, 0); float64
    unless every array argument is float32.
    """
    arrays = [check_float_array(np.asarray(a) if np.isscalar(a) else a, name, min_ndim=0)
              for a, name in ((mean1, "mean1"), (logvar1, "logvar1"), (mean2, "mean2"), (logvar2, "logvar2"))]
    m1, lv1, m2, lv2 = (a.astype(np.float64) for a in arrays)
    kl = 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))
    return kl.astype(result_dtype(*arrays))


def normal_kl_backward(dkl, mean1, logvar1, mean2, logvar2) -> tuple:
    """(dmean1, dlogvar1, dmean2, dlogvar2) of sum(dkl * normal_kl(...)), each of the broadcast shape:

    dKL/dmean1 = (mean1 - mean2) e^-logvar2 = -dKL/dmean2,
    dKL/dlogvar1 = (e^(logvar1 - logvar2) - 1) / 2,
    dKL/dlogvar2 = (1 - e^(logvar1 - logvar2) - (mean1 - mean2)^2 e^-logvar2) / 2.
    """
    m1, lv1, m2, lv2 = (np.asarray(a, dtype=np.float64) for a in (mean1, logvar1, mean2, logvar2))
    dkl = np.asarray(dkl, dtype=np.float64)
    diff, precision2, ratio = m1 - m2, np.exp(-lv2), np.exp(lv1 - lv2)
    dmean1 = dkl * diff * precision2
    dlogvar1 = dkl * 0.5 * (ratio - 1.0)
    dlogvar2 = dkl * 0.5 * (1.0 - ratio - diff**2 * precision2)
    shape = np.broadcast_shapes(dkl.shape, m1.shape, lv1.shape, m2.shape, lv2.shape)
    return tuple(np.broadcast_to(g, shape).copy() for g in (dmean1, dlogvar1, -dmean1, dlogvar2))


# ----------------------------------------------------------------------------- the decoder

# Half a bin: 8-bit data on [-1, 1] has 256 values 2/255 apart (Ho et al. 2020, Eq. 13).
HALF_BIN = 1.0 / 255.0
# improved-diffusion floors every probability at 1e-12 before the log: a bin the model puts no
# mass on costs log(1e-12) = -27.6 nats, and its gradient is 0 there (the floor is flat).
MIN_PROBABILITY = 1e-12
CDF_KINDS = ("exact", "tanh")
_erfc = np.frompyfunc(__import__("math").erfc, 1, 1)


def _tail(z: np.ndarray) -> np.ndarray:
    """1 - Phi(z) = erfc(z / sqrt 2) / 2, accurate in the upper tail (no 1 - Phi cancellation)."""
    return 0.5 * _erfc(z / np.sqrt(2.0)).astype(np.float64)


def _standard_normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)


def _tanh_cdf(z: np.ndarray) -> np.ndarray:
    """improved-diffusion's approx_standard_normal_cdf (the GELU tanh approximation)."""
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3)))


def _bin_edges(x, means, log_scales):
    """(plus, minus, inv_scale): the standardised upper and lower bin edges of x."""
    inv_scale = np.exp(-log_scales)
    centered = x - means
    return inv_scale * (centered + HALF_BIN), inv_scale * (centered - HALF_BIN), inv_scale


def _bin_masses(x, plus, minus, cdf: str):
    """(mass, dmass/dplus, dmass/dminus) of each element's bin; the edge bins are open
    (x = -1: (-inf, plus], x = 1: [minus, inf)), as Ho et al. 2020 Eq. 13."""
    low, high = x < -1.0 + HALF_BIN, x > 1.0 - HALF_BIN  # x = -1 and x = 1 on the 8-bit grid
    if cdf == "tanh":  # the paper's code: one CDF, differences taken directly
        cdf_plus, cdf_minus = _tanh_cdf(plus), _tanh_cdf(minus)
        mass = np.where(low, cdf_plus, np.where(high, 1.0 - cdf_minus, cdf_plus - cdf_minus))
        return mass, None, None
    # Exact: Phi via erfc, in whichever tail keeps the difference free of cancellation:
    # Phi(b) - Phi(a) = Q(a) - Q(b) for a >= 0, = Q(-b) - Q(-a) for b <= 0 (Q = 1 - Phi).
    upper_tail = minus >= 0.0
    lower_tail = plus <= 0.0
    inner = np.where(upper_tail, _tail(minus) - _tail(plus),
                     np.where(lower_tail, _tail(-plus) - _tail(-minus), 1.0 - _tail(plus) - _tail(-minus)))
    mass = np.where(low, _tail(-plus), np.where(high, _tail(minus), inner))
    dplus = np.where(high, 0.0, _standard_normal_pdf(plus))
    dminus = np.where(low, 0.0, -_standard_normal_pdf(minus))
    return mass, dplus, dminus


def check_unit_interval(x: np.ndarray, name: str = "x") -> None:
    """x must lie in [-1, 1], the data range the decoder's bins cover."""
    if x.size and (x.min() < -1.0 or x.max() > 1.0):
        raise ValueError(f"{name} must lie in [-1, 1] (8-bit data scaled as 2 k / 255 - 1), got min "
                         f"{x.min()} max {x.max()}")


def check_8bit_grid(x: np.ndarray, name: str = "x0", atol: float = 1e-6) -> None:
    """x must lie on the 8-bit grid 2 k / 255 - 1, k = 0..255 (the bins the likelihood counts)."""
    check_unit_interval(x, name)
    k = (x.astype(np.float64) + 1.0) * 127.5
    off = np.abs(k - np.round(k))
    if x.size and off.max() > atol * 127.5:
        bad = np.unravel_index(int(np.argmax(off)), x.shape)
        raise ValueError(f"{name} must lie on the 8-bit grid 2 k / 255 - 1 (quantise the data first); "
                         f"{name}[{', '.join(map(str, bad))}] = {x[bad]!r} is {off[bad]:.3g} bins off it")


def discretized_gaussian_log_likelihood(x, means, log_scales, cdf: str = "exact") -> np.ndarray:
    """log P(x) per element (nats) of 8-bit data x in [-1, 1] under N(means, e^(2 log_scales))
    integrated over x's bin [x - 1/255, x + 1/255], the edge bins open (Ho et al. 2020, Eq. 13).

    cdf "exact" (default): the normal CDF through erfc, each bin mass taken in the tail where it
    does not cancel. "tanh": improved-diffusion's approximation 0.5 (1 + tanh(sqrt(2/pi)(z +
    0.044715 z^3))), whose absolute CDF error (up to ~2e-4) is not small against the mass of a
    2/255-wide bin once sigma is small, so the exact CDF is what a reported likelihood uses; the
    tanh form is kept to reproduce the paper's code. Probabilities are floored at 1e-12 as in
    that code. x, means, log_scales: the same shape; float64 unless all are float32.
    """
    if cdf not in CDF_KINDS:
        raise ValueError(f"cdf must be one of {CDF_KINDS}, got {cdf!r}")
    x = check_float_array(x, "x")
    means = check_float_array(means, "means")
    log_scales = check_float_array(log_scales, "log_scales")
    check_same_shape(x, means, "x", "means")
    check_same_shape(x, log_scales, "x", "log_scales")
    check_unit_interval(x)
    plus, minus, _ = _bin_edges(*(a.astype(np.float64) for a in (x, means, log_scales)))
    mass, _, _ = _bin_masses(x, plus, minus, cdf)
    return np.log(np.maximum(mass, MIN_PROBABILITY)).astype(result_dtype(x, means, log_scales))


def discretized_gaussian_log_likelihood_backward(dlogp, x, means, log_scales) -> tuple:
    """(dmeans, dlog_scales) of sum(dlogp * log P(x)) for the exact CDF.

    With z+- = (x - means +- 1/255) e^-log_scales and P the bin mass:
    dlogP/dz+ = phi(z+) / P, dlogP/dz- = -phi(z-) / P (0 for an open edge), dz+-/dmeans =
    -e^-log_scales, dz+-/dlog_scales = -z+-; zero where P is at the 1e-12 floor.
    """
    x, means, log_scales = (np.asarray(a, dtype=np.float64) for a in (x, means, log_scales))
    plus, minus, inv_scale = _bin_edges(x, means, log_scales)
    mass, dplus, dminus = _bin_masses(x, plus, minus, "exact")
    live = mass > MIN_PROBABILITY
    safe = np.where(live, mass, 1.0)
    gplus = np.where(live, dlogp * dplus / safe, 0.0)
    gminus = np.where(live, dlogp * dminus / safe, 0.0)
    return -(gplus + gminus) * inv_scale, -(gplus * plus + gminus * minus)
