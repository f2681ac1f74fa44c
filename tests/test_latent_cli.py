"""Latent diffusion end to end: `python -m ddpm train-autoencoder`, `train --latent`, `sample`
decoding, resume, the latent cache and scaling factor, and the one-line errors of issue 14 item 4."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ddpm
import reference
from ddpm.autoencoder_train import load_autoencoder_checkpoint
from ddpm.checkpoint import CheckpointError, load_checkpoint
from ddpm.cli import main
from ddpm.data import ImageDataset
from ddpm.latent import decode_latent_samples, latent_dataset
from ddpm.preflight import UsageError
from ddpm.viz import make_grid
from tests.test_cli import cli, tiny_npz


def ae_args(data, out, steps=2, *extra):
    return ["train-autoencoder", "--data", str(data), "--config", "tiny", "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--no-progress", "--device", "cpu", *extra]


def latent_args(ae, data, out, steps=2, *extra):
    return ["train", "--latent", str(ae), "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--timesteps", "20", "--samples", "1", "--sample-steps", "3", "--no-progress",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    data = tiny_npz(root / "d.npz")
    assert main(ae_args(data, root / "ae", 3)) == 0
    assert main(latent_args(root / "ae", data, root / "lat")) == 0
    return root, data


def test_autoencoder_run_writes_checkpoint_and_grids(runs):
    root, _ = runs
    ckpt = load_autoencoder_checkpoint(root / "ae")
    assert ckpt.step == 3 and ckpt.ae_config == reference.AutoencoderConfig.tiny()
    assert ckpt.config["training"]["kl_weight"] == 1e-6
    assert (root / "ae" / "reconstructions.png").is_file() and (root / "ae" / "loss_curve.png").is_file()


def test_autoencoder_resume_is_the_uninterrupted_run(runs, tmp_path):
    _, data = runs
    assert main(ae_args(data, tmp_path / "straight", 4)) == 0
    assert main(ae_args(data, tmp_path / "split", 2)) == 0
    assert main(ae_args(data, tmp_path / "split", 4)) == 0
    a, b = (load_autoencoder_checkpoint(tmp_path / n) for n in ("straight", "split"))
    for name, value in a.model_state.items():
        assert torch.equal(value, b.model_state[name]), name
    assert a.trainer_state["history"]["loss"] == b.trainer_state["history"]["loss"]


def test_latent_run_scaling_cache_and_autoencoder(runs, capsys):
    root, data = runs
    ckpt = load_checkpoint(root / "lat")
    ae_config = reference.AutoencoderConfig.tiny()
    assert ckpt.unet_config == reference.latent_unet_config(2, 2, num_classes=3)
    latents = load_file(str(root / "lat" / "latents.safetensors"))["latents"]       # unscaled means
    saved = json.loads((root / "lat" / "autoencoder" / "config.json").read_text())
    assert saved["scaling_factor"] == pytest.approx(1.0 / latents.double().std(unbiased=False).item(), rel=1e-12)
    assert saved["latent_channels"] == ae_config.latent_channels and saved["sample_size"] == 4
    # resuming reads the cached latents instead of encoding again
    code, _ = cli(latent_args(root / "ae", data, root / "lat", 3), capsys)
    assert code == 0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++"])
def test_sample_decodes_every_sampler_with_guidance(runs, sampler):
    root, _ = runs
    out = root / f"s_{sampler}.png"
    assert main(["sample", "--checkpoint", str(root / "lat"), "--sampler", sampler, "--steps", "3", "--n", "2",
                 "--class", "all", "--guidance", "2", "--out", str(out), "--device", "cpu"]) == 0
    # images of the autoencoder's 4x4 size (not the 2x2 latents), 2 per class x 3 classes
    assert Image.open(out).size == make_grid(torch.zeros(6, 1, 4, 4), 2).size


def test_diffusers_autoencoder_keeps_its_scaling_factor(runs, tmp_path):
    _, data = runs
    ae = ddpm.AutoencoderKL(reference.AutoencoderConfig.tiny(scaling_factor=0.5, shift_factor=0.1))
    ae.save_diffusers(tmp_path / "hf")
    assert main(latent_args(tmp_path / "hf", data, tmp_path / "lat", 1, "--samples", "0")) == 0
    assert json.loads((tmp_path / "lat" / "autoencoder" / "config.json").read_text())["scaling_factor"] == 0.5


def test_bad_input_is_one_line(runs, capsys, tmp_path):
    root, data = runs
    code, err = cli(latent_args(root / "ae", data, tmp_path / "a", 1, "--config", "tiny"), capsys)
    assert code == 2 and "--config tiny has in_channels=1" in err and "latent_channels=2" in err
    other = tmp_path / "other_ae"  # an autoencoder of another image size for an existing latent run
    ddpm.AutoencoderKL(reference.AutoencoderConfig.tiny(image_size=8)).save_diffusers(other)
    code, err = cli(latent_args(other, data, root / "lat", 5), capsys)
    assert code == 2 and "another autoencoder" in err and "image_size 8" in err
    code, err = cli(latent_args(root / "lat", data, tmp_path / "b", 1), capsys)
    assert code == 2 and "--latent" in err
    code, err = cli(["train", "--data", str(data), "--out", str(tmp_path / "c"), "--latent-cache", "x"], capsys)
    assert code == 2 and "--latent-cache needs --latent" in err
    code, err = cli(["sample", "--checkpoint", str(root / "ae"), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "autoencoder_kl checkpoint, not a UNet" in err


def test_non_finite_latents_are_refused():
    ae = ddpm.AutoencoderKL(reference.AutoencoderConfig.tiny())
    images = torch.zeros(3, 1, 4, 4)
    images[1, 0, 0, 0] = float("nan")
    data = ImageDataset(images, None, None, None, "nan-data", False)
    with pytest.raises(UsageError, match="first at index 1"):
        latent_dataset(ae, data, own=True, echo=lambda _: None)
    with pytest.raises(CheckpointError, match="sampled latents hold 2 non-finite"):
        decode_latent_samples(ae, torch.tensor([[[[float("inf"), 0.0], [0.0, 0.0]]] * 2]), "run")
