"""Training objectives with their hand-written gradients (forward above backward).

The loss of a batch is the mean over samples of w_i * mean_j (out_ij - target_ij)^2, the
"simple" objective of DDPM (Eq. 14) when the target is eps and w = 1; Improved DDPM's hybrid and
vlb objectives (`variational_loss`) add the bound's per-t terms of reference.vlb.
"""

from __future__ import annotations

import math

import numpy as np

from ._validate import check_float_array, check_same_shape, check_timesteps, per_sample, result_dtype
from .process import PREDICTIONS, v_from_x0_eps
from .schedules import Schedule, check_schedule
from .vlb import VARIANCE_KINDS, split_model_output, vlb_terms, vlb_terms_backward

__all__ = ["training_target", "min_snr_weights", "weighted_mse", "weighted_mse_backward", "LOSSES",
           "VLB_WEIGHT", "check_loss_variance", "variational_loss", "variational_loss_backward"]


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


# ----------------------------------------------------------------------------- Improved DDPM

LOSSES = ("simple", "hybrid", "vlb")
VLB_WEIGHT = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb (Improved DDPM Sec. 3.1)


def check_loss_variance(loss: str, variance: str) -> None:
    """The combinations that train something: the variance half needs L_vlb, L_hybrid a variance half."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if variance not in VARIANCE_KINDS:
        raise ValueError(f"variance must be one of {VARIANCE_KINDS}, got {variance!r}")
    if loss == "simple" and variance == "learned":
        raise ValueError("loss='simple' does not train a learned variance (L_simple has no sigma); use "
                         "loss='hybrid' or 'vlb' with variance='learned'")
    if loss == "hybrid" and variance != "learned":
        raise ValueError(f"loss='hybrid' trains the variance only through L_vlb (the mean's gradient is "
                         f"stopped), so it needs variance='learned', got {variance!r}")


def variational_loss(model_output, x0, x_t, target, t, schedule: Schedule, *, loss: str = "hybrid",
                     prediction: str = "epsilon", variance: str = "learned",
                     vlb_weight: float = VLB_WEIGHT, weights=None):
    """The training objectives of Improved DDPM for a batch; returns (loss, terms, cache).

    simple: mean_i w_i mean_j (mean part - target)^2                      (DDPM Eq. 14)
    hybrid: mean_i [mean_j (mean part - target)^2 + lambda T L_t,i]        (Sec. 3.1; lambda T L_t
            estimates lambda L_vlb = lambda sum_t L_t; the mean's gradient through L_t is stopped)
    vlb:    mean_i w_i T L_t,i                                             (L_vlb, importance
            weights w_i = 1 / (T p_t) from `importance_draws`; 1 for uniform t)
    L_t in bits/dim (`vlb_terms`). terms: (N,) float64 L_t,i (what the importance history
    records), zeros for "simple". weights: (N,) or None (ones); the hybrid takes none.
    """
    schedule = check_schedule(schedule)
    check_loss_variance(loss, variance)
    x0 = check_float_array(x0, "x0", min_ndim=2)
    n, T = x0.shape[0], schedule.T
    mean_out, _ = split_model_output(model_output, x0.shape[1], variance)
    w = np.ones(n) if weights is None else check_float_array(np.asarray(weights, dtype=np.float64), "weights")
    if w.shape != (n,) or np.any(w < 0):
        raise ValueError(f"weights must be (N,) = ({n},) non-negative numbers, got shape {w.shape}")
    if loss == "hybrid" and weights is not None:
        raise ValueError("weights apply to loss='simple' or 'vlb', not 'hybrid' (uniform t, Sec. 3.1)")
    if not (isinstance(vlb_weight, (int, float)) and math.isfinite(vlb_weight) and vlb_weight >= 0):
        raise ValueError(f"vlb_weight must be a finite number >= 0, got {vlb_weight!r}")
    value, terms, vlb_cache, mse_cache = 0.0, np.zeros(n), None, None
    if loss != "vlb":
        value, mse_cache = weighted_mse(mean_out, target, w)
    if loss != "simple":
        terms, vlb_cache = vlb_terms(model_output, x0, x_t, t, schedule, prediction, variance)
        scale = vlb_weight * T if loss == "hybrid" else float(T)
        value += float(np.mean(scale * w * terms))
    cache = dict(loss=loss, mse=mse_cache, vlb=vlb_cache, w=w, T=T, vlb_weight=vlb_weight,
                 shape=np.shape(model_output), dtype=result_dtype(model_output), C=x0.shape[1])
    return value, terms, cache


def variational_loss_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """d loss / d model_output (N, C_out, ...) of `variational_loss`."""
    grad = np.zeros(cache["shape"])
    C, n = cache["C"], cache["shape"][0]
    if cache["mse"] is not None:
        grad[:, :C] = weighted_mse_backward(cache["mse"], dloss)
    if cache["vlb"] is not None:
        scale = cache["vlb_weight"] * cache["T"] if cache["loss"] == "hybrid" else float(cache["T"])
        dterms = dloss * scale * cache["w"] / n
        grad += vlb_terms_backward(dterms, cache["vlb"], stop_mean_gradient=cache["loss"] == "hybrid")
    return grad.astype(cache["dtype"])
