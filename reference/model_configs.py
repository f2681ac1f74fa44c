"""Which model family a config describes, and its parameter names: the one table the trainer,
checkpoints and runs consult instead of assuming a UNet (DESIGN contract 6)."""

from __future__ import annotations

from collections import OrderedDict

from .dit_config import DiTConfig, dit_parameter_shapes
from .unet_config import UNetConfig, parameter_shapes

__all__ = ["ARCHS", "MODEL_CONFIGS", "arch_of", "model_parameter_shapes"]

# checkpoint config.json key / CLI --arch -> config class; "unet" first (the default)
ARCHS = {"unet": UNetConfig, "dit": DiTConfig}
MODEL_CONFIGS = tuple(ARCHS.values())
_SHAPES = {UNetConfig: parameter_shapes, DiTConfig: dit_parameter_shapes}


def arch_of(config) -> str:
    for name, cls in ARCHS.items():
        if isinstance(config, cls):
            return name
    raise TypeError(f"config must be one of {[c.__name__ for c in MODEL_CONFIGS]}, got {type(config).__name__}")


def model_parameter_shapes(config) -> "OrderedDict[str, tuple[int, ...]]":
    """Every parameter name -> shape of the model `config` describes."""
    return _SHAPES[ARCHS[arch_of(config)]](config)
