"""ddpm.evaluate.sample_quality and ddpm.feature_net: real digits score near their floor, noise
far from it; bad input is one error naming the argument; training is deterministic; the cache
trains once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
import reference.feature_nets as feature_nets
from ddpm import feature_net as fn
from ddpm.evaluate import EvaluationError, quality_with_details, sample_quality


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    """The default digits feature net, trained once into a private cache for this module."""
    mp = pytest.MonkeyPatch()
    # one cache for the session (tests/test_eval_cli.py uses the same): the net trains once
    mp.setenv("DDPM_CACHE", str(tmp_path_factory.getbasetemp() / "ddpm-cache"))
    net = fn.default_feature_net("digits")
    yield net
    mp.undo()


@pytest.fixture(scope="module")
def digits():
    return fn.reference_dataset("digits")


def test_real_digits_near_floor_and_noise_far(digits_net, digits):
    perm = np.random.default_rng(7).permutation(len(digits))[:400]
    real = sample_quality(digits.images[perm], "digits", labels=digits.labels[perm], seed=1,
                          features=digits_net)
    assert real["fd_name"] == "FD-digits" and real["n"] == real["n_reference"] == 400
    assert real["feature_net_accuracy"] > 0.93
    assert real["hit_rate"] > 0.95 and real["hit_rate_floor"] > 0.95
    assert real["fd"] < 3 * real["fd_floor"] and real["precision"] > 0.8 and real["recall"] > 0.8
    assert len(real["hit_rate_per_class"]) == 10 and min(real["hit_rate_per_class"]) > 0.7
    noise = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = sample_quality(noise, "digits", labels=digits.labels[perm], seed=1, features=digits_net)
    assert fake["fd"] > 10 * fake["fd_floor"] and fake["fd_floor"] == real["fd_floor"]
    assert fake["precision"] < 0.1 and fake["coverage"] < 0.1 and fake["hit_rate"] < 0.35
    assert fake["memorisation"]["ratio"] > 1.5 and fake["inception_score"] < real["inception_score"]
    # a collapsed generator (10 real digits, each 40 times): its samples lie in the real manifold
    # (precision), its own manifold (balls of radius 0 around duplicates) holds almost no real digit
    collapsed = sample_quality(digits.images[perm[:10]].repeat(40, 1, 1, 1), "digits", seed=1, features=digits_net)
    assert collapsed["precision"] >= 0.5 and collapsed["recall"] <= 10 / 400


def test_copies_of_training_images_are_flagged(digits_net, digits):
    """Samples that copy real images lie at distance 0 from their nearest neighbour."""
    result, details = quality_with_details(digits.images[:200], "digits", seed=3, features=digits_net)
    pool = set(details["pool_index"].tolist())
    copied = [i for i in range(200) if i in pool]
    assert result["memorisation"]["close_fraction"] >= len(copied) / 200 - 1e-12
    assert np.all(details["nn_distance"][copied] == 0)
    assert result["hit_rate"] is None and result["hit_rate_floor"] > 0.9


def test_bad_input_names_the_argument(digits_net, tmp_path):
    good = torch.zeros(100, 1, 8, 8)
    with pytest.raises(EvaluationError, match=r"images must have shape \(N, 1, 8, 8\).*got \(100, 1, 28, 28\)"):
        sample_quality(torch.zeros(100, 1, 28, 28), "digits", features=digits_net)
    bad = good.clone()
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(EvaluationError, match=r"images contains NaN or inf in 1 of 100 samples \(first \[3\]\)"):
        sample_quality(bad, "digits", features=digits_net)
    with pytest.raises(EvaluationError, match=r"images must lie in \[-1, 1\].*\[0, 255\]"):
        sample_quality(good + 255, "digits", features=digits_net)
    with pytest.raises(EvaluationError, match=r"labels must have shape \(100,\)"):
        sample_quality(good, "digits", labels=torch.zeros(99, dtype=torch.int64), features=digits_net)
    with pytest.raises(EvaluationError, match="labels"):
        sample_quality(good, "digits", labels=torch.full((100,), 10), features=digits_net)
    with pytest.raises(EvaluationError, match="images: 3 samples"):
        sample_quality(good[:3], "digits", features=digits_net)
    wrong = tmp_path / "real28.npz"
    np.savez(wrong, images=np.zeros((50, 28, 28), np.uint8))
    with pytest.raises(EvaluationError, match=r"data .*real28.npz' holds 28x28 images but the feature network takes 8x8"):
        sample_quality(good, str(wrong), features=digits_net)
    with pytest.raises(EvaluationError, match="features: data .* has no built-in feature network"):
        sample_quality(good, str(wrong))


def test_few_samples_warn_with_the_numbers(digits_net, digits):
    with pytest.warns(RuntimeWarning, match="50 samples for the 64-dimensional features of FD-digits"):
        result = sample_quality(digits.images[:50], "digits", features=digits_net)
    assert np.isfinite(result["fd"])
    with pytest.warns(RuntimeWarning, match="1797 real images: the reference and floor halves hold 898 each, "
                      "so FD, precision, recall, density and coverage use 898 of the 1000 samples"):
        result = sample_quality(digits.images[:1000], "digits", features=digits_net)
    assert (result["n"], result["n_reference"], result["n_compared"]) == (1000, 898, 898)


def test_more_samples_than_a_half_are_compared_like_for_like(digits_net, digits):
    """With halves smaller than the samples, the figures use a subset as large as the floor half:
    real digits passed as samples then land at the floor instead of below it (FD's small-set
    bias would otherwise favour the larger sample set)."""
    half = 898
    a, b = reference.real_halves(len(digits), 1797, seed=0)
    assert a.size == b.size == half
    subset = reference.sample_subset(1797, half, seed=0)
    np.testing.assert_array_equal(subset, np.sort(subset))
    assert len(set(subset.tolist())) == half and subset.max() < 1797
    np.testing.assert_array_equal(reference.sample_subset(10, 20), np.arange(10))
    assert not np.array_equal(reference.sample_subset(100, 10, 0, 0), reference.sample_subset(100, 10, 0, 1))
    with pytest.warns(RuntimeWarning, match="use 898 of the 1797 samples"):
        result = sample_quality(digits.images, "digits", features=digits_net, fd_draws=2)
    # the first draw's figure compares A with the subset, the floor compares A with B
    feats, _ = digits_net.embed(digits.images)
    expected = reference.frechet_distance_features(feats[a], feats[subset])
    draw1_a, _ = reference.real_halves(len(digits), 1797, 0, 1)
    expected_1 = reference.frechet_distance_features(feats[draw1_a], feats[reference.sample_subset(1797, half, 0, 1)])
    assert result["fd"] == pytest.approx((expected + expected_1) / 2, rel=1e-9)
    assert result["n_compared"] == half


def test_feature_net_file_round_trip_and_bad_files(digits_net, digits, tmp_path):
    path = fn.save_feature_net(digits_net, tmp_path / "net.safetensors")
    loaded = fn.load_feature_net(path)
    assert loaded.meta == digits_net.meta and (tmp_path / "net.safetensors.json").is_file()
    for a, b in zip(digits_net.embed(digits.images[:20]), loaded.embed(digits.images[:20])):
        np.testing.assert_array_equal(a, b)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(fn.DataError, match="features: .*junk.safetensors is not a feature-net file"):
        fn.load_feature_net(junk)
    with pytest.raises(fn.DataError, match="features: .*missing.safetensors is not a file"):
        fn.load_feature_net(tmp_path / "missing.safetensors")


def test_training_is_deterministic_and_cached_once(monkeypatch, tmp_path):
    monkeypatch.setitem(feature_nets.FEATURE_NET_PRESETS, "digits",
                        {**feature_nets.FEATURE_NET_PRESETS["digits"], "epochs": 1, "widths": (4, 8)})
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    first = fn.default_feature_net("digits")
    second = fn.train_feature_net("digits")
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[key], rtol=0, atol=0)
    monkeypatch.setattr(fn, "train_feature_net", lambda *a, **k: pytest.fail("retrained a cached net"))
    again = fn.default_feature_net("digits")
    assert again.meta == first.meta and len(list(tmp_path.glob("feature-net-digits-*.safetensors"))) == 1


def test_train_features_cli_errors(tmp_path, capsys):
    from ddpm.cli import main

    assert main(["train-features", "--data", "digits", "--out", str(tmp_path / "x.bin")]) == 2
    assert "--out must name a .safetensors file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train-features", "--data", "cifar", "--out", str(tmp_path / "x.safetensors")])
    assert exit_info.value.code == 2
