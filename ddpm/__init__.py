"""The torch library: the DDPM UNet, schedules, samplers, training (DESIGN contract 5).

Tables come from `reference/` (float64, cast once); hot paths go through `kernels`.
"""

from .diffusers_io import config_from_diffusers, diffusers_config, save_diffusers, to_diffusers
from .fast_sampler import FastSampler
from .samplers import SAMPLERS, Sampler, sample
from .schedule import TorchSchedule
from .unet import UNet

__all__ = [
    "UNet",
    "TorchSchedule",
    "sample",
    "Sampler",
    "FastSampler",
    "SAMPLERS",
    "config_from_diffusers",
    "diffusers_config",
    "to_diffusers",
    "save_diffusers",
]
