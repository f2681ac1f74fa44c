"""The evaluation's outputs: a plain-text table (each figure beside its floor) and a PNG report
(sample grid, per-class hit rates, the samples nearest to a real image beside that image).

The PNG needs matplotlib (the `demo` extra), as the loss curve does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .viz import make_grid

__all__ = ["format_table", "save_report"]

# (key, label, direction): the direction says which way is better, so the table reads alone
_ROWS = (
    ("fd", None, "lower is better"),
    ("precision", "precision (k={k})", "higher; 1 = all samples on the real manifold"),
    ("recall", "recall (k={k})", "higher; 1 = all real data covered"),
    ("density", "density (k={k})", "~1 for real data"),
    ("coverage", "coverage (k={k})", "higher"),
    ("inception_score", "Inception-style score", "higher (in-project classifier)"),
    ("hit_rate", "class hit rate", "higher; floor = real images' accuracy"),
    ("bits_per_dim", "bits/dim", "lower (learned variance)"),
)


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def format_table(result: dict) -> str:
    """figure | samples | floor (the same figure of real data vs real data) | reading."""
    lines = [f"{'figure':<24} {'samples':>10} {'floor':>10}  reading",
             f"{'-' * 24} {'-' * 10} {'-' * 10}  {'-' * 30}"]
    for key, label, reading in _ROWS:
        if key not in result or (result[key] is None and key in ("hit_rate", "bits_per_dim")):
            continue
        label = (label or result["fd_name"]).format(k=result.get("k", 3))
        if key == "fd" and result.get("fd_draws", 1) > 1:
            reading = (f"lower; mean of {result['fd_draws']} reference draws, sd {result['fd_sd']:.3g} / "
                       f"{result['fd_floor_sd']:.3g}")
        lines.append(f"{label:<24} {_number(result[key]):>10} {_number(result.get(key + '_floor')):>10}  {reading}")
    memo = result["memorisation"]
    lines.append(f"{'memorisation ratio':<24} {_number(memo['ratio']):>10} {'1':>10}  median NN distance to "
                 f"real data / real-to-real ({memo['sample_nn_median']:.3f} / {memo['real_nn_median']:.3f})")
    lines.append(f"{'near-copy fraction':<24} {_number(memo['close_fraction']):>10} {'0.01':>10}  samples nearer "
                 f"than the closest 1% of real-to-real pairs")
    if result.get("hit_rate_per_class"):
        rates = " ".join("-" if r is None else f"{100 * r:.0f}" for r in result["hit_rate_per_class"])
        lines.append(f"hit rate per class (%): {rates}")
    lines.append(f"n = {result['n']} samples vs {result['n_reference']} real; floors: two disjoint real halves "
                 f"of {result['n_reference']}; feature net held-out accuracy "
                 f"{_number(result.get('feature_net_accuracy'))} ({result['fd_name']} is not FID)")
    return "\n".join(lines)


def _nearest_pairs(details: dict, count: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The `count` samples nearest to a real image (the likeliest copies) and those images."""
    order = np.argsort(details["nn_distance"], kind="stable")[:count]
    real = details["real"].images[details["pool_index"][details["nn_index"][order]]]
    return details["images"][order], real, details["nn_distance"][order]


def save_report(path, result: dict, details: dict, *, grid_count: int = 64, pairs: int = 8) -> Path:
    """A PNG: `grid_count` samples evenly spaced over the batch, per-class hit rates (when labelled), and the
    `pairs` samples nearest to a real image above that image, with the distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = details["images"]
    per_class = result.get("hit_rate_per_class")
    panels = 3 if per_class else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5), constrained_layout=True)
    # evenly spaced over the batch, so a batch ordered by class shows every class
    pick = np.unique(np.linspace(0, images.shape[0] - 1, min(grid_count, images.shape[0])).round().astype(np.int64))
    grid = make_grid(images[torch.from_numpy(pick)])
    axes[0].imshow(np.asarray(grid), cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"samples ({pick.size} of {images.shape[0]}, evenly spaced)")
    axes[0].axis("off")
    if per_class:
        classes = np.arange(len(per_class))
        axes[1].bar(classes, [np.nan if r is None else 100 * r for r in per_class], color="tab:blue")
        if result.get("hit_rate_floor") is not None:
            axes[1].axhline(100 * result["hit_rate_floor"], color="k", ls="--", label="real data (floor)")
            axes[1].legend(loc="lower right")
        axes[1].set(xticks=classes, ylim=(0, 105), xlabel="requested class", ylabel="hit rate (%)",
                    title=f"class hit rate {100 * result['hit_rate']:.1f}%")
    samples, real, distance = _nearest_pairs(details, pairs)
    both = torch.cat([samples, real])
    axes[-1].imshow(np.asarray(make_grid(both, nrow=samples.shape[0])), cmap="gray", vmin=0, vmax=255)
    axes[-1].set_title("nearest real neighbours (top: sample, bottom: real)\n"
                       "L2 " + " ".join(f"{d:.2f}" for d in distance), fontsize=9)
    axes[-1].axis("off")
    fig.suptitle(f"{result['fd_name']} {result['fd']:.3f} (floor {result['fd_floor']:.3f}), "
                 f"precision {result['precision']:.3f}, recall {result['recall']:.3f}")
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
