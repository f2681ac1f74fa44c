"""The toy demo and its pieces: 2-D datasets, the quality metrics, `python -m reference.demo`.

The end-to-end test trains the MLP DDPM at the demo's --quick size and requires every sampler's
energy distance to be within 2x of the data floor (two independent data draws of the same size).
"""

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close
from reference import DATASETS, dataset_num_classes, energy_distance, make_dataset, sliced_wasserstein
from reference import demo
from reference.metrics import mean_pairwise_distance

# ----------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("name", list(DATASETS))
def test_datasets_are_seeded_unit_scale_point_clouds(name):
    x, y = make_dataset(name, 20_000, seed=1)
    assert x.shape == (20_000, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    assert np.all(np.abs(x.mean(0)) < 0.35) and np.all((x.std(0) > 0.6) & (x.std(0) < 1.4))
    again, _ = make_dataset(name, 20_000, seed=1)
    other, _ = make_dataset(name, 20_000, seed=2)
    assert again.tobytes() == x.tobytes() and not np.array_equal(other, x)
    k = dataset_num_classes(name)
    if k is None:
        assert y is None
    else:
        assert y.dtype == np.int64 and y.shape == (20_000,) and set(np.unique(y)) == set(range(k))


def test_labels_are_natural():
    x, y = make_dataset("8gaussians", 4000, seed=0)
    angle = y * np.pi / 4
    centres = np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    assert np.abs(x - centres).max() < 0.6  # each point within 6 std of its own centre
    x, y = make_dataset("moons", 4000, seed=0)
    assert x[y == 0, 1].mean() > x[y == 1, 1].mean() + 0.5  # label 0: the upper moon
    x, _ = make_dataset("checkerboard", 4000, seed=0)
    cells = (np.floor(x[:, 0] / 0.9) + np.floor(x[:, 1] / 0.9)) % 2
    assert np.all(cells == 0)  # only the dark squares are filled


# ----------------------------------------------------------------------------- metrics

@given(seed=st.integers(0, 2**32), n=st.integers(1, 60), m=st.integers(1, 60))
def test_energy_distance_matches_scipy_in_one_dimension(seed, n, m):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 1)), rng.standard_normal((m, 1)) + 0.3
    assert_close(energy_distance(x, y, block_size=7), stats.energy_distance(x[:, 0], y[:, 0]),
                 atol=1e-12, rtol=1e-9, name="energy distance")


@given(seed=st.integers(0, 2**32), d=st.sampled_from([2, 3, 12]), block=st.integers(1, 50))
def test_mean_pairwise_distance_matches_brute_force_in_any_block_size(seed, d, block):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((37, d)), rng.standard_normal((23, d))
    brute = np.mean(np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1))
    assert_close(mean_pairwise_distance(x, y, block_size=block), brute, atol=1e-12, rtol=1e-10, name="mean |x - y|")


def test_energy_distance_is_zero_for_equal_samples_and_grows_with_a_shift():
    x, _ = make_dataset("moons", 500, seed=0)
    assert energy_distance(x, x) == 0.0
    assert energy_distance(x, x[::-1]) == 0.0  # order does not matter
    shifted = [energy_distance(x, x + [dx, 0.0]) for dx in (0.05, 0.2, 0.8)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def test_sliced_wasserstein_is_w1_in_one_dimension():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((200, 1)), rng.exponential(size=(200, 1))
    assert_close(sliced_wasserstein(x, y, num_projections=5), stats.wasserstein_distance(x[:, 0], y[:, 0]),
                 atol=1e-12, rtol=1e-12, name="W1")
    y_odd = rng.exponential(size=(300, 1))  # unequal sizes: quantile functions on a grid
    assert_close(sliced_wasserstein(x, y_odd, num_projections=3), stats.wasserstein_distance(x[:, 0], y_odd[:, 0]),
                 atol=0.02, rtol=0, name="W1 (300 vs 200)")
    a, _ = make_dataset("swissroll", 1000, seed=0)
    assert sliced_wasserstein(a, a) == 0.0 and sliced_wasserstein(a, a + 1.0) > 0.5


@pytest.mark.parametrize("call, error, match", [
    (lambda: energy_distance(np.zeros((3, 2)), np.zeros((3, 3))), ValueError, "same dimension"),
    (lambda: energy_distance(np.zeros(3), np.zeros((3, 1))), ValueError, r"x must have shape \(n, d\)"),
    (lambda: energy_distance(np.zeros((0, 2)), np.zeros((3, 2))), ValueError, "x must have shape"),
    (lambda: energy_distance(np.zeros((3, 2)), np.full((3, 2), np.nan)), ValueError, "y contains NaN"),
    (lambda: energy_distance([[0.0]], np.zeros((1, 1))), TypeError, "x must be a NumPy array"),
    (lambda: energy_distance(np.zeros((3, 2), complex), np.zeros((3, 2))), TypeError, "x must have a real"),
    (lambda: mean_pairwise_distance(np.zeros((3, 2)), np.zeros((3, 2)), block_size=0), ValueError, "block_size"),
    (lambda: sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 2)), num_projections=0), ValueError,
     "num_projections"),
    (lambda: sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 2)), p=3), ValueError, "p must be 1 or 2"),
    (lambda: make_dataset("circles", 10), ValueError, "dataset must be one of"),
    (lambda: make_dataset("moons", 0), ValueError, "n must be >= 1"),
    (lambda: make_dataset("moons", 10.0), TypeError, "n must be an int"),
    (lambda: make_dataset("moons", 10, seed=-1), ValueError, r"seed must lie in \[0, 2\*\*64\)"),
    (lambda: make_dataset("moons", 10, seed=1.0), TypeError, "seed must be an int"),
    (lambda: demo.run_demo(dataset="circles"), ValueError, "dataset must be one of"),
    (lambda: demo.run_demo(T=20), ValueError, "T must be an int >= 25"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- the demo

def test_quick_demo_trains_to_within_2x_of_the_data_floor(tmp_path):
    # The --quick size: 3000 steps of 256 at T = 100, 1000 samples per sampler vs 1000 fresh points.
    with demo._blas_single_thread():
        result = demo.run_demo(**demo.QUICK, log=None)
    names = [row["sampler"] for row in result["rows"]]
    assert names == ["DDPM-100", "DDIM-50", "DPM-Solver++-20"]
    assert result["floor"] > 0
    for row in result["rows"]:
        assert row["ratio"] < 2.0, demo.format_table(result)
        assert result["samples"][row["sampler"]].shape == (1000, 2)
    table = demo.format_table(result)
    assert "data vs data" in table and "DPM-Solver++-20" in table
    pytest.importorskip("matplotlib")
    png = tmp_path / "quick.png"
    demo.save_figure(result, str(png), "quick")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_command_line_prints_the_table_and_writes_the_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "demo.png"
    code = demo.main(["--quick", "--steps", "30", "--T", "30", "--samples", "100", "--dataset", "8gaussians",
                      "--out", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    for text in ("data vs data", "DDPM-30", "DDIM-30", "DPM-Solver++-20", "x floor", f"wrote {png}"):
        assert text in out
    assert png.stat().st_size > 1000


def test_demo_without_matplotlib_fails_with_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert demo.main(["--quick"]) == 2
    assert "needs matplotlib" in capsys.readouterr().err
