"""`python -m ddpm train-classifier` and `sample --classifier`: end to end on a tiny model (the
Trainer's checkpoints, EMA and resume; accuracy_vs_t), and every mismatch refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm.checkpoint import load_checkpoint
from ddpm.runs_classifier import ClassifierTrainer
from tests.test_cli import cli, tiny_npz, train_args


def classifier_args(data, out, steps=2, *extra):
    return ["train-classifier", "--data", str(data), "--config", "tiny", "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--timesteps", "20", "--holdout", "0.25", "--no-progress", "--device", "cpu",
            *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    data = tiny_npz(root / "d.npz")
    from ddpm.cli import main
    assert main(train_args(data, root / "denoiser", 2, "--unconditional") + ["--samples", "0"]) == 0
    assert main(classifier_args(data, root / "clf", 2, "--from-denoiser", str(root / "denoiser"))) == 0
    return root, data


def test_train_classifier_writes_a_classifier_checkpoint_and_accuracy_vs_t(runs):
    root, _ = runs
    ckpt = load_checkpoint(root / "clf")
    assert ckpt.model_kind == "classifier" and ckpt.step == 2 and ckpt.unet_config.num_classes == 3
    assert set(ckpt.model_state) == set(reference.classifier_parameter_shapes(ckpt.unet_config))
    result = json.loads((root / "clf" / "accuracy_vs_t.json").read_text())
    assert result["t"] == reference.accuracy_timesteps(20).tolist() and result["n"] == 3  # 25% of 12
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"])
    assert (root / "clf" / "accuracy_vs_t.png").stat().st_size > 0


def test_train_classifier_resumes_bit_for_bit(runs, tmp_path, capsys):
    _, data = runs
    assert cli(classifier_args(data, tmp_path / "a", 4), capsys)[0] == 0
    assert cli(classifier_args(data, tmp_path / "b", 2), capsys)[0] == 0
    assert cli(classifier_args(data, tmp_path / "b", 4), capsys)[0] == 0  # resumed from step 2
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert all(torch.equal(a.ema_state[k], b.ema_state[k]) for k in a.ema_state)
    code, err = cli(classifier_args(data, tmp_path / "b", 6, "--lr", "0.5"), capsys)
    assert code == 2 and "lr" in err


def test_sample_with_classifier_guidance_writes_the_grid(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "g.png"
    code, err = cli(["sample", "--checkpoint", str(root / "denoiser"), "--classifier", str(root / "clf"),
                     "--classifier-scale", "2", "--class", "all", "--n", "2", "--steps", "3",
                     "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    assert out.stat().st_size > 0


def test_sample_with_classifier_guidance_of_a_learned_variance_model(runs, tmp_path, capsys):
    """--sampler ddpm on a learned-variance denoiser (Alg. 1 with the model's Sigma), respaced."""
    root, data = runs
    from ddpm.cli import main
    denoiser = tmp_path / "learned"
    assert main(train_args(data, denoiser, 1, "--unconditional", "--variance", "learned", "--loss", "hybrid") + ["--samples", "0"]) == 0
    out = tmp_path / "g.png"
    code, err = cli(["sample", "--checkpoint", str(denoiser), "--classifier", str(root / "clf"),
                     "--classifier-scale", "2", "--class", "1", "--n", "2", "--sampler", "ddpm", "--steps", "4",
                     "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    assert out.stat().st_size > 0
    code, err = cli(["sample", "--checkpoint", str(denoiser), "--classifier", str(root / "clf"), "--class", "1",
                     "--sampler", "langevin", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 2 and "--sampler langevin (a score sampler) has no classifier-guidance term" in err, err


@pytest.mark.parametrize("extra, match", [
    (["--class", "all"], None),  # a classifier trained on T=10, the denoiser on T=20
    ([], "--classifier needs --class"),
    (["--class", "3"], "--class 3 is out of range"),
])
def test_sample_refuses_a_classifier_that_does_not_fit(runs, tmp_path, capsys, extra, match):
    root, data = runs
    classifier = root / "clf"
    if match is None:
        classifier = tmp_path / "clf10"
        args = classifier_args(data, classifier, 1)
        args[args.index("--timesteps") + 1] = "10"
        assert cli(args, capsys)[0] == 0
        match = "T=10"
    code, err = cli(["sample", "--checkpoint", str(root / "denoiser"), "--classifier", str(classifier),
                     "--n", "1", "--steps", "2", "--out", str(tmp_path / "x.png"), "--device", "cpu", *extra], capsys)
    assert code == 2 and match in err, err


def test_checkpoints_of_the_two_kinds_are_not_confused(runs, tmp_path, capsys):
    root, data = runs
    code, err = cli(["sample", "--checkpoint", str(root / "clf"), "--out", str(tmp_path / "x.png"),
                     "--device", "cpu"], capsys)
    assert code == 2 and "holds a classifier" in err
    code, err = cli(["sample", "--checkpoint", str(root / "denoiser"), "--classifier", str(root / "denoiser"),
                     "--class", "1", "--out", str(tmp_path / "x.png"), "--device", "cpu"], capsys)
    assert code == 2 and "not a classifier" in err
    code, err = cli(["sample", "--checkpoint", str(root / "denoiser"), "--classifier-scale", "2",
                     "--out", str(tmp_path / "x.png"), "--device", "cpu"], capsys)
    assert code == 2 and "--classifier-scale needs --classifier" in err
    code, err = cli(classifier_args(data, root / "denoiser", 3), capsys)
    assert code == 2 and "not a classifier run" in err


def test_classifier_trainer_refuses_label_dropout():
    config = reference.UNetConfig.tiny(num_classes=3)
    data = ddpm.data.ImageDataset(torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.int64), 3, None, "x")
    with pytest.raises(ValueError, match="label_dropout=0"):
        ClassifierTrainer(ddpm.Classifier(config), reference.make_schedule("linear", 10),
                          ddpm.TrainConfig(label_dropout=0.1), data)
    np.testing.assert_array_equal(reference.holdout_split(10, 0.3, 0)[1].size, 3)
