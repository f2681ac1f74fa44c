"""The torch library: the DDPM UNet, schedules, samplers, training (DESIGN contract 5).

Tables come from `reference/` (float64, cast once); hot paths go through `kernels`.
"""

from .diffusers_io import config_from_diffusers, diffusers_config, save_diffusers, to_diffusers
from .fast_sampler import FastSampler
from .samplers import SAMPLERS, Sampler, sample
from .unet import UNet
from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .data import ImageDataset, load_dataset
from .distributed import DistributedContext, init_distributed, sample_distributed
from .ema import EMA
from .train import NonFiniteLossError, TrainConfig, Trainer
from .losses import bits_per_dim  # Improved DDPM's bound in bits/dim (ddpm.losses)
from .diffusers_scheduler import scheduler_config

__all__ = [
    "UNet",
    "sample",
    "Sampler",
    "FastSampler",
    "SAMPLERS",
    "config_from_diffusers",
    "diffusers_config",
    "to_diffusers",
    "save_diffusers",
    "Trainer",
    "TrainConfig",
    "NonFiniteLossError",
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "ImageDataset",
    "load_dataset",
    "DistributedContext",
    "init_distributed",
    "sample_distributed",
    "bits_per_dim",
    "scheduler_config",
]

from .evaluate import sample_quality  # issue 16: FD-<data>, precision/recall, ... beside their floors (ddpm.evaluate)

__all__ += ["sample_quality"]

from .autoencoder import AutoencoderKL  # latent diffusion's KL autoencoder (issue 14)

__all__ += ["AutoencoderKL"]

from .classifier import Classifier  # classifier guidance (issue 12)
__all__ += ["Classifier"]
