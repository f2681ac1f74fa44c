"""Sample-quality figures for point clouds: energy distance and sliced Wasserstein distance.

Both compare two samples x (n, d) and y (m, d) and are 0 only for equal distributions; for two
independent draws of one distribution they are positive and shrink with n (the "data floor").
Pairwise terms are summed block by block, so 5k x 5k needs a few tens of MB, not 200.
"""

from __future__ import annotations

import numpy as np

__all__ = ["energy_distance", "mean_pairwise_distance", "sliced_wasserstein"]


def _check_points(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiu" or x.dtype == bool:
        raise TypeError(f"{name} must have a real numeric dtype, got {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n, d >= 1, got {x.shape}")
    x = x.astype(np.float64, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _check_pair(x, y):
    x, y = _check_points(x, "x"), _check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def mean_pairwise_distance(x: np.ndarray, y: np.ndarray, block_size: int = 1024) -> float:
    """(1 / (n m)) sum_{i, j} |x_i - y_j| (Euclidean), x (n, d), y (m, d); blocks of rows of x."""
    x, y = _check_pair(x, y)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    y_sq = np.sum(y * y, axis=1)
    total = 0.0
    for start in range(0, x.shape[0], block_size):
        xb = x[start:start + block_size]
        if x.shape[1] <= 8:  # low dimension: exact coordinate differences
            sq = np.zeros((xb.shape[0], y.shape[0]))
            for k in range(x.shape[1]):
                sq += np.square(xb[:, k, None] - y[None, :, k])
        else:  # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, clipped at 0 against round-off
            sq = np.maximum(np.sum(xb * xb, axis=1)[:, None] + y_sq[None, :] - 2.0 * (xb @ y.T), 0.0)
        total += float(np.sqrt(sq).sum())
    return total / (x.shape[0] * y.shape[0])


def energy_distance(x: np.ndarray, y: np.ndarray, block_size: int = 1024) -> float:
    """sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|) over all pairs (Szekely & Rizzo 2013, Eq. 2.1).

    The expectations are empirical means over all n m, n^2 and m^2 pairs (the V-statistic,
    diagonal zeros included), as scipy.stats.energy_distance computes it in one dimension; the
    square root of the energy distance is a metric on distributions. x (n, d), y (m, d).
    """
    x, y = _check_pair(x, y)
    cross = mean_pairwise_distance(x, y, block_size)
    within_x = mean_pairwise_distance(x, x, block_size)
    within_y = mean_pairwise_distance(y, y, block_size)
    return float(np.sqrt(max(2.0 * cross - within_x - within_y, 0.0)))


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, num_projections: int = 256, seed: int = 0,
                       p: int = 1) -> float:
    """(E_theta W_p^p(theta.x, theta.y))^(1/p) over random unit directions (Bonneel et al. 2015).

    One-dimensional W_p between the projections compares sorted values (equal n, m) or the
    two quantile functions at (k + 1/2) / K, K = max(n, m). Directions come from
    numpy.random.default_rng(seed), so the figure is deterministic.
    """
    x, y = _check_pair(x, y)
    if isinstance(num_projections, bool) or not isinstance(num_projections, (int, np.integer)) or num_projections < 1:
        raise ValueError(f"num_projections must be a positive int, got {num_projections!r}")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    theta = np.random.default_rng(seed).standard_normal((x.shape[1], int(num_projections)))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    px, py = np.sort(x @ theta, axis=0), np.sort(y @ theta, axis=0)
    if px.shape[0] != py.shape[0]:
        levels = (np.arange(max(px.shape[0], py.shape[0])) + 0.5) / max(px.shape[0], py.shape[0])
        px = np.quantile(px, levels, axis=0)
        py = np.quantile(py, levels, axis=0)
    return float(np.mean(np.abs(px - py) ** p) ** (1.0 / p))
