"""The digits demo (`python -m ddpm demo --quick`), its pictures (ddpm.viz) and its hit rate
(ddpm.metrics)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.data import load_digits
from ddpm.demo import DemoSettings
from ddpm.metrics import format_hit_rate, hit_rate, train_digit_classifier
from ddpm.viz import make_grid, save_gif, save_loss_curve, smooth, to_uint8


# ----------------------------------------------------------------------------- the demo

@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"])
    return out, code


def test_quick_demo_writes_every_output(quick_demo, capsys):
    out, code = quick_demo
    assert code == 0
    settings = DemoSettings.quick()
    with Image.open(out / "samples.png") as img:  # one row per digit, 8x8 enlarged x6, padding 2
        width = settings.per_class * 48 + (settings.per_class + 1) * 2
        assert img.size == (width, 10 * 48 + 11 * 2)
    with Image.open(out / "samples.png") as img:
        grid = np.asarray(img.convert("L"))
    with Image.open(out / "reverse.gif") as gif:  # x_T, then the kept steps (identical ones merge)
        assert 2 <= gif.n_frames <= 1 + settings.gif_frames
        gif.seek(gif.n_frames - 1)
        assert np.array_equal(np.asarray(gif.convert("L")), grid)
    assert (out / "loss_curve.png").stat().st_size > 0
    summary = json.loads((out / "hit_rate.json").read_text())
    assert summary["steps"] == settings.steps and len(summary["hit_rate_per_class"]) == 10
    assert 0.0 <= summary["hit_rate"] <= 1.0 and summary["classifier_held_out_accuracy"] > 0.9
    assert summary["settings"]["per_class"] == settings.per_class


def test_rerunning_the_demo_resumes_instead_of_retraining(quick_demo, capsys):
    out, _ = quick_demo
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "class  hits/total" in text and "all" in text
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress",
                 "--batch-size", "16"]) == 2  # a user error: status 2, one line
    assert "holds a demo checkpoint with other settings (batch_size)" in capsys.readouterr().err


def test_demo_checkpoint_samples_one_class(quick_demo, tmp_path):
    out, _ = quick_demo
    png = tmp_path / "sevens.png"
    assert main(["sample", "--checkpoint", str(out), "--class", "7", "--guidance", "2", "--steps", "3",
                 "--n", "4", "--ema", "--out", str(png), "--device", "cpu"]) == 0
    with Image.open(png) as img:
        assert img.size == (2 * 48 + 3 * 2,) * 2


def test_a_short_real_demo_run_draws_the_requested_digits(tmp_path):
    """150 training steps (ch 16) then 20 DDIM steps with guidance: the classifier reads the
    requested digit in most samples. Measured 0.64 (100 samples, deterministic on the CPU); the
    bound 0.4 is 4x chance (0.1), and a trainer that feeds x0 to the model instead of x_t, or
    never learns, draws noise or the wrong digits: ~0.1. The quick demo above trains 12 steps,
    too few for any hit rate to mean anything."""
    from ddpm.demo import run_demo

    settings = DemoSettings().replace(steps=150, ch=16, warmup_steps=20, ema_decay=0.99, sample_steps=20,
                                      per_class=10, gif_frames=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is fastest (~25 s)
    try:
        result = run_demo(tmp_path, settings, device="cpu", progress=False, echo=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    assert result["steps"] == 150 and result["skipped_steps"] == 0
    assert result["hit_rate"] >= 0.4, result["hit_rate"]


# ----------------------------------------------------------------------------- hit rate

@pytest.fixture(scope="module")
def classifier():
    return train_digit_classifier(seed=0)


def test_classifier_recognises_real_digits_and_rejects_wrong_labels(classifier):
    data = load_digits()
    real = hit_rate(classifier, data.images, data.labels)
    assert real.overall > 0.95 and classifier.held_out_accuracy > 0.93
    assert real.total.tolist() == data.labels.bincount().tolist()
    wrong = hit_rate(classifier, data.images, (data.labels + 1) % 10)
    assert wrong.overall < 0.05
    noise = hit_rate(classifier, torch.rand(200, 1, 8, 8) * 2 - 1, torch.arange(200) % 10)
    assert noise.overall < 0.3  # noise is not a digit: near chance (10%)
    table = format_hit_rate(real, classifier)
    assert len(table.splitlines()) == 2 + 10 + 1 + 1  # header, one row per class, all, note
    assert "all" in table and "held-out real digits" in table


def test_hit_rate_counts_and_confusion(classifier):
    images = load_digits().images[:3]
    predicted = classifier.predict(images)
    requested = torch.tensor([int(predicted[0]), int(predicted[1]), (int(predicted[2]) + 1) % 10])
    result = hit_rate(classifier, images, requested)
    assert result.hits.sum() == 2 and result.total.sum() == 3
    assert result.confusion[requested[2], predicted[2]] == 1
    with pytest.raises(ValueError, match=r"requested must lie in \[0, 10\)"):
        hit_rate(classifier, images, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        classifier.predict(torch.zeros(2, 1, 4, 4))


# ----------------------------------------------------------------------------- pictures

def test_to_uint8_maps_minus_one_one_to_bytes():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, float("nan")]).view(1, 1, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 128, 255, 255, 128]
    with pytest.raises(ValueError, match=r"C in \(1, 3\)"):
        to_uint8(torch.zeros(1, 2, 4, 4))


def test_make_grid_places_images_row_major():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, -1.0)])
    grid = np.asarray(make_grid(images, nrow=2, padding=1, scale=1, pad_value=7))
    assert grid.shape == (2 * 2 + 3, 2 * 2 + 3)
    assert grid[1, 1] == 0 and grid[1, 4] == 255 and grid[4, 1] == 0  # image 0, 1, 2
    assert grid[4, 4] == 7 and grid[0, 0] == 7  # empty cell and padding
    rgb = make_grid(torch.zeros(2, 3, 4, 4), scale=2)
    assert rgb.mode == "RGB" and rgb.size == (2 * 8 + 3 * 2, 8 + 2 * 2)


def test_gif_and_loss_curve(tmp_path, monkeypatch):
    frames = [torch.full((2, 1, 4, 4), v) for v in (-1.0, 0.0, 1.0)]
    save_gif(tmp_path / "a.gif", frames)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 3
    history = {"step": [0, 1, 2, 3], "loss": [1.0, float("nan"), 0.5, 0.4]}
    save_loss_curve(tmp_path / "loss.png", history)
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert smooth([1.0, float("nan"), 3.0], 2).tolist() == [1.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="equally long"):
        save_loss_curve(tmp_path / "x.png", {"step": [0], "loss": []})
    with pytest.raises(ValueError, match="nothing to animate"):
        save_gif(tmp_path / "b.gif", [])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"needs matplotlib: pip install 'ddpm-kernels\[demo\]'"):
        save_loss_curve(tmp_path / "y.png", history)
