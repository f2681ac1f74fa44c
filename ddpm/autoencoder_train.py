"""Training the KL autoencoder with the DDPM Trainer's machinery, and its checkpoints.

`AutoencoderTrainer` is a `ddpm.train.Trainer`: the same step (`train_step`: loss, backward,
gradient clipping, AdamW with warmup/cosine, EMA, skipped non-finite steps), loop (`fit`:
progress bar, periodic checkpoints), data order (EpochSampler), trainer state and RNG capture,
so resuming is bit-for-bit on the CPU as for the UNet. What differs is the objective
(`compute_loss`: reconstruction + kl_weight * KL through z = mean + std * noise, the noise from
the stream `reference.autoencoder_stream(step)` of each global sample index) and the config
saved with the weights (an "autoencoder" entry in place of "unet"; no schedule).

Checkpoints are `ddpm.checkpoint`'s format (atomic directory, marker with hashes, safetensors
weights under diffusers' AutoencoderKL names), read back by `load_autoencoder_checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

import reference
from reference.autoencoder_config import AutoencoderConfig, autoencoder_parameter_shapes

from .autoencoder import AutoencoderKL, autoencoder_loss, posterior_noise
from .checkpoint import (FORMAT, VERSION, CheckpointError, _read_safetensors, _read_trainer_state, _resolve,
                         _verify, save_checkpoint)
from .data import ImageDataset
from .distributed import DistributedContext, barrier, rank_slice
from .train import TrainConfig, Trainer
from .train_setup import check_trainer_arguments, restore_training, setup_training

__all__ = ["AutoencoderTrainer", "AutoencoderCheckpoint", "load_autoencoder_checkpoint", "KIND"]

KIND = "autoencoder_kl"


class AutoencoderTrainer(Trainer):
    """Trains a `ddpm.AutoencoderKL` on `dataset` (images of its in_channels x image_size^2).

    config: a TrainConfig (its diffusion fields, prediction / variance / loss / label_dropout,
    are unused); kl_weight: beta of the loss (reference.autoencoder_loss).
    """

    def __init__(self, model: AutoencoderKL, config: TrainConfig, dataset: ImageDataset, *,
                 kl_weight: float = 1e-6, ctx: DistributedContext | None = None):
        check_trainer_arguments(model, config, dataset, (ImageDataset,), AutoencoderKL)
        if not (isinstance(kl_weight, (int, float)) and kl_weight >= 0 and kl_weight != float("inf")):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight!r}")
        ae = model.config
        expected = (ae.in_channels, ae.image_size, ae.image_size)
        if dataset.image_shape != expected:
            raise ValueError(f"dataset images have shape {dataset.image_shape}, the autoencoder expects {expected}")
        if ae.out_channels != ae.in_channels:
            raise ValueError(f"a reconstruction needs out_channels = in_channels, got {ae.out_channels} "
                             f"and {ae.in_channels}")
        self.kl_weight, self.ae_config = float(kl_weight), ae
        self.unet_config = None  # not a UNet: the Trainer's diffusion-only paths are overridden
        # model, DDP, EMA, AdamW, data order, generator, counters, history (ddpm.train_setup)
        setup_training(self, model, config, dataset, ctx, history_keys=("reconstruction", "kl"))
        self.importance = None
        self.feed = None  # in-memory data only: this _draw_batch indexes dataset.images (no --stream)

    def _draw_batch(self):
        """The next global batch's images (this rank's slice) and their global positions."""
        B = self.config.batch_size
        indices = torch.from_numpy(self.sampler.next(B))
        flip = torch.rand(B, generator=self.generator) < 0.5
        mine = rank_slice(B, self.ctx)
        x0 = self.dataset.images[indices[mine]]
        if self.dataset.hflip:
            x0 = torch.where(flip[mine].view(-1, 1, 1, 1), x0.flip(-1), x0)
        samples = torch.arange(B, dtype=torch.int64)[mine].to(self.ctx.device)
        return x0.to(self.ctx.device), None, None, samples

    def compute_loss(self, x0, t, y, samples, step):
        """reconstruction + kl_weight * KL of this rank's batch through the posterior sample."""
        noise = posterior_noise(self.config.seed, samples, step, self.ae_config.latent_shape)
        with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            x_hat, mean, logvar = self.ddp_model(x0, noise)
        loss, reconstruction, kl = autoencoder_loss(x_hat, x0, mean, logvar, self.kl_weight)
        self.history["reconstruction"].append(float(reconstruction.detach()))
        self.history["kl"].append(float(kl.detach()))
        return loss

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_config(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": KIND, "step": self.step,
                "autoencoder": self.ae_config.to_dict(),
                "training": {**self.config.to_dict(), "kl_weight": self.kl_weight},
                "data": {"source": self.dataset.source, "size": len(self.dataset),
                         "class_names": self.dataset.class_names, "fingerprint": self.dataset.fingerprint()}}

    def save(self, run_dir, keep_last: int | None = 3) -> Path | None:
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(run_dir, self.step, model_state=self.model.state_dict(),
                                   ema_state=self.ema.state_dict(), config=self.checkpoint_config(),
                                   trainer_state=self.trainer_state(), keep_last=keep_last)
        barrier(self.ctx)
        return path

    def load(self, checkpoint) -> None:
        if not isinstance(checkpoint, AutoencoderCheckpoint):
            checkpoint = load_autoencoder_checkpoint(checkpoint)
        if checkpoint.ae_config != self.ae_config:
            raise CheckpointError(f"checkpoint {checkpoint.path} holds another autoencoder config: "
                                  f"{checkpoint.ae_config} vs {self.ae_config}")
        restore_training(self, checkpoint.model_state, checkpoint.ema_state, checkpoint.trainer_state)

    def ema_model(self) -> AutoencoderKL:
        model = AutoencoderKL(self.ae_config).to(self.ctx.device).eval()
        self.ema.copy_to(model)
        return model


@dataclass
class AutoencoderCheckpoint:
    path: Path
    step: int
    config: dict
    ae_config: AutoencoderConfig
    model_state: dict
    ema_state: dict
    trainer_state: dict | None = field(default=None, repr=False)

    def model(self, ema: bool = True) -> AutoencoderKL:
        """An AutoencoderKL (eval mode, CPU, float32) with the (EMA) weights."""
        model = AutoencoderKL(self.ae_config)
        model.load_state_dict(self.ema_state if ema else self.model_state)
        return model.eval()


def is_autoencoder_checkpoint(path) -> bool:
    """Whether `path` (a run or checkpoint directory) holds one of our autoencoder checkpoints."""
    try:
        cfg = json.loads((_resolve(Path(path)) / "config.json").read_text())
    except (CheckpointError, OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("kind") == KIND


def load_autoencoder_checkpoint(path, *, map_location="cpu", trainer_state: bool = True) -> AutoencoderCheckpoint:
    """Load (and verify: marker, sizes, hashes, names and shapes) an autoencoder checkpoint."""
    path = _resolve(Path(path))
    _verify(path)
    cfg_path = path / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("kind") != KIND:
        raise CheckpointError(f"{path} is not an autoencoder checkpoint (config kind "
                              f"{config.get('kind') if isinstance(config, dict) else None!r}; a UNet run?)")
    try:
        ae_config = AutoencoderConfig.from_dict(config["autoencoder"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: invalid autoencoder config: {err}") from None
    shapes = autoencoder_parameter_shapes(ae_config)
    states = []
    for name in ("model.safetensors", "ema.safetensors"):
        state = _read_safetensors(path / name, map_location)
        try:
            reference.check_parameter_names(shapes, state, str(path / name))
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        states.append(state)
    state = _read_trainer_state(path / "trainer_state.pt", map_location, None) if trainer_state else None
    return AutoencoderCheckpoint(path, int(config.get("step", 0)), config, ae_config, states[0], states[1], state)
