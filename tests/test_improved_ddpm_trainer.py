"""ddpm.Trainer with Improved DDPM's options: the hybrid / vlb objectives as the reference defines
them, importance-sampled t from the noise stream, the L_t history through a resume, the
options in the checkpoint, and the bad combinations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm.checkpoint import load_checkpoint
from ddpm.data import ImageDataset
from ddpm.train import TrainConfig, Trainer
from helpers import assert_close

SCHEDULE = reference.make_schedule("cosine", 6)


def grid_dataset(n: int = 24) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g).double() / 127.5 - 1.0
    return ImageDataset(images.float(), None, None, None, "grid")


def make_trainer(variance="learned", **overrides) -> Trainer:
    torch.manual_seed(0)
    settings = dict(steps=10, batch_size=6, lr=1e-3, seed=5, label_dropout=0.0, variance=variance,
                    loss="hybrid", ema_decay=0.9)
    settings.update(overrides)
    out = 2 if variance == "learned" else 1
    model = ddpm.UNet(reference.UNetConfig.tiny(out_channels=out), zero_init=False)
    return Trainer(model, SCHEDULE, TrainConfig(**settings), grid_dataset())


@pytest.mark.parametrize("loss, variance", [("hybrid", "learned"), ("vlb", "learned"), ("vlb", "fixed_large")])
def test_loss_is_the_reference_variational_loss_with_the_training_noise_stream(loss, variance):
    trainer = make_trainer(variance, loss=loss)
    step = 3
    x0 = trainer.dataset.images[:4]
    t = torch.tensor([0, 1, 3, 5])
    samples = torch.tensor([2, 3, 4, 5])
    got = trainer.compute_loss(x0, t, None, samples, step)
    x0_np, t_np = x0.double().numpy(), t.numpy()
    eps = reference.normal(5, samples.numpy(), reference.train_stream(step), (1, 4, 4)).astype(np.float64)
    x_t = reference.q_sample(x0_np, t_np, eps, SCHEDULE)
    with torch.no_grad():
        out = trainer.model(torch.from_numpy(x_t).float(), t, None).double().numpy()
    expected, terms, _ = reference.variational_loss(out, x0_np, x_t, eps, t_np, SCHEDULE, loss=loss, variance=variance)
    # float32 x_t, model and tables vs the float64 chain: float32 round-off of terms of O(1-10)
    assert_close(got.detach(), np.float64(expected), atol=1e-5, rtol=1e-4, name="loss")
    assert_close(trainer._step_terms, terms, atol=1e-5, rtol=1e-4, name="L_t")


def test_importance_sampling_draws_the_reference_t_and_survives_a_resume(tmp_path):
    config = dict(loss="vlb", timestep_sampling="importance", importance_history=2, steps=12)
    trainer = make_trainer(**config)
    trainer.fit(6, progress=False)
    history = trainer.importance
    assert history.warmed_up  # T = 6, 2 values each: full within 36 draws of uniform t
    p = history.probabilities()
    trainer.save(tmp_path)
    expected_t = reference.importance_draws(5, np.arange(6), trainer.step, p, SCHEDULE.T).t
    trainer.train_step()
    assert np.array_equal(trainer._step_t.numpy(), expected_t)
    trainer.fit(12, progress=False)

    resumed = make_trainer(**config)
    resumed.load(tmp_path)
    resumed.fit(12, progress=False)
    assert resumed.history["loss"] == trainer.history["loss"]  # bit for bit on the CPU
    assert np.array_equal(resumed.importance.losses, trainer.importance.losses)
    saved = load_checkpoint(tmp_path).config["training"]
    assert (saved["loss"], saved["variance"], saved["timestep_sampling"]) == ("vlb", "learned", "importance")


def test_hybrid_training_reduces_the_loss_and_records_its_options(tmp_path):
    trainer = make_trainer(steps=30, lr=3e-3)
    trainer.fit(progress=False, run_dir=tmp_path)
    loss = np.asarray(trainer.history["loss"])
    assert np.all(np.isfinite(loss)) and loss[-10:].mean() < loss[:10].mean()
    saved = load_checkpoint(tmp_path).config["training"]
    assert (saved["loss"], saved["variance"], saved["vlb_weight"]) == ("hybrid", "learned", 0.001)
    assert TrainConfig.from_dict(saved) == trainer.config


def test_bad_combinations_are_named():
    with pytest.raises(ValueError, match="config.variance='learned' needs a variance half"):
        Trainer(ddpm.UNet(reference.UNetConfig.tiny()), SCHEDULE,
                TrainConfig(variance="learned", loss="hybrid"), grid_dataset())
    with pytest.raises(ValueError, match="config.variance='fixed_small' needs no variance half"):
        Trainer(ddpm.UNet(reference.UNetConfig.tiny(out_channels=2)), SCHEDULE, TrainConfig(), grid_dataset())
    with pytest.raises(ValueError, match="loss='hybrid' .* needs variance='learned'"):
        TrainConfig(loss="hybrid")
    with pytest.raises(ValueError, match="loss='simple' does not train a learned variance"):
        TrainConfig(variance="learned")
    with pytest.raises(ValueError, match="timestep_sampling='importance' applies to loss='vlb'"):
        TrainConfig(variance="learned", loss="hybrid", timestep_sampling="importance")
    with pytest.raises(ValueError, match="min_snr_gamma weights the simple loss only"):
        TrainConfig(variance="learned", loss="vlb", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="kl")


def test_cli_trains_a_learned_variance_model_and_refuses_a_bad_combination(tmp_path, capsys):
    from ddpm.cli import main

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "2", "--batch-size", "4", "--timesteps", "10",
                 "--variance", "learned", "--loss", "vlb", "--timestep-sampling", "importance",
                 "--samples", "2", "--sample-steps", "3", "--no-progress", "--device", "cpu",
                 "--unconditional"]) == 0
    assert (out / "samples.png").exists()  # drawn with the model's learned variance
    ckpt = load_checkpoint(out)
    assert ckpt.unet_config.out_channels == 2 * ckpt.unet_config.in_channels
    training = ckpt.config["training"]
    assert (training["variance"], training["loss"], training["timestep_sampling"]) == ("learned", "vlb", "importance")
    assert main(["train", "--out", str(tmp_path / "bad"), "--steps", "2", "--loss", "hybrid", "--samples", "0",
                 "--device", "cpu"]) == 2
    assert "needs variance='learned'" in capsys.readouterr().err
