"""LayerNorm followed by the adaLN modulation of DiT (Peebles & Xie 2023, Sec. 3.2), forward above backward.

    x (N, L, D) tokens, shift (N, D), scale (N, D) per sample (from the conditioning)
    x_hat = (x - mean_D(x)) / sqrt(var_D(x) + eps)      LayerNorm without affine (Ba et al. 2016)
    y     = x_hat * (1 + scale) + shift                  adaLN: the affine comes from the condition

The transformer's analogue of `group_norm_silu`: one op, so the fused kernel (`kernels.
layer_norm_modulate`) replaces it. float64 unless every input is float32.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_float_array, result_dtype

__all__ = ["layer_norm_modulate", "layer_norm_modulate_backward"]


def _check(x, shift, scale, eps):
    x = check_float_array(x, "x", min_ndim=3)
    if x.ndim != 3:
        raise ValueError(f"x must be (N, L, D) tokens, got shape {x.shape}")
    n, _, d = x.shape
    shift = check_float_array(shift, "shift")
    scale = check_float_array(scale, "scale")
    for name, value in (("shift", shift), ("scale", scale)):
        if value.shape != (n, d):
            raise ValueError(f"{name} must have shape (N, D) = {(n, d)}, got {value.shape}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    dtype = result_dtype(x, shift, scale)
    return x.astype(dtype, copy=False), shift.astype(dtype, copy=False), scale.astype(dtype, copy=False)


def layer_norm_modulate(x: np.ndarray, shift: np.ndarray, scale: np.ndarray, eps: float = 1e-6):
    """x (N, L, D), shift (N, D), scale (N, D) -> (y (N, L, D), cache).

    The cache keeps x_hat and rstd = 1 / sqrt(var + eps) (N, L, 1), what the backward needs.
    """
    x, shift, scale = _check(x, shift, scale, eps)
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)           # biased, as torch LayerNorm
    rstd = 1.0 / np.sqrt(var + eps)
    x_hat = centred * rstd
    y = x_hat * (1.0 + scale[:, None, :]) + shift[:, None, :]
    return y, (x_hat, rstd, scale)


def layer_norm_modulate_backward(dy: np.ndarray, cache):
    """dy (N, L, D) -> dx (N, L, D), dshift (N, D), dscale (N, D).

    dshift = sum_L dy;  dscale = sum_L dy x_hat;  with g = dy (1 + scale) the gradient at x_hat,
    dx = rstd (g - mean_D(g) - x_hat mean_D(g x_hat))   (the LayerNorm Jacobian).
    """
    x_hat, rstd, scale = cache
    if dy.shape != x_hat.shape:
        raise ValueError(f"dy must have the forward output's shape {x_hat.shape}, got {dy.shape}")
    dshift = dy.sum(axis=1)
    dscale = (dy * x_hat).sum(axis=1)
    g = dy * (1.0 + scale[:, None, :])
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))
    return dx, dshift, dscale
