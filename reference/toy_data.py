"""2-D toy datasets for the MLP DDPM: two moons, 8 gaussians, swiss roll, checkerboard.

Every point is an independent draw (fresh draws give the data floor of the demo's quality
figure), scaled to a per-coordinate standard deviation near 1 to match the N(0, I) prior.
Labels where natural: which moon (2 classes), which gaussian (8 classes); the swiss roll and the
checkerboard have none. Draws come from `numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

import math

import numpy as np

from ._validate import check_seed

__all__ = ["DATASETS", "make_dataset", "dataset_num_classes"]

# name -> number of classes (None: no labels)
DATASETS = {"moons": 2, "8gaussians": 8, "swissroll": None, "checkerboard": None}


def _moons(rng, n):
    # sklearn's make_moons with uniform (not evenly spaced) angles, noise 0.05, then centred
    # (mean (0.5, 0.25)) and divided by 0.7 (root-mean-square coordinate std ~1).
    label = rng.integers(0, 2, n)
    theta = rng.uniform(0.0, math.pi, n)
    outer = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    inner = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    x = np.where(label[:, None] == 0, outer, inner) + 0.05 * rng.standard_normal((n, 2))
    x = (x - np.array([0.5, 0.25])) / 0.7
    return x, label


def _eight_gaussians(rng, n):
    # FFJORD's 8 gaussians: centres on a circle at angles k pi/4, std 0.1 (radius sqrt(2)).
    label = rng.integers(0, 8, n)
    angle = label * (math.pi / 4.0)
    centres = math.sqrt(2.0) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + 0.1 * rng.standard_normal((n, 2)), label


def _swiss_roll(rng, n):
    # sklearn's make_swiss_roll (x, z coordinates), noise 0.25, divided by 7.
    u = 1.5 * math.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, n))
    x = np.stack([u * np.cos(u), u * np.sin(u)], axis=1) + 0.25 * rng.standard_normal((n, 2))
    return x / 7.0, None


def _checkerboard(rng, n):
    # FFJORD's checkerboard: 8 unit squares of a 4x4 board on [-2, 2]^2, scaled by 0.9.
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.mod(np.floor(x1), 2.0)
    return 0.9 * np.stack([x1, x2], axis=1), None


_MAKERS = {"moons": _moons, "8gaussians": _eight_gaussians, "swissroll": _swiss_roll,
           "checkerboard": _checkerboard}


def dataset_num_classes(name: str) -> int | None:
    """The number of classes of dataset `name`, None when it has no labels."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    return DATASETS[name]


def make_dataset(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """n independent points of dataset `name`: x (n, 2) float64 and labels (n,) int64 or None."""
    dataset_num_classes(name)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    x, label = _MAKERS[name](np.random.default_rng(check_seed(seed)), int(n))
    x = np.ascontiguousarray(x, dtype=np.float64)
    return x, None if label is None else label.astype(np.int64)
