"""Input checks shared by the reference: every error names the argument and what was expected."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def check_float_array(x, name: str, *, min_ndim: int = 1, allow_nonfinite: bool = False) -> np.ndarray:
    """An ndarray of float32/float64 with at least `min_ndim` dims and finite values."""
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple, float, int)) and not isinstance(x, bool):
            x = np.asarray(x, dtype=np.float64)
        else:
            raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {x.shape}")
    if not allow_nonfinite and not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}, got {b.shape}")


def result_dtype(*arrays) -> np.dtype:
    """float32 only when every array is float32 ("float32 on request"), else float64."""
    return np.dtype(np.float32) if all(a.dtype == np.float32 for a in arrays if a is not None) else np.dtype(np.float64)


def check_timesteps(t, batch: int, T: int, name: str = "t", *, allow_minus_one: bool = False) -> np.ndarray:
    """Integer timesteps as an int64 array of shape (batch,): an int broadcasts."""
    arr = np.asarray(t)
    if isinstance(t, (bool, np.bool_)) or arr.dtype == bool or arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an int or an integer array, got {arr.dtype if arr.dtype != object else type(t).__name__}")
    if arr.ndim == 0:
        arr = np.full((batch,), int(arr), dtype=np.int64)
    if arr.shape != (batch,):
        raise ValueError(f"{name} must be an int or have shape ({batch},), got {arr.shape}")
    lo = -1 if allow_minus_one else 0
    if arr.size and (arr.min() < lo or arr.max() >= T):
        raise ValueError(f"{name} must lie in [{lo}, {T - 1}] for T = {T}, got min {arr.min()} max {arr.max()}")
    return arr.astype(np.int64)


def per_sample(values: np.ndarray, ndim: int) -> np.ndarray:
    """(N,) -> (N, 1, ..., 1) broadcastable against an ndim-dimensional batch."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def check_clip(clip):
    """None, or a finite pair (lo, hi) with lo < hi, returned as floats."""
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise TypeError(f"clip must be None or a pair (lo, hi), got {clip!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"clip must satisfy lo < hi (finite), got {clip!r}")
    return lo, hi


def check_samples(samples, n: int) -> np.ndarray:
    """Global sample indices as an (n,) int64 array; None means arange(n)."""
    if samples is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(samples)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"samples must be integer sample indices, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"samples must have shape ({n},), got {arr.shape}")
    return arr.astype(np.int64)


def check_eta(eta) -> float:
    """DDIM's eta: a number in [0, 1] (eta > 1 asks for sigma^2 > 1 - alpha_bar_prev)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)):
        raise TypeError(f"eta must be a number, got {type(eta).__name__}")
    if not np.isfinite(eta) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return float(eta)


def check_seed(seed, name: str = "seed") -> int:
    """A seed of the noise stream: an int in [0, 2**64), the 64-bit Philox key (DESIGN contract 2).

    One range for every seed of the house (training, sampling, data order), so a seed that
    trains also samples. kernels/validate.py keeps a copy because kernels never import reference.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"{name} must lie in [0, 2**64), got {seed}")
    return int(seed)


def check_class_labels(y, num_classes: int, name: str = "y", *, allow_null: bool = False) -> np.ndarray:
    """Integer class ids (host values: an int, a sequence, an ndarray or a CPU tensor) as int64.

    Ids lie in [0, num_classes); with allow_null the id num_classes (the null class of
    classifier-free guidance) is accepted too. The shape is the caller's to check.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    arr = np.asarray(y)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        got = type(y).__name__ if arr.dtype == object else arr.dtype
        raise TypeError(f"{name} must be integer class ids, got {got}")
    high = num_classes + 1 if allow_null else num_classes
    if arr.size and (arr.min() < 0 or arr.max() >= high):
        span = f"[0, {num_classes}] ({num_classes} = the null class)" if allow_null else f"[0, {num_classes})"
        got = f"{int(arr)}" if arr.ndim == 0 else f"min {arr.min()} max {arr.max()}"
        raise ValueError(f"{name} must lie in {span}, got {got}")
    return arr.astype(np.int64)  # a copy: models cache it for backward


def _shape_of(value) -> tuple:
    """The shape of an array or a tensor (np.shape reads `.shape` first), or a shape given as a tuple."""
    return tuple(value) if isinstance(value, tuple) else tuple(np.shape(value))


def _format_names(kind: str, names: list, limit: int = 10) -> str:
    more = " ..." if len(names) > limit else ""
    return f"{kind} {len(names)} key(s): {names[:limit]}{more}"


def check_parameter_names(expected, params, what: str = "params", against: str = "the UNet config") -> None:
    """Raise a ValueError listing every missing, unexpected and mis-shaped parameter at once.

    expected: name -> shape (e.g. parameter_shapes(config)); params: name -> array, tensor or
    shape. One check for the NumPy model, the torch model and checkpoints, because the contract
    (DESIGN 3) is one parameter naming: a state dict moves between them by name.
    """
    missing = [name for name in expected if name not in params]
    unexpected = [name for name in params if name not in expected]
    wrong = [f"{name}: expected {tuple(expected[name])}, got {_shape_of(params[name])}"
             for name in expected if name in params and _shape_of(params[name]) != tuple(expected[name])]
    if missing or unexpected or wrong:
        parts = ([_format_names("missing", missing)] if missing else []) + \
                ([_format_names("unexpected", unexpected)] if unexpected else [])
        if wrong:
            parts.append(f"{len(wrong)} wrong shape(s): {wrong[:10]}" + (" ..." if len(wrong) > 10 else ""))
        raise ValueError(f"{what} does not match {against}: " + "; ".join(parts))
