"""diffusers `UNet2DModel` weights in and out of `ddpm.UNet` (no diffusers import needed).

Our parameter names ARE diffusers' (DESIGN contract 3), so for the current diffusers layout the
state-dict mapping is the identity on keys. What this module adds:

- reading a state dict from a dict of tensors, a `.safetensors` file, a `.bin`/`.pt` file, or a
  `save_pretrained` directory (config.json + diffusion_pytorch_model.safetensors/.bin);
- the LEGACY attention names of the hub's DDPM checkpoints (`query`/`key`/`value`/`proj_attn`
  instead of `to_q`/`to_k`/`to_v`/`to_out.0`) and 1x1-conv shaped (C, C, 1, 1) attention
  weights, both mapped to our (C, C) linear maps;
- `config_from_diffusers` / `diffusers_config`: a diffusers config dict <-> `UNetConfig`, rejecting
  what `ddpm.UNet` cannot represent (other block types, fourier/learned time embeddings,
  scale_shift ResBlocks, ...) with a ValueError naming the key and value; missing keys take
  diffusers' own defaults, as diffusers would. diffusers' attention_head_dim (a head width, so
  the head count differs between levels) is UNetConfig.head_channels;
- `infer_config`: the layout from the weights' names and shapes; what they cannot tell
  (`WEIGHTS_UNDETERMINED`: image size, norm groups and eps, sinusoid order and shift, downsample
  padding, head width) comes from a config or raises a ValueError naming the keys, never a guess;
- errors that list missing / unexpected / wrong-shape keys;
- export back (`to_diffusers`, `save_diffusers`), loadable by `UNet2DModel.from_pretrained`.

The dependency goes one way: `ddpm.unet` imports this module (`UNet.from_diffusers` builds the
model from `unet_weights_from_diffusers`); this module never imports `ddpm.unet`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from reference import check_parameter_names
from reference.unet_config import UNetConfig, parameter_shapes

__all__ = [
    "config_from_diffusers",
    "diffusers_config",
    "load_diffusers_state_dict",
    "normalize_diffusers_state_dict",
    "infer_config",
    "unet_weights_from_diffusers",
    "WEIGHTS_UNDETERMINED",
    "to_diffusers",
    "save_diffusers",
]

WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CONFIG_NAME = "config.json"
METADATA_KEY = "diffusers_config"  # our safetensors files carry the diffusers config here

# UNet2DModel.__init__ defaults (diffusers 0.42): a config dict without a key means this value.
DIFFUSERS_DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
# Keys that never change the network's outputs (bookkeeping of older diffusers versions).
_IGNORED_KEYS = {"num_train_timesteps", "resnet_num_groups"}
_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_ATTENTION_WEIGHT_RE = re.compile(r"^.*\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$")


# ----------------------------------------------------------------------------- configs

def _reject(key: str, value, why: str):
    raise ValueError(f"diffusers config {key}={value!r} cannot be represented by ddpm.UNet: {why}")


def _with_defaults(diffusers_cfg: dict) -> dict:
    """The config with UNet2DModel's defaults for the keys it lacks (as diffusers reads it)."""
    if not isinstance(diffusers_cfg, dict):
        raise TypeError(f"diffusers_cfg must be a dict (a UNet2DModel config), got {type(diffusers_cfg).__name__}")
    unknown = sorted(k for k in diffusers_cfg
                     if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS and k not in _IGNORED_KEYS)
    if unknown:
        warnings.warn(f"ignoring diffusers config keys unknown to UNet2DModel: {unknown}", stacklevel=3)
    cls = diffusers_cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"diffusers config _class_name must be 'UNet2DModel', got {cls!r}")
    return {**DIFFUSERS_DEFAULTS, **{k: v for k, v in diffusers_cfg.items() if k in DIFFUSERS_DEFAULTS}}


def _check_supported(d: dict) -> None:
    """Reject the keys whose value ddpm.UNet has no equivalent for (they change the network)."""
    fixed = {
        "time_embedding_type": ("positional", "only the sinusoidal (positional) time embedding exists"),
        "resnet_time_scale_shift": ("default", "ResBlocks add the time embedding (no scale_shift)"),
        "class_embed_type": (None, "classes are a learned embedding table (num_class_embeds)"),
        "center_input_sample": (False, "inputs are not re-centred"),
        "mid_block_type": ("UNetMidBlock2D", "the mid block is resnet, attention, resnet"),
        "downsample_type": ("conv", "downsampling is a stride-2 conv"),
        "upsample_type": ("conv", "upsampling is nearest 2x + conv"),
    }
    for key, (value, why) in fixed.items():
        if d[key] != value:
            _reject(key, d[key], why)
    if d["act_fn"] not in ("silu", "swish"):
        _reject("act_fn", d["act_fn"], "the activation is SiLU")
    if float(d["mid_block_scale_factor"]) != 1.0:
        _reject("mid_block_scale_factor", d["mid_block_scale_factor"], "ResBlock outputs are not rescaled")
    num_class_embeds = d["num_class_embeds"]
    if num_class_embeds is not None and int(num_class_embeds) < 2:
        _reject("num_class_embeds", num_class_embeds, "it counts num_classes + 1 (the null class) >= 2")


def _levels(d: dict) -> tuple[list[int], list[int]]:
    """(block_out_channels, the levels with attention) of a config with defaults filled in."""
    chans = [int(c) for c in d["block_out_channels"]]
    down, up = list(d["down_block_types"]), list(d["up_block_types"])
    if not (len(chans) == len(down) == len(up)) or not chans:
        raise ValueError(f"diffusers config needs as many block_out_channels as down/up block types, got "
                         f"block_out_channels={chans}, {len(down)} down_block_types, {len(up)} up_block_types")
    for i, kind in enumerate(down):
        if kind not in _DOWN_TYPES:
            _reject(f"down_block_types[{i}]", kind, f"supported: {sorted(_DOWN_TYPES)}")
    for i, kind in enumerate(up):
        if kind not in _UP_TYPES:
            _reject(f"up_block_types[{i}]", kind, f"supported: {sorted(_UP_TYPES)}")
    levels = len(chans)
    attention_levels = [i for i, kind in enumerate(down) if _DOWN_TYPES[kind]]
    up_attention_levels = [levels - 1 - i for i, kind in enumerate(up) if _UP_TYPES[kind]]
    if sorted(up_attention_levels) != attention_levels:
        raise ValueError(f"diffusers config has attention at down levels {attention_levels} but at up "
                         f"levels {sorted(up_attention_levels)} (up_block_types={up}); ddpm.UNet mirrors them")
    ch = chans[0]
    if any(c % ch for c in chans):
        raise ValueError(f"diffusers config block_out_channels={chans} must be multiples of "
                         f"block_out_channels[0] = {ch}")
    temb_dim = d["time_embedding_dim"]
    if temb_dim is not None and int(temb_dim) != 4 * ch:
        _reject("time_embedding_dim", temb_dim, f"the time embedding has 4 * block_out_channels[0] = {4 * ch}")
    groups = int(d["norm_num_groups"])
    if d["attn_norm_num_groups"] is not None and int(d["attn_norm_num_groups"]) != groups:
        _reject("attn_norm_num_groups", d["attn_norm_num_groups"], f"attention norms use norm_num_groups={groups}")
    return chans, attention_levels


def _sample_size(d: dict, levels: int) -> int:
    size = d["sample_size"]
    if size is None:
        raise ValueError("diffusers config sample_size=None: ddpm.UNet needs a fixed square image size; "
                         "set config['sample_size'] (or pass a reference.UNetConfig)")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or int(size[0]) != int(size[1]):
            _reject("sample_size", size, "images are square")
        size = size[0]
    if int(size) < 1 or int(size) % 2 ** (levels - 1):
        _reject("sample_size", size, f"{levels} levels halve it {levels - 1} times: a multiple of "
                                     f"{2 ** (levels - 1)} is needed")
    return int(size)


def _heads(d: dict, attention_channels: list[int]) -> tuple[int, int | None]:
    """(num_heads, head_channels) of UNetConfig for diffusers' attention_head_dim.

    diffusers gives every attention block heads = channels // attention_head_dim (None: one head
    of all channels). One attention width: a fixed num_heads (as older configs of this library
    say it); several widths: head_channels, so each level gets its own head count.
    """
    head_dim = d["attention_head_dim"]
    if head_dim is None or not attention_channels:
        return 1, None
    head_dim = int(head_dim)
    for c in attention_channels:
        if head_dim < 1 or c % head_dim:
            # diffusers would build heads * head_dim != c channels: (c', c) projections
            _reject("attention_head_dim", head_dim, f"it must divide the attention channels {c}")
    if len(set(attention_channels)) == 1:
        return attention_channels[0] // head_dim, None
    return 1, head_dim


def config_from_diffusers(diffusers_cfg: dict) -> UNetConfig:
    """The `UNetConfig` of a diffusers `UNet2DModel` config dict (e.g. `model.config`, config.json).

    Missing keys take UNet2DModel's defaults. Raises ValueError naming the key and value for
    anything ddpm.UNet cannot represent: block types other than (Attn)DownBlock2D/(Attn)UpBlock2D,
    a missing mid block, time_embedding_type != "positional", resnet_time_scale_shift !=
    "default", class_embed_type, act_fn != silu, center_input_sample, mid_block_scale_factor != 1,
    resnet down/upsampling, an attention pattern that is not mirrored between down and up blocks,
    an attention_head_dim that does not divide the attention channels, sample_size None.
    """
    d = _with_defaults(diffusers_cfg)
    _check_supported(d)
    chans, attention_levels = _levels(d)
    size = _sample_size(d, len(chans))
    attention_channels = [chans[i] for i in attention_levels] + ([chans[-1]] if d["add_attention"] else [])
    num_heads, head_channels = _heads(d, attention_channels)
    num_class_embeds = d["num_class_embeds"]
    return UNetConfig(
        image_size=size,
        in_channels=int(d["in_channels"]),
        out_channels=int(d["out_channels"]),
        ch=chans[0],
        ch_mult=tuple(c // chans[0] for c in chans),
        num_res_blocks=int(d["layers_per_block"]),
        attn_resolutions=tuple(size // 2**i for i in attention_levels),
        dropout=float(d["dropout"]),
        groups=int(d["norm_num_groups"]),
        eps=float(d["norm_eps"]),
        num_heads=num_heads,
        head_channels=head_channels,
        num_classes=None if num_class_embeds is None else int(num_class_embeds) - 1,
        mid_attention=bool(d["add_attention"]),
        flip_sin_to_cos=bool(d["flip_sin_to_cos"]),
        freq_shift=int(d["freq_shift"]),
        downsample_padding=int(d["downsample_padding"]),
    )


def _attention_head_dim(config: UNetConfig) -> int | None:
    """diffusers' attention_head_dim (one head width for every block) for config's heads."""
    if config.head_channels is not None:
        return config.head_channels
    if config.num_heads == 1:
        return None  # one head of all channels in each block, as the DDPM CIFAR-10 checkpoint says
    widths = config.attention_channels
    if len(widths) > 1:
        raise ValueError(f"num_heads={config.num_heads} with attention on {list(widths)} channels has no "
                         "diffusers equivalent (one attention_head_dim, so heads grow with channels); "
                         "set head_channels instead")
    return widths[0] // config.num_heads if widths else None


def diffusers_config(config: UNetConfig) -> dict:
    """The `UNet2DModel(**cfg)` keyword arguments that build `config`'s network (JSON-ready).

    num_heads == 1 is written as attention_head_dim=None (as the DDPM CIFAR-10 checkpoint does),
    head_channels as attention_head_dim; more than one fixed head needs the same channel count at
    every attention block.
    """
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a reference.UNetConfig, got {type(config).__name__}")
    chans = list(config.block_channels)
    attention = [config.level_has_attention(i) for i in range(config.levels)]
    return {
        "_class_name": "UNet2DModel",
        "sample_size": config.image_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "freq_shift": config.freq_shift,
        "flip_sin_to_cos": config.flip_sin_to_cos,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": chans,
        "layers_per_block": config.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": config.downsample_padding,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": float(config.dropout),
        "act_fn": "silu",
        "attention_head_dim": _attention_head_dim(config),
        "norm_num_groups": config.groups,
        "norm_eps": float(config.eps),
        "resnet_time_scale_shift": "default",
        "add_attention": config.mid_attention,
        "class_embed_type": None,
        "num_class_embeds": None if config.num_classes is None else config.num_classes + 1,
    }


# ----------------------------------------------------------------------------- state dicts

def _read_file(path: Path) -> tuple[dict, dict | None]:
    """(state dict, diffusers config or None) from a weights file or a save_pretrained directory."""
    config = None
    if path.is_dir():
        for name in WEIGHTS_NAMES:
            if (path / name).is_file():
                weights = path / name
                break
        else:
            raise ValueError(f"state_dict_or_path: directory {str(path)!r} holds none of {WEIGHTS_NAMES}")
    elif path.is_file():
        weights = path
    else:
        raise ValueError(f"state_dict_or_path: no such file or directory {str(path)!r}")
    config_file = weights.parent / CONFIG_NAME
    try:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            if METADATA_KEY in metadata:
                config = json.loads(metadata[METADATA_KEY])
        elif weights.suffix in (".bin", ".pt", ".pth"):
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"state_dict_or_path: {str(weights)!r} is not a .safetensors/.bin/.pt file")
    except ValueError:
        raise
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise ValueError(f"state_dict_or_path: cannot read {str(weights)!r} as a state dict "
                         f"({type(exc).__name__}: {exc})") from exc
    if config is None and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the diffusers config {str(config_file)!r}: {exc}") from exc
    return state, config


def normalize_diffusers_state_dict(state: dict) -> "OrderedDict[str, torch.Tensor]":
    """Map legacy attention names and (C, C, 1, 1) attention weights to the current layout.

    `...attentions.{j}.query/key/value/proj_attn.*` -> `to_q/to_k/to_v/to_out.0.*`; attention
    projection weights of shape (C, C, 1, 1) -> (C, C). Other keys pass unchanged.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of tensors, got {type(state).__name__}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be strings, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict value {key!r} must be a torch.Tensor, got {type(value).__name__}")
        match = _LEGACY_RE.match(key)
        new_key = (f"{match.group(1)}.{_LEGACY_ATTENTION[match.group(2)]}.{match.group(3)}"
                   if match else key)
        if new_key in out or (new_key != key and new_key in state):
            raise ValueError(f"state dict holds both {key!r} and its current name {new_key!r}")
        if _ATTENTION_WEIGHT_RE.match(new_key) and value.ndim == 4:
            if value.shape[2:] != (1, 1):
                raise ValueError(f"{key}: attention weights must be (C, C) or (C, C, 1, 1), "
                                 f"got {tuple(value.shape)}")
            value = value[:, :, 0, 0]
        out[new_key] = value
    return out


def load_diffusers_state_dict(state_dict_or_path) -> tuple["OrderedDict[str, torch.Tensor]", dict | None]:
    """(normalized state dict, diffusers config dict or None) from a dict, file or directory."""
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state, config = _read_file(Path(state_dict_or_path))
    elif isinstance(state_dict_or_path, dict):
        state, config = state_dict_or_path, None
    else:
        raise TypeError("state_dict_or_path must be a dict of tensors or a path (.safetensors, .bin, "
                        f"or a save_pretrained directory), got {type(state_dict_or_path).__name__}")
    return normalize_diffusers_state_dict(state), config


# ----------------------------------------------------------------------------- inference

# UNet2DModel keys that change the outputs but leave no trace in the weights' names and shapes
# (attention_head_dim: to_q/to_k/to_v are (C, C) for every head count; norm_num_groups: GroupNorm
# weights are per channel, and every norm width is a multiple of the even block_out_channels[0],
# so even their gcd leaves several group counts). Without a config they must be given, never
# guessed.
WEIGHTS_UNDETERMINED = ("sample_size", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift",
                        "downsample_padding", "attention_head_dim")


def _indices(state: dict, prefix: str) -> list[int]:
    """The sorted distinct integers i of the keys `{prefix}{i}.*`."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _layout_from_weights(state: dict, shape) -> dict:
    """The block layout keys: channels, levels, layers per block, attention placement."""
    levels = len(_indices(state, "down_blocks."))
    if levels < 1:
        raise ValueError("cannot infer the UNet config: the state dict has no down_blocks.*")
    chans = [shape(f"down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)]
    up_levels = len(_indices(state, "up_blocks."))

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state)

    layout = {
        "block_out_channels": chans,
        "layers_per_block": len(_indices(state, "down_blocks.0.resnets.")),
        "down_block_types": ["AttnDownBlock2D" if has(f"down_blocks.{i}.attentions.") else "DownBlock2D"
                             for i in range(levels)],
        "up_block_types": ["AttnUpBlock2D" if has(f"up_blocks.{i}.attentions.") else "UpBlock2D"
                           for i in range(up_levels)],
        "add_attention": has("mid_block.attentions."),
    }
    # Variants ddpm.UNet refuses, recognised by their own parameters so the error names the key.
    if not has("mid_block."):
        layout["mid_block_type"] = None
    if has("down_blocks.0.downsamplers.0.norm1."):
        layout["downsample_type"] = "resnet"
    if has("up_blocks.0.upsamplers.0.norm1."):
        layout["upsample_type"] = "resnet"
    if shape("down_blocks.0.resnets.0.time_emb_proj.weight")[0] == 2 * chans[0]:
        layout["resnet_time_scale_shift"] = "scale_shift"  # the projection gives (scale, shift)
    return layout


def _config_from_weights(state: dict) -> dict:
    """The UNet2DModel config keys that the names and shapes of a (normalized) state dict fix."""
    def shape(key):
        if key not in state:
            raise ValueError(f"cannot infer the UNet config: the state dict has no {key!r}")
        return tuple(state[key].shape)

    inferred = {"in_channels": shape("conv_in.weight")[1], "out_channels": shape("conv_out.weight")[0],
                "time_embedding_dim": shape("time_embedding.linear_1.weight")[0]}
    if "time_proj.W" in state or "time_proj.weight" in state:
        # GaussianFourierProjection holds a (C,) vector, the learned table an (T, C) embedding
        inferred["time_embedding_type"] = ("learned" if "time_proj.weight" in state
                                           and len(shape("time_proj.weight")) == 2 else "fourier")
    inferred["num_class_embeds"] = None
    if "class_embedding.weight" in state:
        inferred["num_class_embeds"] = shape("class_embedding.weight")[0]  # num_classes + the null row
    elif any(k.startswith("class_embedding.") for k in state):
        inferred["class_embed_type"] = "timestep"
    inferred.update(_layout_from_weights(state, shape))
    if not any(t.startswith("Attn") for t in inferred["down_block_types"]) and not inferred["add_attention"]:
        inferred["attention_head_dim"] = None  # no attention block: the head width means nothing
    if len(inferred["block_out_channels"]) == 1:
        inferred["downsample_padding"] = DIFFUSERS_DEFAULTS["downsample_padding"]  # no downsampler
    return inferred


def infer_config(state: dict, config: dict | None = None) -> UNetConfig:
    """The UNetConfig of a (normalized) diffusers state dict: the weights plus `config`.

    The names and shapes fix in/out channels, block_out_channels (ch, ch_mult), the number of
    levels, layers_per_block, which levels and whether the mid block have attention, the class
    embedding (num_class_embeds rows = num_classes + the null class) and the time-embedding width.
    They cannot fix WEIGHTS_UNDETERMINED (image size, GroupNorm groups and eps, the sinusoid's
    order and shift, the downsampling pad, the attention head width). config: None, and those
    keys raise a ValueError naming them; or a diffusers config dict (complete, or only those
    keys): its keys must agree with the weights (a contradiction is a ValueError naming the key),
    and keys that neither it nor the weights give take UNet2DModel's defaults, as diffusers
    reads a config. dropout, which no eval output depends on, takes diffusers' default 0.0.
    """
    inferred = _config_from_weights(state)
    if config is None:
        missing = [k for k in WEIGHTS_UNDETERMINED if k not in inferred]
        if missing:
            found = {k: inferred[k] for k in ("block_out_channels", "layers_per_block", "down_block_types",
                                              "add_attention", "num_class_embeds") if k in inferred}
            raise ValueError(
                f"the weights do not determine the UNet2DModel config keys {missing}; pass config= a "
                f"dict with them (e.g. config.json's values), a diffusers config or a reference.UNetConfig "
                f"(the weights give {found})")
        config = {}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a diffusers config dict or None, got {type(config).__name__}")
    _check_agreement(config, inferred)
    return config_from_diffusers({**inferred, **config})


def _check_agreement(config: dict, inferred: dict) -> None:
    """Raise a ValueError naming the first config key whose value the weights contradict."""
    def same(a, b):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return list(a) == list(b)
        return a == b

    # Filled in only because no block reads them (no attention, one level): nothing to contradict.
    unused = {"attention_head_dim", "downsample_padding"}
    for key, value in config.items():
        if key not in inferred or key in unused or same(value, inferred[key]):
            continue
        if key == "time_embedding_dim" and value is None:
            continue  # None means 4 * block_out_channels[0], checked by config_from_diffusers
        if key in ("down_block_types", "up_block_types") and not (
                isinstance(value, (list, tuple)) and set(value) <= {*_DOWN_TYPES, *_UP_TYPES}):
            continue  # a block type ddpm.UNet lacks: config_from_diffusers refuses it by name
        raise ValueError(f"the config's {key}={value!r} contradicts the weights, whose names and shapes "
                         f"give {key}={inferred[key]!r}")


def _all_finite(value: torch.Tensor) -> bool:
    """No NaN or inf: one reduction pass (NaN propagates into aminmax, inf is an extreme), not
    isfinite's bool copy of every weight (seconds for 274M parameters)."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def unet_weights_from_diffusers(state_dict_or_path, config=None, *, dtype: torch.dtype | None = None
                                ) -> tuple[UNetConfig, "OrderedDict[str, torch.Tensor]", torch.dtype]:
    """(config, checked state dict, dtype) for `ddpm.UNet.from_diffusers`, which builds the model.

    config: a UNetConfig (used as is); a diffusers config dict (over the config stored with the
    weights, if any); or None: the stored config (our safetensors metadata, or a config.json
    beside the file). Either dict is completed from the weights (`infer_config`); with none, the
    keys the weights do not determine raise a ValueError naming them.
    dtype: default the weights' own floating dtype (float32 if mixed).
    Raises ValueError listing missing / unexpected / wrong-shape keys, or naming a non-finite one.
    """
    state, stored_config = load_diffusers_state_dict(state_dict_or_path)
    if isinstance(config, dict) or config is None:
        if config is None and stored_config is None:
            config = infer_config(state)
        else:
            config = infer_config(state, {**(stored_config or {}), **(config or {})})
    elif not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a UNetConfig, a diffusers config dict or None, got {type(config).__name__}")
    check_parameter_names(parameter_shapes(config), state, "state_dict_or_path")
    for key, value in state.items():
        if not value.is_floating_point():
            raise TypeError(f"{key} must be a floating tensor, got dtype {value.dtype}")
        if not _all_finite(value):
            raise ValueError(f"{key} contains NaN or inf")
    if dtype is None:
        dtypes = {v.dtype for v in state.values()}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return config, state, dtype


def _model_state(model, name: str) -> dict:
    """A ddpm.UNet's state dict, checked against its config (duck-typed: no import of ddpm.unet,
    which imports this module)."""
    config = getattr(model, "config", None)
    if not isinstance(config, UNetConfig) or not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"{name} must be a ddpm.UNet or a state dict, got {type(model).__name__}")
    state = model.state_dict()
    check_parameter_names(parameter_shapes(config), state, name)
    return state


def to_diffusers(model_or_state) -> "OrderedDict[str, torch.Tensor]":
    """A diffusers `UNet2DModel` state dict (current names; detached copies) of a ddpm.UNet."""
    if isinstance(model_or_state, dict):
        state = normalize_diffusers_state_dict(model_or_state)
    else:
        state = _model_state(model_or_state, "model_or_state")
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in state.items())


def save_diffusers(model, path) -> Path:
    """Write a ddpm.UNet for diffusers: a `.safetensors` file (config in its metadata) or a directory.

    A directory gets config.json + diffusion_pytorch_model.safetensors, the `save_pretrained`
    layout that `UNet2DModel.from_pretrained(path)` and `ddpm.UNet.from_diffusers(path)` both load.
    Returns the path of the weights file.
    """
    from safetensors.torch import save_file

    _model_state(model, "model")
    path = Path(path)
    cfg = diffusers_config(model.config)
    state = {k: v.cpu() for k, v in to_diffusers(model).items()}
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata={METADATA_KEY: json.dumps(cfg), "format": "pt"})
        return path
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    weights = path / WEIGHTS_NAMES[0]
    save_file(state, str(weights), metadata={METADATA_KEY: json.dumps(cfg), "format": "pt"})
    return weights
