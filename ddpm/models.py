"""The model of a config: a `reference.UNetConfig` builds a `ddpm.UNet`, a `reference.DiTConfig` a
`ddpm.DiT`. What runs, checkpoints and the CLI use instead of naming the UNet (`--arch`)."""

from __future__ import annotations

import reference

from .dit import DiT
from .unet import UNet

__all__ = ["MODEL_CLASSES", "DEFAULT_PRESETS", "build_model", "preset_arch"]

MODEL_CLASSES = {"unet": UNet, "dit": DiT}
# --arch -> the preset of a new run without --config
DEFAULT_PRESETS = {"unet": "digits8", "dit": "dit-digits"}


def build_model(config, **kwargs):
    """A fresh torch model of `config` (its family's class)."""
    return MODEL_CLASSES[reference.arch_of(config)](config, **kwargs)


def preset_arch(preset: str) -> str:
    """The family of a --config preset name."""
    return "dit" if preset in reference.DIT_PRESETS else "unet"
