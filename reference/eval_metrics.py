"""Sample-quality figures on feature vectors, float64: Frechet distance, precision/recall,
density/coverage, the Inception-style score, nearest-neighbour memorisation, and the floors.

Every function takes features x (n, d) (real) and y (m, d) (generated) as NumPy arrays. The
"floor" of a figure is the same figure between two disjoint halves of real data of one size
(`real_halves`): the value a perfect generator would get at that sample size.

Distances are Euclidean and computed block by block (scikit-learn's
`pairwise_distances_chunked`), so 10k x 10k pairs need tens of MB, not 800.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "COVARIANCE_WARNING",
    "gaussian_statistics",
    "frechet_distance",
    "frechet_distance_features",
    "kth_neighbour_radii",
    "nearest_neighbour_distances",
    "precision_recall",
    "density_coverage",
    "inception_score",
    "memorisation",
    "real_halves",
    "sample_subset",
]

COVARIANCE_WARNING = "fewer samples than the feature dimension needs for a full-rank covariance"


def _check_features(x, name: str, min_rows: int = 1) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiu" or x.dtype == bool:
        raise TypeError(f"{name} must have a real numeric dtype, got {x.dtype}")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with d >= 1, got {x.shape}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    x = x.astype(np.float64, copy=False)
    if not np.all(np.isfinite(x)):
        rows = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
        raise ValueError(f"{name} contains NaN or inf (rows {rows[:5].tolist()}{' ...' if rows.size > 5 else ''})")
    return x


def _check_pair(x, y, min_rows: int = 1):
    x, y = _check_features(x, "x", min_rows), _check_features(y, "y", min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature dimension, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return int(k)


# ----------------------------------------------------------------------------- Frechet distance

def gaussian_statistics(features: np.ndarray, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(mu (d,), sigma (d, d)): the mean and the unbiased covariance (np.cov, n - 1) of (n, d).

    n <= d gives a singular covariance: allowed (the FID reference code allows it) but warned,
    with the numbers, since the distance is then dominated by the estimate's rank deficit.
    """
    x = _check_features(features, name, min_rows=2)
    n, d = x.shape
    if n <= d:
        warnings.warn(f"{name}: {n} samples for {d} feature dimensions: {COVARIANCE_WARNING} "
                      f"(needs > {d}); the Frechet distance is biased upward", RuntimeWarning, stacklevel=2)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet (2-Wasserstein) distance
    between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; Heusel et al. 2017, Eq. 6).

    As the FID reference code (pytorch-fid `calculate_frechet_distance`): scipy.linalg.sqrtm of
    S1 S2; when that is not finite (singular product), eps I is added to both covariances; a
    complex result whose imaginary diagonal exceeds 1e-3 is an error, smaller imaginary parts
    (round-off) are dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must both have shape (d,), got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must have shape ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        offset = eps * np.eye(d)
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.max(np.abs(np.diagonal(covmean).imag))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm(sigma1 sigma2) has an imaginary component {imaginary:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_features(x: np.ndarray, y: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted (gaussian_statistics) to x (n, d), y (m, d)."""
    x, y = _check_pair(x, y, min_rows=2)
    mu_x, sigma_x = gaussian_statistics(x, "x")
    mu_y, sigma_y = gaussian_statistics(y, "y")
    return frechet_distance(mu_x, sigma_x, mu_y, sigma_y)


# ----------------------------------------------------------------------------- k-NN manifolds

def _chunks(x: np.ndarray, y: np.ndarray, reduce_func):
    from sklearn.metrics import pairwise_distances_chunked

    return pairwise_distances_chunked(x, y, reduce_func=reduce_func, metric="euclidean", n_jobs=1,
                                      working_memory=64)


def kth_neighbour_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """(n,): each row's distance to its k-th nearest other row of x (the row itself, at
    distance 0, is neighbour 0), the radius of its k-NN ball (Kynkaanniemi et al. 2019, Eq. 1)."""
    x = _check_features(x, "x")
    k = _check_k(k)
    if x.shape[0] <= k:
        raise ValueError(f"x needs more than k = {k} rows for k-nearest-neighbour radii, got {x.shape[0]}")
    return np.concatenate(list(_chunks(x, x, lambda D, start: np.partition(D, k, axis=1)[:, k])))


def nearest_neighbour_distances(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance (m,), index (m,)): each row of y's nearest row of x."""
    x, y = _check_pair(x, y)
    parts = list(_chunks(y, x, lambda D, start: (D.min(axis=1), D.argmin(axis=1))))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int64)


def _ball_counts(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(m,): how many balls B(centres_i, radii_i) contain each point (boundary included)."""
    return np.concatenate(list(_chunks(points, centres,
                                       lambda D, start: (D <= radii[None, :]).sum(axis=1))))


def precision_recall(x: np.ndarray, y: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated y against real x (Kynkaanniemi et al. 2019, Eqs. 1-2).

    precision: the fraction of y inside the real manifold (the union of the balls around each
    real point reaching its k-th nearest real neighbour); recall: the fraction of x inside the
    generated manifold built the same way from y.
    """
    x, y = _check_pair(x, y)
    precision = float(np.mean(_ball_counts(y, x, kth_neighbour_radii(x, k)) > 0))
    recall = float(np.mean(_ball_counts(x, y, kth_neighbour_radii(y, k)) > 0))
    return precision, recall


def density_coverage(x: np.ndarray, y: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(density, coverage) of generated y against real x (Naeem et al. 2020, Eqs. 3-4).

    density = (1 / (k m)) sum_j #{i : y_j in B(x_i, NND_k(x_i))} (1 in expectation for equal
    distributions, unbounded above); coverage = the fraction of real x_i whose ball holds at
    least one y_j, i.e. whose nearest y lies within NND_k(x_i).
    """
    x, y = _check_pair(x, y)
    k = _check_k(k)
    radii = kth_neighbour_radii(x, k)
    density = float(_ball_counts(y, x, radii).sum() / (k * y.shape[0]))
    nearest_generated, _ = nearest_neighbour_distances(x, y)
    coverage = float(np.mean(nearest_generated <= radii))
    return density, coverage


# ----------------------------------------------------------------------------- classifier-based

def inception_score(probabilities: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """(mean, std over splits) of exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016, Sec. 4),
    p(y) the mean of p(y|x) within each split; probabilities (n, classes), rows summing to 1.
    The original code uses 10 splits of 5,000; `splits` consecutive blocks of n // splits rows."""
    p = _check_features(probabilities, "probabilities")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probabilities must be non-negative rows summing to 1")
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be an int in [1, n = {p.shape[0]}], got {splits!r}")
    size = p.shape[0] // splits
    scores = []
    for s in range(splits):
        block = p[s * size:(s + 1) * size]
        marginal = block.mean(axis=0, keepdims=True)
        # 0 log 0 = 0: a class with p(y|x) = 0 adds nothing to the KL
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(block > 0, block * (np.log(block) - np.log(marginal)), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def memorisation(samples: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> dict:
    """Nearest-training-neighbour distances of the samples against those of real held-out data.

    samples (m, d), train (n, d), held_out (h, d) (disjoint from train), e.g. flattened pixels.
    A generator that copies its training set puts its samples much nearer to a training image
    than new real images lie: ratio = median(sample NN distance) / median(held-out NN distance)
    is ~1 without copying and -> 0 with it; close_fraction is the fraction of samples nearer
    than the 1st percentile of the held-out distances (~0.01 without copying).
    """
    samples, train = _check_pair(samples, train)
    held_out = _check_features(held_out, "held_out")
    if held_out.shape[1] != train.shape[1]:
        raise ValueError(f"held_out must have dimension {train.shape[1]}, got {held_out.shape[1]}")
    sample_distance, sample_index = nearest_neighbour_distances(samples, train)
    real_distance, _ = nearest_neighbour_distances(held_out, train)
    real_median = float(np.median(real_distance))
    threshold = float(np.percentile(real_distance, 1.0))
    return {
        "sample_nn_median": float(np.median(sample_distance)),
        "real_nn_median": real_median,
        "ratio": float(np.median(sample_distance) / real_median) if real_median > 0 else float("nan"),
        "close_fraction": float(np.mean(sample_distance < threshold)),
        "sample_nn_distance": sample_distance,
        "sample_nn_index": sample_index,
    }


# ----------------------------------------------------------------------------- floors

def real_halves(num_real: int, n: int, seed: int = 0, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of size min(n, num_real // 2) from a seeded permutation of
    range(num_real) (numpy default_rng(seed), or default_rng([seed, draw]) for draw > 0): the
    reference half A and the floor half B.

    Generated samples are compared with A; the floor is the same figure of B against A, so both
    use the same reference set and the same size. Further draws give independent (A, B) pairs,
    for figures averaged over several reference sets.
    """
    for name, value in (("num_real", num_real), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if num_real < 2:
        raise ValueError(f"num_real must be >= 2 for two disjoint halves, got {num_real}")
    size = min(int(n), int(num_real) // 2)
    if isinstance(draw, bool) or not isinstance(draw, (int, np.integer)) or draw < 0:
        raise ValueError(f"draw must be an int >= 0, got {draw!r}")
    order = np.random.default_rng(seed if draw == 0 else [seed, int(draw)]).permutation(int(num_real))
    return np.sort(order[:size]), np.sort(order[size:2 * size])


def sample_subset(n: int, size: int, seed: int = 0, draw: int = 0) -> np.ndarray:
    """`size` of the n generated samples (sorted indices, all of them when size >= n), drawn by
    numpy default_rng([seed, draw, 1]): the samples a figure compares with the reference half A
    when the real data is too small for halves of n (digits: 180 held-out images per half).

    Frechet distance, precision/recall and density/coverage all depend on the two set sizes
    (FD's bias grows as the sets shrink), so a figure and its floor are like for like only when
    the samples and the floor half B are equally many: with all n > |B| samples the figure
    would sit below the floor of a perfect generator.
    """
    for name, value in (("n", n), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(draw, bool) or not isinstance(draw, (int, np.integer)) or draw < 0:
        raise ValueError(f"draw must be an int >= 0, got {draw!r}")
    if size >= n:
        return np.arange(int(n))
    order = np.random.default_rng([seed, int(draw), 1]).permutation(int(n))
    return np.sort(order[:int(size)])
