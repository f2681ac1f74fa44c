"""diffusers `AutoencoderKL` interop: configs both ways, weights in, `save_pretrained` folders out.

The parameter names are the same on both sides (`reference.autoencoder_parameter_shapes`), so
weights move by name; files and folders are read by `ddpm.diffusers_io.load_diffusers_state_dict`
(legacy attention names `query/key/value/proj_attn` and (C, C, 1, 1) attention weights are
mapped, as for the UNet). The layout (channels, levels, layers, latent channels, quant convs,
mid attention) is read from the weights; `sample_size`, `norm_num_groups` and `scaling_factor`
leave no trace in them and come from the config (diffusers' defaults for keys a config dict omits).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import torch

from reference import check_parameter_names
from reference.autoencoder_config import AutoencoderConfig, autoencoder_parameter_shapes

from .diffusers_io import CONFIG_NAME, METADATA_KEY, WEIGHTS_NAMES, _all_finite, load_diffusers_state_dict

__all__ = ["autoencoder_config_from_diffusers", "autoencoder_diffusers_config",
           "autoencoder_weights_from_diffusers", "save_autoencoder_diffusers", "AUTOENCODER_UNDETERMINED"]

# diffusers AutoencoderKL.__init__ defaults (diffusers 0.3x-0.4x)
DIFFUSERS_AE_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": [64], "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32,
    "scaling_factor": 0.18215, "shift_factor": None, "latents_mean": None, "latents_std": None,
    "force_upcast": True, "use_quant_conv": True, "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
AUTOENCODER_UNDETERMINED = ("sample_size", "norm_num_groups", "scaling_factor")


def autoencoder_config_from_diffusers(d: dict) -> AutoencoderConfig:
    """An AutoencoderConfig from a diffusers AutoencoderKL config dict (missing keys: defaults)."""
    if not isinstance(d, dict):
        raise TypeError(f"config must be a dict, got {type(d).__name__}")
    d = {**DIFFUSERS_AE_DEFAULTS, **d}
    levels = len(d["block_out_channels"])
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = d.get(key, [want] * levels)
        if list(types) != [want] * levels:
            raise ValueError(f"config {key} must be {levels} x {want!r} (the KL autoencoder), got {types}")
    if d["act_fn"] != "silu":
        raise ValueError(f"config act_fn must be 'silu', got {d['act_fn']!r}")
    if d["latents_mean"] is not None or d["latents_std"] is not None:
        raise ValueError("config latents_mean / latents_std (per-channel latent statistics) are not "
                         "supported; use scaling_factor and shift_factor")
    return AutoencoderConfig(
        image_size=int(d["sample_size"][0] if isinstance(d["sample_size"], (list, tuple)) else d["sample_size"]),
        in_channels=int(d["in_channels"]), out_channels=int(d["out_channels"]),
        latent_channels=int(d["latent_channels"]), block_out_channels=tuple(d["block_out_channels"]),
        layers_per_block=int(d["layers_per_block"]), groups=int(d["norm_num_groups"]),
        mid_block_add_attention=bool(d["mid_block_add_attention"]),
        use_quant_conv=bool(d["use_quant_conv"]), use_post_quant_conv=bool(d["use_post_quant_conv"]),
        scaling_factor=float(d["scaling_factor"]),
        shift_factor=None if d["shift_factor"] is None else float(d["shift_factor"]))


def autoencoder_diffusers_config(config: AutoencoderConfig) -> dict:
    """The diffusers AutoencoderKL config dict of `config` (`AutoencoderKL(**it)` builds the twin)."""
    levels = config.levels
    return {"_class_name": "AutoencoderKL", "in_channels": config.in_channels,
            "out_channels": config.out_channels, "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": list(config.block_out_channels),
            "layers_per_block": config.layers_per_block, "act_fn": "silu",
            "latent_channels": config.latent_channels, "norm_num_groups": config.groups,
            "sample_size": config.image_size, "scaling_factor": config.scaling_factor,
            "shift_factor": config.shift_factor, "latents_mean": None, "latents_std": None,
            "force_upcast": True, "use_quant_conv": config.use_quant_conv,
            "use_post_quant_conv": config.use_post_quant_conv,
            "mid_block_add_attention": config.mid_block_add_attention}


def _layout_from_weights(state: dict) -> dict:
    """The config keys the weights fix (shapes and which names exist)."""
    def shape(key):
        if key not in state:
            raise ValueError(f"state_dict_or_folder lacks {key!r}: not a diffusers AutoencoderKL state dict")
        return tuple(state[key].shape)

    levels = 1 + max((int(m.group(1)) for k in state
                      for m in [re.match(r"encoder\.down_blocks\.(\d+)\.", k)] if m), default=0)
    chans = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)]
    layers = 1 + max(int(m.group(1)) for k in state
                     for m in [re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k)] if m)
    return {"block_out_channels": chans, "layers_per_block": layers,
            "in_channels": shape("encoder.conv_in.weight")[1],
            "out_channels": shape("decoder.conv_out.weight")[0],
            "latent_channels": shape("decoder.conv_in.weight")[1],
            "use_quant_conv": "quant_conv.weight" in state,
            "use_post_quant_conv": "post_quant_conv.weight" in state,
            "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in state}


def autoencoder_weights_from_diffusers(state_dict_or_folder, config=None, *, dtype: torch.dtype | None = None):
    """(AutoencoderConfig, checked state dict, dtype) for `ddpm.AutoencoderKL.from_diffusers`.

    config: an AutoencoderConfig (used as is); a diffusers config dict (over the stored one);
    or None: the config stored with the weights (config.json beside them, or our safetensors
    metadata). Without any config, AUTOENCODER_UNDETERMINED cannot be known: a ValueError names
    them. Raises ValueError naming missing / unexpected / wrong-shape / non-finite weights.
    """
    state, stored = load_diffusers_state_dict(state_dict_or_folder)
    if isinstance(config, AutoencoderConfig):
        cfg = config
    elif config is None or isinstance(config, dict):
        if config is None and stored is None:
            raise ValueError(f"state_dict_or_folder carries no config and none was given: the weights do "
                             f"not determine {', '.join(AUTOENCODER_UNDETERMINED)}; pass config=")
        given = {**(stored or {}), **(config or {})}
        layout = _layout_from_weights(state)
        clash = {k: (given[k], v) for k, v in layout.items()
                 if k in given and (list(given[k]) if isinstance(v, list) else given[k]) != v}
        if clash:
            raise ValueError("the config disagrees with the weights: "
                             + ", ".join(f"{k}: config {a!r}, weights {b!r}" for k, (a, b) in clash.items()))
        cfg = autoencoder_config_from_diffusers({**given, **layout})
    else:
        raise TypeError(f"config must be an AutoencoderConfig, a diffusers config dict or None, "
                        f"got {type(config).__name__}")
    check_parameter_names(autoencoder_parameter_shapes(cfg), state, "state_dict_or_folder")
    for key, value in state.items():
        if not value.is_floating_point():
            raise TypeError(f"{key} must be a floating tensor, got dtype {value.dtype}")
        if not _all_finite(value):
            raise ValueError(f"{key} contains NaN or inf")
    if dtype is None:
        dtypes = {v.dtype for v in state.values()}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return cfg, OrderedDict(state), dtype


def save_autoencoder_diffusers(config: AutoencoderConfig, state: dict, path) -> Path:
    """Write `state` as a diffusers `save_pretrained` folder (or one .safetensors with the config
    in its metadata); returns the weights file."""
    from safetensors.torch import save_file

    check_parameter_names(autoencoder_parameter_shapes(config), state, "state")
    cfg = autoencoder_diffusers_config(config)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {METADATA_KEY: json.dumps(cfg), "format": "pt"}
    path = Path(path)
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)
        return path
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    weights = path / WEIGHTS_NAMES[0]
    save_file(tensors, str(weights), metadata=metadata)
    return weights
