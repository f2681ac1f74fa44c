"""GroupNorm (Wu & He 2018) and the fused GroupNorm + SiLU: the specification of the GPU kernel.

`group_norm_silu` is one op, forward directly above backward (STYLE.md, llm.c). It is the
definition `kernels.group_norm_silu` is tested against (DESIGN contract 4), so every step is
spelled out:

    x      (N, C, *spatial)          any number of spatial dims, none included
    shift  (N, C) or None            optional, added to x before the norm (the ResBlock's
                                     time-embedding add, which the kernel fuses)
    u      = x + shift[:, :, None, ...]
    groups G with C = G * Cg; a group holds M = Cg * prod(spatial) values of one sample
    mean   = (1/M) sum_group u                        (N, G)
    var    = (1/M) sum_group (u - mean)^2             (N, G)  biased, as torch.nn.GroupNorm
    rstd   = 1 / sqrt(var + eps)                      (N, G)
    x_hat  = (u - mean) * rstd                        (N, C, *spatial)
    a      = weight[c] * x_hat + bias[c]              the affine GroupNorm output
    y      = a * sigmoid(a)  (SiLU, Elfwing et al. 2018)   or y = a when activation=False

`group_norm` / `group_norm_backward` are this op with activation=False: no second copy.

Statistics are computed in float64 by default, also for float32 inputs (`stats_dtype=np.float32`
computes everything in float32, as a float32 kernel would). Outputs are float32 only when every
input array is float32 (the reference's "float32 on request").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import check_float_array, result_dtype
from .layers import silu, silu_backward

__all__ = ["group_norm_silu", "group_norm_silu_backward", "group_norm", "group_norm_backward",
           "GroupNormCache"]


@dataclass
class GroupNormCache:
    """What the backward needs: the normalised input, 1/std, the affine output and its sigmoid."""

    x_hat: np.ndarray        # (N, C, *spatial), compute dtype
    rstd: np.ndarray         # (N, G), compute dtype
    weight: np.ndarray | None  # (C,), compute dtype
    sigmoid_a: np.ndarray | None  # (N, C, *spatial) sigmoid(a), None without activation
    a: np.ndarray | None     # (N, C, *spatial) affine output, None without activation
    groups: int
    x_dtype: np.dtype
    weight_dtype: np.dtype | None
    bias_dtype: np.dtype | None
    has_bias: bool


def _check_groups(groups, channels: int) -> int:
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if channels % groups:
        raise ValueError(f"groups={groups} must divide the channel count C={channels} "
                         f"(x.shape[1]), got remainder {channels % groups}")
    return groups


def _check_affine(p, name: str, channels: int):
    if p is None:
        return None
    p = check_float_array(p, name)
    if p.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one per channel of x), got {p.shape}")
    return p


def _per_channel(p: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) -> (1, C, 1, ..., 1) for an ndim-dimensional (N, C, *spatial) array."""
    return p.reshape((1, -1) + (1,) * (ndim - 2))


# ----------------------------------------------------------------------------- group_norm_silu

def group_norm_silu(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None,
                    groups: int, eps: float = 1e-5, activation: bool = True, *,
                    shift: np.ndarray | None = None, stats_dtype=np.float64):
    """y = SiLU(GroupNorm(x + shift)) (or the GroupNorm alone); returns (y, cache).

    x (N, C, *spatial) float32/float64; weight, bias (C,) or None (None = 1 and 0);
    shift (N, C) or None; groups must divide C; eps > 0 is added to the biased variance.
    y has x's shape; float32 only when x, weight, bias and shift are all float32.
    """
    x = check_float_array(x, "x", min_ndim=2)
    n, c = x.shape[:2]
    groups = _check_groups(groups, c)
    weight = _check_affine(weight, "weight", c)
    bias = _check_affine(bias, "bias", c)
    if shift is not None:
        shift = check_float_array(shift, "shift")
        if shift.shape != (n, c):
            raise ValueError(f"shift must have shape (N, C) = {(n, c)}, got {shift.shape}")
    if not (isinstance(eps, (int, float, np.floating)) and np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    stats_dtype = np.dtype(stats_dtype)
    if stats_dtype not in (np.float32, np.float64):
        raise TypeError(f"stats_dtype must be float32 or float64, got {stats_dtype}")
    out_dtype = result_dtype(x, weight, bias, shift)

    u = x.astype(stats_dtype, copy=False)
    if shift is not None:
        u = u + shift.astype(stats_dtype).reshape((n, c) + (1,) * (x.ndim - 2))
    ug = u.reshape(n, groups, -1)                                        # (N, G, M)
    mean = ug.mean(axis=2, keepdims=True)                                # (N, G, 1)
    centered = ug - mean
    var = np.mean(centered * centered, axis=2, keepdims=True)            # biased variance
    rstd = 1.0 / np.sqrt(var + stats_dtype.type(eps))                    # (N, G, 1)
    x_hat = (centered * rstd).reshape(x.shape)

    w = None if weight is None else weight.astype(stats_dtype)
    a = x_hat if w is None else x_hat * _per_channel(w, x.ndim)
    if bias is not None:
        a = a + _per_channel(bias.astype(stats_dtype), x.ndim)
    if activation:
        y, (_, s) = silu(a)
    else:
        s = None
        y = a
    cache = GroupNormCache(
        x_hat=x_hat, rstd=rstd.reshape(n, groups), weight=w,
        sigmoid_a=s, a=a if activation else None, groups=groups, x_dtype=x.dtype,
        weight_dtype=None if weight is None else weight.dtype,
        bias_dtype=None if bias is None else bias.dtype, has_bias=bias is not None,
    )
    return y.astype(out_dtype, copy=False), cache


def group_norm_silu_backward(dy: np.ndarray, cache: GroupNormCache):
    """dy (N, C, *spatial) -> dx (N, C, *spatial), dweight (C,) or None, dbias (C,) or None.

    With a shift in the forward, d shift = dx summed over the spatial axes (u = x + shift).
    """
    if not isinstance(cache, GroupNormCache):
        raise TypeError(f"cache must be the GroupNormCache from group_norm_silu, got {type(cache).__name__}")
    dy = check_float_array(dy, "dy", min_ndim=2)
    x_hat = cache.x_hat
    if dy.shape != x_hat.shape:
        raise ValueError(f"dy must have the forward output's shape {x_hat.shape}, got {dy.shape}")
    dtype = x_hat.dtype
    dy = dy.astype(dtype, copy=False)
    n, c = x_hat.shape[:2]
    reduce_axes = (0,) + tuple(range(2, x_hat.ndim))

    # SiLU: dy/da = s + a s (1 - s) = s (1 + a (1 - s))
    if cache.sigmoid_a is not None:
        da = silu_backward(dy, (cache.a, cache.sigmoid_a))
    else:
        da = dy
    # affine: a = w x_hat + b
    dbias = da.sum(axis=reduce_axes) if cache.has_bias else None
    dweight = (da * x_hat).sum(axis=reduce_axes) if cache.weight is not None else None
    dx_hat = da if cache.weight is None else da * _per_channel(cache.weight, da.ndim)
    # normalisation, per group of M values:
    #   du = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
    dx_hat_g = dx_hat.reshape(n, cache.groups, -1)
    x_hat_g = x_hat.reshape(n, cache.groups, -1)
    mean_dx_hat = dx_hat_g.mean(axis=2, keepdims=True)
    mean_dx_hat_x_hat = (dx_hat_g * x_hat_g).mean(axis=2, keepdims=True)
    rstd = cache.rstd[:, :, None]
    dx = (rstd * (dx_hat_g - mean_dx_hat - x_hat_g * mean_dx_hat_x_hat)).reshape(x_hat.shape)

    out_dx_dtype = result_dtype(dy, np.empty(0, cache.x_dtype))
    dx = dx.astype(out_dx_dtype, copy=False)
    if dweight is not None:
        dweight = dweight.astype(cache.weight_dtype, copy=False)
    if dbias is not None:
        dbias = dbias.astype(cache.bias_dtype, copy=False)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- group_norm

def group_norm(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None,
               groups: int, eps: float = 1e-5, *, stats_dtype=np.float64):
    """Affine GroupNorm: x (N, C, *spatial) -> (N, C, *spatial); `group_norm_silu` without SiLU."""
    return group_norm_silu(x, weight, bias, groups, eps, activation=False, stats_dtype=stats_dtype)


def group_norm_backward(dy: np.ndarray, cache: GroupNormCache):
    """dy (N, C, *spatial) -> dx, dweight (C,) or None, dbias (C,) or None."""
    if cache.sigmoid_a is not None:
        raise ValueError("cache comes from group_norm_silu with activation=True; "
                         "use group_norm_silu_backward")
    return group_norm_silu_backward(dy, cache)
