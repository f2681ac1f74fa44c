"""`python -m ddpm eval`: from a checkpoint (with bits/dim for a learned variance) and from
samples on disk, the files it writes, and bad input as one line with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reference
from ddpm.cli import main
from ddpm.feature_net import FeatureNet, save_feature_net


def cli(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr); a user error must be exactly one line."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    if code == 2:
        assert err.count("\n") == 1 and "error:" in err, err
    return code, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A one-step learned-variance digits model (T = 20) and the session's feature-net cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DDPM_CACHE", str(tmp_path_factory.getbasetemp() / "ddpm-cache"))
    root = tmp_path_factory.mktemp("eval-cli")
    assert main(["train", "--data", "digits", "--config", "digits8", "--out", str(root / "run"), "--steps", "1",
                 "--batch-size", "4", "--timesteps", "20", "--samples", "0", "--variance", "learned",
                 "--loss", "hybrid", "--no-progress", "--device", "cpu"]) == 0
    yield root
    mp.undo()


def test_eval_from_a_checkpoint_then_from_its_samples(setup, capsys):
    out = setup / "eval"
    code, err = cli(["eval", "--checkpoint", str(setup / "run"), "--n", "70", "--steps", "2", "--bpd", "6",
                     "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    assert result["n"] == 70 and result["fd_name"] == "FD-digits" and result["fd"] > result["fd_floor"] > 0
    assert np.isfinite(result["bits_per_dim"]) and result["bits_per_dim"] > 0
    assert len(result["hit_rate_per_class"]) == 10 and 0 <= result["hit_rate"] <= 1
    assert (out / "report.png").stat().st_size > 1000
    with np.load(out / "samples.npz") as saved:
        assert saved["images"].shape == (70, 1, 8, 8)
        assert np.bincount(saved["labels"]).tolist() == [7] * 10  # balanced over the classes
    again = setup / "again"
    code, err = cli(["eval", "--samples", str(out / "samples.npz"), "--out", str(again)], capsys)
    assert code == 0, err
    second = json.loads((again / "eval.json").read_text())
    for key in ("fd", "fd_floor", "precision", "recall", "hit_rate", "density", "coverage"):
        assert second[key] == result[key], key
    assert second["bits_per_dim"] is None
    # the same samples as PNGs in class subfolders 0..9 (8-bit rounding: close, not equal)
    from PIL import Image

    with np.load(out / "samples.npz") as saved:
        pixels = np.round((saved["images"][:, 0] + 1) * 127.5).astype(np.uint8)
        for i, (image, label) in enumerate(zip(pixels, saved["labels"])):
            (setup / "pngs" / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(setup / "pngs" / str(label) / f"{i}.png")
    code, err = cli(["eval", "--samples", str(setup / "pngs"), "--out", str(setup / "from-pngs")], capsys)
    assert code == 0, err
    third = json.loads((setup / "from-pngs" / "eval.json").read_text())
    assert third["n"] == 70 and third["hit_rate"] is not None
    assert third["fd"] == pytest.approx(result["fd"], rel=0.05)


def _npz(path, array):
    np.savez(path, images=array)
    return str(path)


def test_eval_bad_input_is_one_line(setup, tmp_path, capsys):
    run = str(setup / "run")
    nan = np.zeros((80, 1, 8, 8), np.float32)
    nan[5, 0, 2, 2] = np.nan
    mnist_like = FeatureNet(reference.feature_net_preset("mnist"), {"held_out_accuracy": 0.0})
    mnist_net = str(save_feature_net(mnist_like, tmp_path / "mnist.safetensors"))
    cases = [
        ([], "pass exactly one of --checkpoint"),
        (["--checkpoint", run, "--samples", run], "pass exactly one of --checkpoint"),
        (["--samples", _npz(tmp_path / "big.npz", np.zeros((80, 28, 28), np.uint8))],
         "holds 28x28 images but the feature network takes 8x8"),
        (["--samples", _npz(tmp_path / "nan.npz", nan)], "--samples contains NaN or inf in 1 of 80 samples"),
        (["--samples", _npz(tmp_path / "scale.npz", np.full((80, 1, 8, 8), 200.0))], "--samples must lie in [-1, 1]"),
        (["--samples", str(tmp_path / "missing.npz")], "--samples"),
        (["--checkpoint", run, "--data", "nowhere"], "--data must be digits or mnist"),
        (["--checkpoint", run, "--features", str(tmp_path / "none.safetensors")], "--features"),
        (["--checkpoint", run, "--data", "mnist", "--features", mnist_net],
         "the model makes (1, 8, 8) images but the feature network of --data takes (1, 28, 28)"),
        (["--checkpoint", run, "--steps", "50"], "--steps must lie in [1, T=20]"),
    ]
    for extra, message in cases:
        code, err = cli(["eval", "--out", str(tmp_path / "out"), "--device", "cpu", *extra], capsys)
        assert code == 2 and message in err, (extra, err)
    assert not (tmp_path / "out" / "eval.json").exists()
