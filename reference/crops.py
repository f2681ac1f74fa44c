"""Where a training image is cropped: the centre square, or a random square drawn from the
noise stream's Philox generator as a pure function of (seed, global sample position).

The global sample position p is the count of items the data order has handed out before this
one (`ddpm.data.EpochSampler.position`: epoch * n + offset), so the crop a step sees does not
depend on the process that loads it, on a DataLoader worker's RNG, or on where a run resumed.

Counter layout. Every noise draw (DESIGN contract 2) uses counter (j, 0, i, s): word 1 is 0.
Data augmentation uses word 1 = AUGMENT_COUNTER_WORD, so its counters never meet a noise
draw's, and the 64-bit position fills words 2 and 3:

    counter = (0, 1, p & 0xffffffff, p >> 32),  key = (seed & 0xffffffff, seed >> 32)
    u_k     = word_k / 2^32  (exact in float64, as reference.importance_draws reads a word)

    area fraction a = min_scale + (1 - min_scale) u_0     (of the short side's square)
    side            = clip(round(sqrt(a) * min(H, W)), 1, min(H, W))
    top, left       = floor(u_2 (H - side + 1)), floor(u_3 (W - side + 1))

A box is (top, left, side): the square [top, top + side) x [left, left + side).
"""

from __future__ import annotations

import numpy as np

from ._validate import check_seed
from .noise import philox4x32

__all__ = ["AUGMENT_COUNTER_WORD", "center_crop_box", "random_crop_boxes"]

AUGMENT_COUNTER_WORD = 1


def _check_size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def center_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """The largest centred square (top, left, side); the offsets round down, as ddpm.data's
    in-memory fit does."""
    height, width = _check_size(height, "height"), _check_size(width, "width")
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def random_crop_boxes(seed: int, positions, heights, widths, min_scale: float) -> np.ndarray:
    """Random square crops for the global sample positions `positions` (module docstring).

    positions: (N,) non-negative integers < 2^64; heights, widths: (N,) or scalars, the image
    sizes; min_scale in (0, 1]: the smallest area fraction of the short side's square.
    Returns int64 (N, 3): top, left, side.
    """
    seed = check_seed(seed)
    if isinstance(min_scale, bool) or not isinstance(min_scale, (int, float, np.floating)) \
            or not (0.0 < float(min_scale) <= 1.0):
        raise ValueError(f"min_scale must lie in (0, 1], got {min_scale!r}")
    positions = np.asarray(positions)
    if positions.ndim != 1 or not (np.issubdtype(positions.dtype, np.integer) or positions.size == 0):
        raise ValueError(f"positions must be a 1-d integer array, got {positions.dtype} {positions.shape}")
    if positions.size and positions.min() < 0:
        raise ValueError(f"positions must be >= 0, got min {positions.min()}")
    n = positions.size
    heights = np.broadcast_to(np.asarray(heights, dtype=np.int64), (n,))
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), (n,))
    if n and (heights.min() < 1 or widths.min() < 1):
        raise ValueError("heights and widths must be positive")
    p = positions.astype(np.uint64)
    counter = np.zeros((n, 4), dtype=np.uint32)
    counter[:, 1] = AUGMENT_COUNTER_WORD
    counter[:, 2] = (p & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    counter[:, 3] = (p >> np.uint64(32)).astype(np.uint32)
    words = philox4x32(counter, np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32))
    u = words.astype(np.float64) / 2.0**32  # (N, 4) in [0, 1), exact
    short = np.minimum(heights, widths)
    area = float(min_scale) + (1.0 - float(min_scale)) * u[:, 0]
    side = np.clip(np.round(np.sqrt(area) * short), 1, short).astype(np.int64)
    top = np.floor(u[:, 2] * (heights - side + 1)).astype(np.int64)
    left = np.floor(u[:, 3] * (widths - side + 1)).astype(np.int64)
    return np.stack([top, left, side], axis=1)

