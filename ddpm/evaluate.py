"""Sample quality in the feature space of an in-project classifier, each figure beside its floor.

    from ddpm.evaluate import sample_quality
    q = sample_quality(images, data="digits", labels=None, seed=0)
    q["fd"], q["fd_floor"], q["precision"], q["recall"], q["hit_rate"], q["n"]

images: (N, C, H, W) torch tensor or NumPy array in [-1, 1] at the data's size (digits 1x8x8,
mnist 1x28x28). The real images are split by a seeded permutation (reference.real_halves) into
a reference half A and a floor half B of min(N, len(real) // 2) images each: every figure
compares the samples with A, and its floor is the same figure of B against A (what a perfect
generator gets at this size). Features are the feature net's penultimate layer
(ddpm.feature_net; FD-digits / FD-mnist, not FID); the metric definitions are reference.eval_metrics'.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

import reference
from reference import eval_metrics

from .data import DataError, ImageDataset, load_dataset, read_idx
from .feature_net import FeatureNet, default_feature_net, load_feature_net, reference_dataset

__all__ = ["EvaluationError", "sample_quality", "quality_with_details", "resolve_feature_net",
           "check_images", "check_labels", "load_reference", "native_image_shape"]

# How far outside [-1, 1] a sample may stray (an unclipped sampler overshoots a little; it is
# clamped, as saving a PNG would); beyond this the images are in another scale, e.g. [0, 255].
RANGE_SLACK = 0.5


class EvaluationError(DataError):
    """Inputs that cannot be evaluated: the message names the argument (CLI: one line, status 2)."""


# ----------------------------------------------------------------------------- input checks

def check_images(images, shape: tuple[int, int, int], name: str = "images") -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] of the feature net's `shape` -> float32 CPU tensor, clamped."""
    if isinstance(images, np.ndarray):
        if images.dtype.kind not in "fiu":
            raise EvaluationError(f"{name} must be a real numeric array, got dtype {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise EvaluationError(f"{name} must be a torch tensor or NumPy array, got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise EvaluationError(f"{name} must have shape (N, {', '.join(map(str, shape))}) to fit the "
                              f"feature network, got {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(x.flatten(1)).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise EvaluationError(f"{name} contains NaN or inf in {int(bad.sum())} of {x.shape[0]} samples "
                              f"(first {rows})")
    if x.numel() and (x.min() < -1 - RANGE_SLACK or x.max() > 1 + RANGE_SLACK):
        raise EvaluationError(f"{name} must lie in [-1, 1] (model space), got values in "
                              f"[{x.min():.4g}, {x.max():.4g}]; map [0, 255] images by x / 127.5 - 1")
    return x.clamp(-1.0, 1.0).to(torch.float32)


def check_labels(labels, n: int, num_classes: int, name: str = "labels") -> np.ndarray | None:
    """None, or (n,) integer class ids in [0, num_classes) -> int64 NumPy."""
    if labels is None:
        return None
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise EvaluationError(f"{name} must hold integer class ids, got dtype {array.dtype}")
    if array.shape != (n,):
        raise EvaluationError(f"{name} must have shape ({n},) to match the images, got {array.shape}")
    try:
        return reference.check_class_labels(array.astype(np.int64), num_classes, name)
    except (TypeError, ValueError) as err:
        raise EvaluationError(str(err)) from None


def native_image_shape(source) -> tuple[int, int] | None:
    """(H, W) of the images stored in an .npy/.npz, IDX file/folder or image folder, read before
    any resizing (None when it cannot be told cheaply)."""
    path = Path(source)
    if path.is_dir():
        idx = sorted(p for p in path.iterdir() if p.is_file() and "idx3" in p.name)
        if idx:
            return tuple(read_idx(idx[0]).shape[1:3])
        from PIL import Image

        from .data import IMAGE_EXTENSIONS
        first = next((p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS), None)
        if first is None:
            return None
        with Image.open(first) as img:
            return (img.height, img.width)
    if path.suffix.lower() in (".npy", ".npz"):
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                key = next((k for k in ("images", "samples", "x", "arr_0") if k in loaded.files), None)
                shape = None if key is None else loaded[key].shape
        else:
            shape = loaded.shape
        if shape is None or len(shape) not in (3, 4):
            return None
        if len(shape) == 3:
            return tuple(shape[1:3])
        return tuple(shape[2:4]) if shape[1] in (1, 3, 4) else tuple(shape[1:3])
    return None


def load_reference(data, net: FeatureNet) -> ImageDataset:
    """The real images for `data`: "digits", "mnist", a path (folder, .npz, IDX) or an
    ImageDataset, checked to have the feature net's shape (EvaluationError naming `data`)."""
    c, s, _ = net.image_shape
    if isinstance(data, ImageDataset):
        real = data
    elif isinstance(data, str) and data in reference.FEATURE_NET_DATA:
        real = reference_dataset(data)
    else:
        native = native_image_shape(data)
        if native is not None and native != (s, s):
            raise EvaluationError(f"data {str(data)!r} holds {native[0]}x{native[1]} images but the "
                                  f"feature network takes {s}x{s}")
        real = load_dataset(data, s, c)
    if tuple(real.images.shape[1:]) != (c, s, s):
        raise EvaluationError(f"data holds images of shape {tuple(real.images.shape[1:])} but the "
                              f"feature network takes {(c, s, s)}")
    return real


def resolve_feature_net(data, features=None, echo=None) -> FeatureNet:
    """`features` (a FeatureNet or a weights file), else the cached default net of `data`."""
    if isinstance(features, FeatureNet):
        return features.eval()
    if features is not None:
        return load_feature_net(features)
    if isinstance(data, str) and data in reference.FEATURE_NET_DATA:
        return default_feature_net(data, echo=echo)
    raise EvaluationError(f"features: data {data!r} has no built-in feature network "
                          f"({', '.join(reference.FEATURE_NET_DATA)}); pass features=FILE.safetensors")


# ----------------------------------------------------------------------------- the figures

def _hit_rates(probabilities: np.ndarray, labels: np.ndarray, num_classes: int):
    predicted = probabilities.argmax(axis=1)
    per_class = [float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else None
                 for c in range(num_classes)]
    return float(np.mean(predicted == labels)), per_class


def _manifold_figures(real_a: np.ndarray, other: np.ndarray, k: int) -> dict:
    precision, recall = eval_metrics.precision_recall(real_a, other, k)
    density, coverage = eval_metrics.density_coverage(real_a, other, k)
    with warnings.catch_warnings():  # sample_quality warns once, naming images
        warnings.simplefilter("ignore", RuntimeWarning)
        fd = eval_metrics.frechet_distance_features(real_a, other)
    return {"fd": fd, "precision": precision, "recall": recall, "density": density, "coverage": coverage}


def _fd_over_draws(feats_real, feats_s, n: int, seed: int, draws: int, first_fd: float, first_floor: float):
    """FD of the samples and its floor for `draws` independent (A, B) pairs (the first given).
    FD of a few hundred samples swings by a factor ~2 from one reference draw to the next
    (64- and 128-d covariances), so the figure and its floor are means over several draws."""
    fd, fd_floor = [first_fd], [first_floor]
    for draw in range(1, draws):
        a, b = eval_metrics.real_halves(feats_real.shape[0], n, seed, draw)
        subset = eval_metrics.sample_subset(feats_s.shape[0], b.size, seed, draw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fd.append(eval_metrics.frechet_distance_features(feats_real[a], feats_s[subset]))
            fd_floor.append(eval_metrics.frechet_distance_features(feats_real[a], feats_real[b]))
    return fd, fd_floor


def quality_with_details(images, data="digits", labels=None, seed: int = 0, features=None, *,
                         k: int = 3, fd_draws: int = 5, echo=None) -> tuple[dict, dict]:
    """sample_quality's figures, and the arrays behind them for a report: the checked images
    and real data, the halves' indices, each sample's nearest real neighbour (index into
    `pool_index`) and the probabilities."""
    if isinstance(fd_draws, bool) or not isinstance(fd_draws, int) or fd_draws < 1:
        raise EvaluationError(f"fd_draws must be an int >= 1, got {fd_draws!r}")
    net = resolve_feature_net(data, features, echo)
    x = check_images(images, net.image_shape)
    n = x.shape[0]
    y = check_labels(labels, n, net.preset["num_classes"])
    if n <= k:
        raise EvaluationError(f"images: {n} samples; precision/recall with k = {k} need more than {k}")
    real = load_reference(data, net)
    if len(real) < 2 * (k + 1):
        raise EvaluationError(f"data has {len(real)} real images; two halves of more than k = {k} need "
                              f"at least {2 * (k + 1)}")
    index_a, index_b = eval_metrics.real_halves(len(real), n, seed)
    # like for like: with halves smaller than n, each figure compares a subset of the samples
    # as large as the floor half B (reference.sample_subset), a fresh one per FD draw
    subset = eval_metrics.sample_subset(n, index_b.size, seed)
    if index_a.size < n:
        warnings.warn(f"data has {len(real)} real images: the reference and floor halves hold "
                      f"{index_a.size} each, so FD, precision, recall, density and coverage use "
                      f"{index_a.size} of the {n} samples (hit rate and memorisation use all)",
                      RuntimeWarning, stacklevel=2)
    name = f"FD-{data}" if isinstance(data, str) and data in reference.FEATURE_NET_DATA else "FD"
    if min(n, index_a.size) <= net.feature_dim:
        warnings.warn(f"images: {min(n, index_a.size)} samples for the {net.feature_dim}-dimensional "
                      f"features of {name}: {eval_metrics.COVARIANCE_WARNING} (needs > {net.feature_dim}); "
                      f"{name} is biased upward", RuntimeWarning, stacklevel=2)
    feats_s, probs_s = net.embed(x)
    feats_real, probs_real = net.embed(real.images)
    feats_a, feats_b, probs_b = feats_real[index_a], feats_real[index_b], probs_real[index_b]
    sample_fig, floor_fig = _manifold_figures(feats_a, feats_s[subset], k), _manifold_figures(feats_a, feats_b, k)
    fd, fd_floor = _fd_over_draws(feats_real, feats_s, n, seed, fd_draws, sample_fig["fd"], floor_fig["fd"])
    sample_fig["fd"], floor_fig["fd"] = float(np.mean(fd)), float(np.mean(fd_floor))
    is_mean, _ = eval_metrics.inception_score(probs_s)
    is_floor, _ = eval_metrics.inception_score(probs_b)
    # memorisation in pixel space: nearest neighbour in the real data less half B, for the
    # samples and for B (real images the pool does not contain)
    pool_index = np.setdiff1d(np.arange(len(real)), index_b)
    pixels = lambda t: t.reshape(t.shape[0], -1).double().numpy()  # noqa: E731
    memo = eval_metrics.memorisation(pixels(x), pixels(real.images[pool_index]), pixels(real.images[index_b]))
    result = {"data": data if isinstance(data, str) else "custom", "fd_name": name, "n": n,
              "n_reference": int(index_a.size), "n_compared": int(subset.size), "k": k,
              "feature_dim": net.feature_dim, "fd_draws": fd_draws,
              "fd_sd": float(np.std(fd)), "fd_floor_sd": float(np.std(fd_floor)),
              "feature_net_accuracy": net.meta.get("held_out_accuracy")}
    for key in sample_fig:
        result[key], result[f"{key}_floor"] = sample_fig[key], floor_fig[key]
    result.update(inception_score=is_mean, inception_score_floor=is_floor,
                  hit_rate=None, hit_rate_per_class=None, hit_rate_floor=None)
    if real.labels is not None:
        result["hit_rate_floor"] = _hit_rates(probs_b, real.labels.numpy()[index_b], probs_b.shape[1])[0]
    if y is not None:
        result["hit_rate"], result["hit_rate_per_class"] = _hit_rates(probs_s, y, probs_s.shape[1])
    result["memorisation"] = {key: memo[key] for key in ("ratio", "close_fraction", "sample_nn_median",
                                                          "real_nn_median")}
    details = {"images": x, "labels": y, "real": real, "index_a": index_a, "index_b": index_b,
               "pool_index": pool_index, "nn_distance": memo["sample_nn_distance"],
               "nn_index": memo["sample_nn_index"], "probabilities": probs_s}
    return result, details


def sample_quality(images, data="digits", labels=None, seed: int = 0, features=None, *, k: int = 3,
                   fd_draws: int = 5) -> dict:
    """The quality figures of `images` (N, C, H, W) in [-1, 1] against real `data`, each with
    its floor. data: "digits", "mnist", a path (folder, .npz, IDX; needs `features`) or an
    ImageDataset; labels: (N,) requested classes or None; seed: the real halves' draw;
    features: a weights file of `python -m ddpm train-features` (default: the cached net of data);
    fd_draws: fd and fd_floor are means over this many independent (A, B) draws (fd_sd and
    fd_floor_sd their spread); the other figures use the first draw.

    Returns a JSON-ready dict: fd, precision, recall, density, coverage, inception_score and
    hit_rate (None without labels), each with "<key>_floor"; hit_rate_per_class; memorisation
    (ratio ~1 without copying, close_fraction ~0.01); fd_name (e.g. "FD-digits"), n,
    n_reference, n_compared (the samples FD and the manifold figures use: min(n, n_reference), so
    that each figure and its floor compare equally many images), k, feature_dim,
    feature_net_accuracy, data.
    """
    return quality_with_details(images, data, labels, seed, features, k=k, fd_draws=fd_draws)[0]
