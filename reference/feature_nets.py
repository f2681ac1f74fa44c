"""The in-project feature networks' settings and data splits (what ddpm.feature_net trains).

Each evaluation dataset has one small CNN classifier whose penultimate layer gives the features
of the Frechet distance, precision/recall and density/coverage, and whose softmax gives the
class hit rate and the Inception-style score. The figures are named after the data (FD-digits,
FD-mnist): they are not FID, which uses Inception-v3 features of ImageNet images.

Splits (fixed, so every helper's feature net sees the same held-out images):
- digits: scikit-learn's 1,797 8x8 digits; per class, a seeded permutation (default_rng(0))
  holds out round(0.2 n_class) images: 1,438 train / 359 held out.
- mnist: the 10k MNIST test split at ../shared/data/mnist; the first 9,000 by index train, the
  last 1,000 are held out (the same split the MNIST diffusion model trains on).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

__all__ = ["FEATURE_NET_PRESETS", "FEATURE_NET_DATA", "feature_net_preset", "feature_net_split",
           "preset_fingerprint"]

# widths: channels of the two conv blocks (conv3x3 + ReLU + 2x2 max pool each); feature_dim:
# the penultimate (feature) layer; the rest are the training settings (Adam, fixed seed).
FEATURE_NET_PRESETS = {
    "digits": {"image_size": 8, "channels": 1, "num_classes": 10, "widths": (32, 64), "feature_dim": 64,
               "epochs": 15, "batch_size": 64, "lr": 2e-3, "seed": 0, "held_out_fraction": 0.2},
    "mnist": {"image_size": 28, "channels": 1, "num_classes": 10, "widths": (16, 32), "feature_dim": 128,
              "epochs": 4, "batch_size": 64, "lr": 1e-3, "seed": 0, "train_size": 9000},
}
FEATURE_NET_DATA = tuple(FEATURE_NET_PRESETS)
ARCHITECTURE_VERSION = 1  # bump when the torch module changes: cached weights then retrain


def feature_net_preset(data: str) -> dict:
    """The settings of the feature net for `data` ("digits" or "mnist"), a copy."""
    if data not in FEATURE_NET_PRESETS:
        raise ValueError(f"data must be one of {FEATURE_NET_DATA} for a built-in feature net, got {data!r}")
    return dict(FEATURE_NET_PRESETS[data])


def preset_fingerprint(data: str) -> str:
    """12 hex digits naming (data, settings, architecture version): the cache file's key."""
    text = json.dumps({"data": data, "preset": feature_net_preset(data), "version": ARCHITECTURE_VERSION},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def feature_net_split(data: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), sorted int64, for the dataset's labels (n,)."""
    preset = feature_net_preset(data)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    n = labels.shape[0]
    if "train_size" in preset:
        if n <= preset["train_size"]:
            raise ValueError(f"labels: {data} needs more than {preset['train_size']} images, got {n}")
        index = np.arange(n, dtype=np.int64)
        return index[:preset["train_size"]], index[preset["train_size"]:]
    rng = np.random.default_rng(preset["seed"])
    held_out = []
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        held_out.append(members[:int(round(preset["held_out_fraction"] * members.size))])
    held = np.sort(np.concatenate(held_out)).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), held)
    return train, held
