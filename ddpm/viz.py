"""Pictures: sample grids (PNG), the reverse process as a GIF, the loss curve.

Grids and GIFs use Pillow only; the loss curve needs matplotlib (the `demo` extra). Images are
model-space tensors (N, C, H, W) in [-1, 1]; C is 1 (grey) or 3 (RGB). Small images (the 8x8
digits) are enlarged with nearest-neighbour so that every pixel stays visible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["to_uint8", "make_grid", "save_grid", "save_gif", "save_loss_curve", "smooth"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 in [0, 255] (values clipped)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in (1, 3), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [-1, 1], got {images.dtype}")
    x = images.detach().to("cpu", torch.float32)
    x = torch.nan_to_num(x, nan=0.0).clamp(-1.0, 1.0)
    x = ((x + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, *, padding: int = 2,
              scale: int | None = None, pad_value: int = 255):
    """A PIL image of the batch laid out `nrow` images per row (default: a square-ish grid).

    scale: integer enlargement per pixel (default: enough for ~48 px per image).
    """
    from PIL import Image

    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    if n == 0:
        raise ValueError("images is empty: nothing to draw")
    nrow = int(math.ceil(math.sqrt(n))) if nrow is None else int(nrow)
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    scale = max(1, int(math.ceil(48 / max(h, w)))) if scale is None else int(scale)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * h + (rows + 1) * padding, nrow * w + (nrow + 1) * padding, c), pad_value, np.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = pixels[k]
    return Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")


def save_grid(path, images: torch.Tensor, nrow: int | None = None, **kwargs) -> Path:
    """Write `make_grid(images, nrow)` as a PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow, **kwargs).save(path, format="PNG")
    return path


def save_gif(path, frames: Sequence[torch.Tensor], nrow: int | None = None, *,
             duration_ms: int = 80, hold_last_ms: int = 1500, **kwargs) -> Path:
    """An animated GIF, one grid per frame (e.g. x_t along the reverse process), looping."""
    if len(frames) == 0:
        raise ValueError("frames is empty: nothing to animate")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [make_grid(f, nrow, **kwargs) for f in frames]
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    pictures[0].save(path, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=durations, loop=0)
    return path


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over the finite values (NaN where none are in the window)."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, v, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    count = ccount[idx] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[idx] - csum[lo]) / count, np.nan)


def save_loss_curve(path, history: dict, *, title: str = "training loss") -> Path:
    """Plot history["loss"] against history["step"] (raw and smoothed, log scale) as a PNG.

    Skipped (non-finite) steps are marked on the x axis. Needs matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the loss curve needs matplotlib: pip install 'ddpm-kernels[demo]' "
                           "(or pip install matplotlib)") from None
    steps = np.asarray(history.get("step", []), dtype=np.float64)
    loss = np.asarray(history.get("loss", []), dtype=np.float64)
    if steps.size == 0 or steps.shape != loss.shape:
        raise ValueError(f"history needs equally long 'step' and 'loss' lists, got {steps.shape} and {loss.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    finite = np.isfinite(loss) & (loss > 0)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps[finite], loss[finite], color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    window = max(1, steps.size // 50)
    ax.plot(steps, smooth(loss, window), color="tab:blue", linewidth=1.8, label=f"mean of {window}")
    bad = ~np.isfinite(loss)
    if bad.any():
        ax.plot(steps[bad], np.full(bad.sum(), np.nanmin(loss[finite]) if finite.any() else 1.0), "x",
                color="tab:red", label=f"skipped ({int(bad.sum())})")
    if finite.any():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
