"""reference.eval_metrics and reference.feature_nets: closed forms, hand-worked examples and
properties that fail when a definition is wrong (identical sets, shifted sets, copies)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reference import eval_metrics as em
from reference.feature_nets import FEATURE_NET_PRESETS, feature_net_split


def _orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------- Frechet distance

@settings(max_examples=20)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**16))
@example(d=1, seed=0)
def test_frechet_distance_commuting_covariances_closed_form(d, seed):
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr(S1 + S2 - 2 (S1 S2)^(1/2)) =
    sum (sqrt(a) - sqrt(b))^2 (diagonal covariances are the case Q = I)."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.01, 4.0, d), rng.uniform(0.01, 4.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    q = _orthogonal(d, seed)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for basis in (np.eye(d), q):
        got = em.frechet_distance(mu1, basis @ np.diag(a) @ basis.T, mu2, basis @ np.diag(b) @ basis.T)
        assert got == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_frechet_distance_singular_covariances_are_finite():
    """Rank-deficient covariances (fewer samples than dimensions) take the eps-offset path."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 20)), rng.standard_normal((5, 20)) + 1.0
    with pytest.warns(RuntimeWarning, match="5 samples for 20 feature dimensions"):
        value = em.frechet_distance_features(x, y)
    assert np.isfinite(value) and value > 0


def test_frechet_distance_of_features_identical_and_shifted():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.25])
    assert abs(em.frechet_distance_features(x, x)) < 1e-9
    # a shift leaves the covariance unchanged: FD = |shift|^2
    assert em.frechet_distance_features(x, x + shift) == pytest.approx(shift @ shift, rel=1e-8)
    assert em.frechet_distance_features(x, 2 * x) > 0.1


def test_frechet_distance_rejects_bad_statistics():
    with pytest.raises(ValueError, match="sigma1 and sigma2"):
        em.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="mu2 contains NaN"):
        em.frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))
    with pytest.raises(ValueError, match="y contains NaN or inf \\(rows \\[1\\]\\)"):
        em.frechet_distance_features(np.zeros((3, 2)), np.array([[0, 0], [np.inf, 0], [1, 1.0]]))
    # sigma1 with a negative eigenvalue (not a covariance): sqrtm(sigma1 sigma2) = diag(1, i), an
    # imaginary part far above round-off, is refused rather than silently dropped
    with pytest.raises(ValueError, match="imaginary component 1"):
        em.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


# ----------------------------------------------------------------------------- k-NN figures

def test_precision_recall_density_coverage_hand_worked():
    """k = 1 on a line: real 0, 1, 2, 3 (every radius 1, balls cover [-1, 4])."""
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([[0.5], [5.2], [-0.7], [3.9]])
    # y in the real balls: 0.5, -0.7, 3.9 -> 3/4. Generated radii: -0.7 -> 1.2, 0.5 -> 1.2,
    # 3.9 -> 1.3, 5.2 -> 1.3: real 0, 1 (in B(0.5)), 3 (in B(3.9)) are covered, 2 is not.
    assert em.precision_recall(x, y, k=1) == pytest.approx((0.75, 0.75))
    # density: 0.5 lies in the balls of 0 and 1, -0.7 in 0's, 3.9 in 3's -> 4 / (1 * 4)
    # coverage: 0 (0.5 at 0.5), 1 (0.5 at 0.5), 2 (nearest 0.5 or 3.9: 1.5 > 1), 3 (0.9) -> 3/4
    assert em.density_coverage(x, y, k=1) == pytest.approx((1.0, 0.75))


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 5))
def test_knn_figures_identical_and_far_sets(seed, k):
    x = np.random.default_rng(seed).standard_normal((60, 5))
    assert em.precision_recall(x, x, k) == (1.0, 1.0)
    assert em.density_coverage(x, x, k)[1] == 1.0
    far = x + 100.0
    assert em.precision_recall(x, far, k) == (0.0, 0.0)
    assert em.density_coverage(x, far, k) == (0.0, 0.0)


def test_precision_without_recall_for_a_collapsed_generator():
    """All samples at one real point: precise (inside the real manifold) but no recall."""
    x = np.random.default_rng(2).standard_normal((200, 3))
    y = np.repeat(x[:1], 50, axis=0)
    precision, recall = em.precision_recall(x, y, k=3)
    assert precision == 1.0 and recall < 0.05
    assert em.density_coverage(x, y, k=3)[1] < 0.05


def test_kth_neighbour_radii_and_nearest_neighbours():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(em.kth_neighbour_radii(x, 1), [1, 1, 2, 4], atol=1e-12)
    np.testing.assert_allclose(em.kth_neighbour_radii(x, 2), [3, 2, 3, 6], atol=1e-12)
    dist, idx = em.nearest_neighbour_distances(np.array([[2.9], [-5.0]]), x)
    np.testing.assert_allclose(dist, [0.1, 5.0], atol=1e-12)
    assert idx.tolist() == [2, 0]
    with pytest.raises(ValueError, match="more than k = 4 rows"):
        em.kth_neighbour_radii(x, 4)
    with pytest.raises(ValueError, match="k must be a positive int"):
        em.precision_recall(x, x, k=0)


# ----------------------------------------------------------------------------- IS, memorisation

def test_inception_score_known_values():
    eye = np.eye(10)[np.arange(1000) % 10]
    assert em.inception_score(eye)[0] == pytest.approx(10.0)  # confident and balanced: #classes
    assert em.inception_score(np.full((50, 10), 0.1))[0] == pytest.approx(1.0)  # uninformative
    p = np.array([[1.0, 0.0], [0.5, 0.5]])  # marginal (0.75, 0.25)
    kl = [np.log(1 / 0.75), 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)]
    assert em.inception_score(p)[0] == pytest.approx(np.exp(np.mean(kl)), rel=1e-12)
    mean, std = em.inception_score(eye, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="summing to 1"):
        em.inception_score(np.full((4, 3), 0.5))


def test_memorisation_copies_and_new_samples():
    rng = np.random.default_rng(3)
    train, held_out, new = (rng.standard_normal((300, 16)) for _ in range(3))
    copies = em.memorisation(train[:100] + 1e-6, train, held_out)
    assert copies["ratio"] < 0.01 and copies["close_fraction"] == 1.0
    assert copies["sample_nn_index"].tolist() == list(range(100))
    fresh = em.memorisation(new, train, held_out)
    assert 0.8 < fresh["ratio"] < 1.25 and fresh["close_fraction"] < 0.1


# ----------------------------------------------------------------------------- floors, splits

def test_real_halves_disjoint_seeded_and_capped():
    a, b = em.real_halves(100, 30, seed=5)
    assert a.size == b.size == 30 and not set(a) & set(b)
    a2, b2 = em.real_halves(100, 30, seed=5)
    assert (a == a2).all() and (b == b2).all()
    assert not (a == em.real_halves(100, 30, seed=6)[0]).all()
    a3, b3 = em.real_halves(100, 30, seed=5, draw=1)
    assert not set(a3) & set(b3) and not (a3 == a).all()
    a, b = em.real_halves(11, 50)
    assert a.size == b.size == 5 and not set(a) & set(b)
    with pytest.raises(ValueError, match="num_real must be >= 2"):
        em.real_halves(1, 1)


def test_feature_net_splits():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, held = feature_net_split("digits", labels)
    assert (train.size, held.size) == (1438, 359) and not set(train) & set(held)
    counts = np.bincount(labels[held], minlength=10)
    assert np.all(np.abs(counts - 0.2 * np.bincount(labels)) <= 0.5)  # stratified
    train, held = feature_net_split("mnist", np.zeros(10000, dtype=np.int64))
    assert (train[0], train[-1], held[0], held[-1]) == (0, 8999, 9000, 9999)
    with pytest.raises(ValueError, match="data must be one of"):
        feature_net_split("cifar", labels)
    assert set(FEATURE_NET_PRESETS) == {"digits", "mnist"}


def test_gaussian_statistics_warns_with_the_numbers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        em.gaussian_statistics(np.random.default_rng(0).standard_normal((4, 3)))  # n > d: silent
    with pytest.warns(RuntimeWarning, match="3 samples for 3 feature dimensions"):
        em.gaussian_statistics(np.random.default_rng(0).standard_normal((3, 3)))
