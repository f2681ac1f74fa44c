"""Training objectives with their hand-written gradients (forward above backward).

The loss of a batch is the mean over samples of w_i * mean_j (out_ij - target_ij)^2, the
"simple" objective of DDPM (Eq. 14) when the target is eps and w = 1.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_float_array, check_same_shape, check_timesteps, per_sample, result_dtype
from .process import PREDICTIONS, v_from_x0_eps
from .schedules import Schedule, check_schedule

__all__ = ["training_target", "min_snr_weights", "weighted_mse", "weighted_mse_backward"]


def training_target(x0: np.ndarray, noise: np.ndarray, t, schedule: Schedule,
                    prediction: str = "epsilon") -> np.ndarray:
    """The regression target: eps (DDPM Eq. 14), x0, or v = sqrt(ab) eps - sqrt(1-ab) x0."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    x0 = check_float_array(x0, "x0")
    noise = check_float_array(noise, "noise")
    check_same_shape(x0, noise, "x0", "noise")
    schedule = check_schedule(schedule)
    check_timesteps(t, x0.shape[0], schedule.T)  # checked for every target, used by v
    dtype = result_dtype(x0, noise)
    if prediction == "epsilon":
        return noise.astype(dtype)
    if prediction == "sample":
        return x0.astype(dtype)
    return v_from_x0_eps(x0, noise, t, schedule)


def min_snr_weights(t, schedule: Schedule, prediction: str = "epsilon",
                    gamma: float | None = 5.0) -> np.ndarray:
    """Per-sample Min-SNR-gamma weights (Hang et al. 2023, Eq. 8), expressed for each target.

    Weighting the x0 loss by min(SNR, gamma) equals weighting the eps loss by
    min(SNR, gamma) / SNR, or the v loss by min(SNR, gamma) / (SNR + 1). gamma None: all ones.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    schedule = check_schedule(schedule)
    t_arr = np.atleast_1d(np.asarray(t))
    t_arr = check_timesteps(t_arr, t_arr.shape[0], schedule.T)
    if gamma is None:
        return np.ones(t_arr.shape, dtype=np.float64)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)):
        raise TypeError(f"gamma must be a number or None, got {type(gamma).__name__}")
    if not np.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive number or None, got {gamma!r}")
    snr = schedule.snr[t_arr]
    clipped = np.minimum(snr, gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "sample":
        return clipped
    return clipped / (snr + 1.0)


def weighted_mse(output: np.ndarray, target: np.ndarray, weights=None):
    """loss = (1/N) sum_i w_i mean_j (output_ij - target_ij)^2; returns (loss, cache)."""
    output = check_float_array(output, "output")
    target = check_float_array(target, "target")
    check_same_shape(output, target, "output", "target")
    n = output.shape[0]
    w = np.ones(n) if weights is None else check_float_array(np.asarray(weights, dtype=np.float64), "weights")
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if np.any(w < 0):
        raise ValueError(f"weights must be >= 0, got min {w.min()}")
    diff = output.astype(np.float64) - target
    per_example = (diff.reshape(n, -1) ** 2).mean(axis=1)
    loss = float(np.mean(w * per_example))
    return loss, (diff, w, result_dtype(output, target))


def weighted_mse_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """d loss / d output = 2 w_i (output - target) / (N D), D elements per sample; in the dtype of
    the forward's arrays (float32 only when output and target both are)."""
    diff, w, dtype = cache
    n = diff.shape[0]
    d = diff[0].size
    return (dloss * 2.0 * per_sample(w, diff.ndim) * diff / (n * d)).astype(dtype)
