"""Dense layers with hand-written backward passes, each forward directly above its backward.

Every forward returns (out, cache); every backward takes (dout, cache) and returns the gradient
of the input first, then the parameter gradients. Shapes are stated in the first line of each.
float64 unless the inputs are all float32. These dense forwards check shapes and dtypes
(TypeError/ValueError naming the argument) but do not scan values for NaN: the models' entry
points (x_t, t, labels) and the losses reject non-finite input. (conv2d, group_norm_silu and
attention_block, public ops of their own, do scan their inputs.)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "linear", "linear_backward",
    "silu", "silu_backward",
    "elu", "elu_backward",
    "embedding", "embedding_backward",
    "timestep_frequencies",
    "timestep_embedding",
]


def _check_float(x, name: str) -> None:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")


# ----------------------------------------------------------------------------- linear

def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None):
    """x (..., IN), weight (OUT, IN), bias (OUT,) -> out (..., OUT) = x W^T + b."""
    _check_float(x, "x")
    _check_float(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must have shape (OUT, IN), got {weight.shape}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1] if x.ndim else 0} features but weight expects {weight.shape[1]}")
    out = x @ weight.T
    if bias is not None:
        _check_float(bias, "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
        out = out + bias
    return out, (x, weight, bias is not None)


def linear_backward(dout: np.ndarray, cache):
    """dout (..., OUT) -> dx (..., IN), dweight (OUT, IN), dbias (OUT,) or None."""
    x, weight, has_bias = cache
    dx = dout @ weight                                          # d/dx (x W^T) = dout W
    x2 = x.reshape(-1, x.shape[-1])
    d2 = dout.reshape(-1, dout.shape[-1])
    dweight = d2.T @ x2                                         # sum over rows of dout^T x
    dbias = d2.sum(axis=0) if has_bias else None
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- activations

def _sigmoid(x: np.ndarray) -> np.ndarray:
    # stable for large |x|: exp of a non-positive number only
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(x: np.ndarray):
    """x (any) -> x * sigmoid(x) (Elfwing et al. 2018), same shape."""
    _check_float(x, "x")
    s = _sigmoid(x)
    return x * s, (x, s)


def silu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """d silu/dx = s + x s (1 - s) = s (1 + x (1 - s))."""
    x, s = cache
    return dout * s * (1.0 + x * (1.0 - s))


def elu(x: np.ndarray, alpha: float = 1.0):
    """x (any) -> x if x > 0 else alpha (exp(x) - 1), same shape (Clevert et al. 2016)."""
    _check_float(x, "x")
    neg = alpha * np.expm1(np.minimum(x, 0.0))
    return np.where(x > 0, x, neg), (x, alpha)


def elu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """d elu/dx = 1 if x > 0 else alpha exp(x)."""
    x, alpha = cache
    return dout * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


# ----------------------------------------------------------------------------- embeddings

def embedding(ids: np.ndarray, table: np.ndarray):
    """ids (N,) integers in [0, V), table (V, D) -> rows (N, D)."""
    ids = np.asarray(ids)
    _check_float(table, "table")
    if table.ndim != 2:
        raise ValueError(f"table must have shape (V, D), got {table.shape}")
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"ids must lie in [0, {table.shape[0] - 1}], got min {ids.min()} max {ids.max()}")
    return table[ids], (ids, table.shape)


def embedding_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (N, D) -> dtable (V, D): rows scattered back, repeated ids summed."""
    ids, shape = cache
    dtable = np.zeros(shape, dtype=dout.dtype)
    np.add.at(dtable, ids, dout)
    return dtable


def timestep_frequencies(dim: int, freq_shift: float = 1.0, max_period: float = 10000.0) -> np.ndarray:
    """(dim // 2,) float64 freq_k = exp(-log(max_period) k / (dim/2 - freq_shift)), k < dim/2.

    The frequencies of `timestep_embedding` (DDPM's get_timestep_embedding: freq_shift = 1).
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    half = dim // 2
    if half < 1 or half - freq_shift <= 0:
        # the exponent divides by half - freq_shift: dim 2 with freq_shift 1 would be 0 / 0
        raise ValueError(f"dim must satisfy dim // 2 > freq_shift ({freq_shift}), got dim={dim}")
    return np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / (half - freq_shift))


def timestep_embedding(t, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0,
                       max_period: float = 10000.0, dtype=np.float64) -> np.ndarray:
    """t (N,) -> (N, dim) sinusoidal embedding (Vaswani et al. 2017, as in the DDPM UNet).

    freq_k = exp(-log(max_period) k / (dim/2 - freq_shift)), k < dim/2;
    emb = [sin(t freq), cos(t freq)] ([cos, sin] when flipped); odd dim pads one zero column.
    No parameters, no backward: t is an integer input.
    """
    freqs = timestep_frequencies(dim, freq_shift, max_period)
    half = freqs.shape[0]
    t_arr = np.asarray(t)
    if t_arr.dtype == bool or not (np.issubdtype(t_arr.dtype, np.integer) or np.issubdtype(t_arr.dtype, np.floating)):
        raise TypeError(f"t must be integer or float timesteps, got dtype {t_arr.dtype}")
    t = t_arr.astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(t)):
        raise ValueError("t contains NaN or inf")
    args = t[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(dtype)
