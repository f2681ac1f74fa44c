"""The score objective end to end: Trainer on a VE schedule (DSM with lambda = sigma^2, equal to
reference.dsm_loss on the same draws), the checkpoint's record of the VE levels, and
`python -m ddpm train --objective score` / `sample --sampler langevin | annealed_langevin | pc`
with their one-line errors (exit status 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm.checkpoint import load_checkpoint
from ddpm.data import ImageDataset
from ddpm.train import TrainConfig, Trainer
from tests.test_cli import cli, tiny_npz

VE = reference.ve_schedule(5.0, 0.02, 12)


def score_train_args(data, out, steps=2, *extra):
    return ["train", "--data", str(data), "--config", "tiny", "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--objective", "score", "--sigma-max", "5", "--sigma-min", "0.02",
            "--levels", "12", "--samples", "1", "--sample-steps", "3", "--no-progress", "--device", "cpu", *extra]


def test_trainer_score_loss_is_reference_dsm_on_the_same_draws():
    config = reference.UNetConfig.tiny()
    torch.manual_seed(0)
    model = ddpm.UNet(config)
    images = torch.rand(8, config.in_channels, config.image_size, config.image_size) * 2 - 1
    trainer = Trainer(model, VE, TrainConfig(batch_size=4, seed=3), ImageDataset(images, None, None, None, "test"))
    x0, t = images[:4], torch.tensor([0, 3, 7, 11])
    samples = torch.arange(4)
    loss = trainer.compute_loss(x0, t, None, samples, step=5)
    z = reference.normal(3, np.arange(4), reference.train_stream(5), x0.shape[1:]).astype(np.float64)
    x_t = reference.ve_perturb(x0.double().numpy(), t.numpy(), z, VE)
    with torch.no_grad():
        out = model(torch.from_numpy(x_t).float(), t).double().numpy()
    expected, _ = reference.dsm_loss(out, z, VE.sigmas[t.numpy()])
    assert float(loss) == pytest.approx(expected, rel=1e-5)  # float32 net and tables


def test_trainer_refuses_vp_only_options_for_a_score_model():
    config = reference.UNetConfig.tiny()
    images = torch.zeros(4, config.in_channels, config.image_size, config.image_size)
    with pytest.raises(ValueError, match="prediction='v_prediction'"):
        Trainer(ddpm.UNet(config), VE, TrainConfig(prediction="v_prediction"), ImageDataset(images, None, None, None, "t"))


@pytest.fixture(scope="module")
def score_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    from ddpm.cli import main
    assert main(score_train_args(tiny_npz(root / "d.npz"), root / "run")) == 0
    return root / "run"


def test_score_checkpoint_records_the_ve_levels_and_resumes(score_run, capsys, tmp_path):
    ckpt = load_checkpoint(score_run)
    assert isinstance(ckpt.schedule, reference.VESchedule)
    np.testing.assert_array_equal(ckpt.schedule.sigmas, VE.sigmas)
    assert ckpt.config["schedule"]["process"] == "ve"
    assert (score_run / "samples.png").is_file()  # drawn with pc
    code, _ = cli(score_train_args(tmp_path / "missing.npz", score_run, 3), capsys)
    assert code == 2
    code, err = cli(score_train_args(score_run.parent / "d.npz", score_run, 3, "--sigma-max", "6"), capsys)
    assert code == 2 and "schedule" in err


@pytest.mark.parametrize("extra", [
    ["--sampler", "pc", "--steps", "4", "--snr", "0.1", "--corrector-steps", "1"],
    ["--sampler", "annealed_langevin", "--steps", "3", "--steps-per-level", "2", "--step-size", "1e-3"],
    ["--sampler", "langevin", "--steps", "30", "--step-size", "1e-3"],
])
def test_sample_with_the_score_samplers(score_run, tmp_path, capsys, extra):
    out = tmp_path / "grid.png"
    code, err = cli(["sample", "--checkpoint", str(score_run), "--n", "2", "--out", str(out), "--device", "cpu",
                     "--gif", str(tmp_path / "r.gif"), "--gif-frames", "3", *extra], capsys)
    assert code == 0, err
    assert out.is_file() and (tmp_path / "r.gif").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--sampler", "ddim"], "score model"),
    (["--sampler", "pc", "--snr", "0"], "--snr"),
    (["--sampler", "langevin", "--snr", "0.1"], "--snr"),
    (["--sampler", "annealed_langevin", "--steps", "13"], "--steps"),
])
def test_score_sampling_errors_are_one_line(score_run, tmp_path, capsys, extra, message):
    code, err = cli(["sample", "--checkpoint", str(score_run), "--n", "2", "--out", str(tmp_path / "g.png"),
                     "--device", "cpu", *extra], capsys)
    assert code == 2 and message in err, err


def test_train_score_flags_need_the_score_objective(tmp_path, capsys):
    data = tiny_npz(tmp_path / "d.npz")
    code, err = cli(["train", "--data", str(data), "--config", "tiny", "--out", str(tmp_path / "r"),
                     "--sigma-max", "3", "--no-progress", "--device", "cpu"], capsys)
    assert code == 2 and "--objective score" in err
    code, err = cli(score_train_args(data, tmp_path / "r2", 2, "--timesteps", "20"), capsys)
    assert code == 2 and "--objective score" in err
    code, err = cli(score_train_args(data, tmp_path / "r3", 2, "--sigma-min", "9"), capsys)
    assert code == 2 and "sigma_max must be > sigma_min" in err
