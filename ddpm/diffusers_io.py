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
  scale_shift ResBlocks, ...); missing keys take diffusers' own defaults, as diffusers would;
- errors that list missing / unexpected / wrong-shape keys;
- export back (`to_diffusers`, `save_diffusers`), loadable by `UNet2DModel.from_pretrained`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from reference.unet_config import UNetConfig

from .unet import UNet, check_state_dict_names

__all__ = [
    "config_from_diffusers",
    "diffusers_config",
    "load_diffusers_state_dict",
    "normalize_diffusers_state_dict",
    "infer_config",
    "from_diffusers",
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


def config_from_diffusers(diffusers_cfg: dict) -> UNetConfig:
    """The `UNetConfig` of a diffusers `UNet2DModel` config dict (e.g. `model.config`, config.json).

    Missing keys take UNet2DModel's defaults. Raises ValueError for anything ddpm.UNet cannot
    represent: block types other than (Attn)DownBlock2D/(Attn)UpBlock2D, a missing mid block,
    time_embedding_type != "positional", resnet_time_scale_shift != "default", class_embed_type,
    act_fn != silu, center_input_sample, mid_block_scale_factor != 1, resnet down/upsampling,
    an attention pattern that is not mirrored between down and up blocks, or attention heads
    that differ between levels.
    """
    if not isinstance(diffusers_cfg, dict):
        raise TypeError(f"diffusers_cfg must be a dict (a UNet2DModel config), got {type(diffusers_cfg).__name__}")
    unknown = sorted(k for k in diffusers_cfg
                     if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS and k not in _IGNORED_KEYS)
    if unknown:
        warnings.warn(f"ignoring diffusers config keys unknown to UNet2DModel: {unknown}", stacklevel=2)
    cls = diffusers_cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"diffusers config _class_name must be 'UNet2DModel', got {cls!r}")
    d = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in diffusers_cfg.items() if k in DIFFUSERS_DEFAULTS}}

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

    chans = [int(c) for c in d["block_out_channels"]]
    down, up = list(d["down_block_types"]), list(d["up_block_types"])
    if not (len(chans) == len(down) == len(up)) or not chans:
        raise ValueError(f"diffusers config needs as many block_out_channels as down/up block types, got "
                         f"{len(chans)}, {len(down)}, {len(up)}")
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
                         f"levels {sorted(up_attention_levels)}; ddpm.UNet mirrors them")

    ch = chans[0]
    temb_dim = d["time_embedding_dim"]
    if temb_dim is not None and int(temb_dim) != 4 * ch:
        _reject("time_embedding_dim", temb_dim, f"the time embedding has 4 * block_out_channels[0] = {4 * ch}")
    if any(c % ch for c in chans):
        raise ValueError(f"block_out_channels {chans} must be multiples of block_out_channels[0] = {ch}")
    groups = int(d["norm_num_groups"])
    if d["attn_norm_num_groups"] is not None and int(d["attn_norm_num_groups"]) != groups:
        _reject("attn_norm_num_groups", d["attn_norm_num_groups"], f"attention norms use norm_num_groups={groups}")

    size = d["sample_size"]
    if size is None:
        raise ValueError("diffusers config has no sample_size; pass a UNetConfig instead")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or int(size[0]) != int(size[1]):
            _reject("sample_size", size, "images are square")
        size = size[0]
    size = int(size)

    # Heads: diffusers uses heads = channels // attention_head_dim per block (None: one head).
    attention_channels = [chans[i] for i in attention_levels] + ([chans[-1]] if d["add_attention"] else [])
    head_dim = d["attention_head_dim"]
    if head_dim is None or not attention_channels:
        num_heads = 1
    else:
        head_dim = int(head_dim)
        heads = set()
        for c in attention_channels:
            if c % head_dim:
                _reject("attention_head_dim", head_dim, f"it must divide the attention channels {c}")
            heads.add(c // head_dim)
        if len(heads) != 1:
            _reject("attention_head_dim", head_dim,
                    f"it gives {sorted(heads)} heads at different levels; ddpm.UNet has one num_heads")
        num_heads = heads.pop()

    num_class_embeds = d["num_class_embeds"]
    if num_class_embeds is not None and int(num_class_embeds) < 2:
        _reject("num_class_embeds", num_class_embeds, "it counts num_classes + 1 (the null class) >= 2")
    return UNetConfig(
        image_size=size,
        in_channels=int(d["in_channels"]),
        out_channels=int(d["out_channels"]),
        ch=ch,
        ch_mult=tuple(c // ch for c in chans),
        num_res_blocks=int(d["layers_per_block"]),
        attn_resolutions=tuple(size // 2**i for i in attention_levels),
        dropout=float(d["dropout"]),
        groups=groups,
        eps=float(d["norm_eps"]),
        num_heads=num_heads,
        num_classes=None if num_class_embeds is None else int(num_class_embeds) - 1,
        mid_attention=bool(d["add_attention"]),
        flip_sin_to_cos=bool(d["flip_sin_to_cos"]),
        freq_shift=int(d["freq_shift"]),
        downsample_padding=int(d["downsample_padding"]),
    )


def diffusers_config(config: UNetConfig) -> dict:
    """The `UNet2DModel(**cfg)` keyword arguments that build `config`'s network (JSON-ready).

    num_heads == 1 is written as attention_head_dim=None (as the DDPM CIFAR-10 checkpoint does);
    more heads need the same channel count at every attention level.
    """
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a reference.UNetConfig, got {type(config).__name__}")
    chans = list(config.block_channels)
    attention = [config.level_has_attention(i) for i in range(config.levels)]
    if config.num_heads == 1:
        head_dim = None
    else:
        attention_channels = {c for c, a in zip(chans, attention) if a}
        if config.mid_attention:
            attention_channels.add(chans[-1])
        if len(attention_channels) > 1:
            raise ValueError(f"num_heads={config.num_heads} with attention on {sorted(attention_channels)} "
                             "channels has no diffusers equivalent (one attention_head_dim for all blocks)")
        head_dim = attention_channels.pop() // config.num_heads if attention_channels else None
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
        "attention_head_dim": head_dim,
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


def infer_config(state: dict) -> UNetConfig:
    """A UNetConfig from the shapes of a (normalized) state dict.

    Shapes give in/out channels, ch, ch_mult, num_res_blocks, which levels have attention, the
    mid attention and num_classes. Values that no shape records take the DDPM CIFAR-10 model's:
    image_size 32 (the smallest multiple of 2^(levels-1) >= 32), groups 32 (or the largest that
    divides every channel count), eps 1e-6, one head, sin first, freq_shift 1, downsample padding
    0, dropout 0. Pass a config when those differ.
    """
    def shape(key):
        if key not in state:
            raise ValueError(f"cannot infer the UNet config: the state dict has no {key!r}")
        return tuple(state[key].shape)

    c0, in_channels = shape("conv_in.weight")[:2]
    out_channels = shape("conv_out.weight")[0]
    ch = shape("time_embedding.linear_1.weight")[1]
    levels = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.(\d+)\.", k))),
                     default=-1)
    if levels < 1:
        raise ValueError("cannot infer the UNet config: the state dict has no down_blocks.*")
    chans = [shape(f"down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)]
    if c0 != chans[0] or any(c % ch for c in chans):
        raise ValueError(f"cannot infer the UNet config: block channels {chans} are not multiples of ch={ch}")
    num_res_blocks = len({k.split(".")[3] for k in state if k.startswith("down_blocks.0.resnets.")})
    attention_levels = [i for i in range(levels) if any(k.startswith(f"down_blocks.{i}.attentions.")
                                                       for k in state)]
    image_size = max(32, 2 ** (levels - 1))
    image_size += (-image_size) % 2 ** (levels - 1)
    groups = next(g for g in range(32, 0, -1) if all(c % g == 0 for c in chans))
    num_classes = shape("class_embedding.weight")[0] - 1 if "class_embedding.weight" in state else None
    return UNetConfig(
        image_size=image_size, in_channels=in_channels, out_channels=out_channels, ch=ch,
        ch_mult=tuple(c // ch for c in chans), num_res_blocks=num_res_blocks,
        attn_resolutions=tuple(image_size // 2**i for i in attention_levels), dropout=0.0,
        groups=groups, eps=1e-6, num_heads=1, num_classes=num_classes,
        mid_attention=any(k.startswith("mid_block.attentions.") for k in state),
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    )


def from_diffusers(state_dict_or_path, config=None, *, dtype: torch.dtype | None = None) -> UNet:
    """A `ddpm.UNet` holding the weights of a diffusers `UNet2DModel`.

    state_dict_or_path: a dict name -> tensor (e.g. `UNet2DModel.state_dict()`), a .safetensors
        or .bin file, or a `save_pretrained` directory. Legacy attention names are accepted.
    config: a UNetConfig, a diffusers config dict, or None: then the config stored with the
        weights (our safetensors metadata, or a config.json beside the file) or, failing that,
        `infer_config` from the shapes.
    dtype: the model's dtype; default the weights' own floating dtype (float32 if mixed).
    Raises ValueError listing missing / unexpected / wrong-shape keys, or naming a non-finite one.
    """
    state, stored_config = load_diffusers_state_dict(state_dict_or_path)
    if isinstance(config, UNetConfig):
        pass
    elif isinstance(config, dict):
        config = config_from_diffusers(config)
    elif config is None:
        config = config_from_diffusers(stored_config) if stored_config is not None else infer_config(state)
    else:
        raise TypeError(f"config must be a UNetConfig, a diffusers config dict or None, got {type(config).__name__}")
    check_state_dict_names(state, config, "state_dict_or_path")
    for key, value in state.items():
        if not value.is_floating_point():
            raise TypeError(f"{key} must be a floating tensor, got dtype {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{key} contains NaN or inf")
    if dtype is None:
        dtypes = {v.dtype for v in state.values()}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    model = UNet(config).to(dtype)
    model.load_state_dict(state, strict=True)
    return model


def to_diffusers(model_or_state) -> "OrderedDict[str, torch.Tensor]":
    """A diffusers `UNet2DModel` state dict (current names; detached copies) of a ddpm.UNet."""
    if isinstance(model_or_state, UNet):
        state = model_or_state.state_dict()
        check_state_dict_names(state, model_or_state.config, "model")
    elif isinstance(model_or_state, dict):
        state = normalize_diffusers_state_dict(model_or_state)
    else:
        raise TypeError(f"model_or_state must be a ddpm.UNet or a state dict, got {type(model_or_state).__name__}")
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in state.items())


def save_diffusers(model: UNet, path) -> Path:
    """Write `model` for diffusers: a `.safetensors` file (config in its metadata) or a directory.

    A directory gets config.json + diffusion_pytorch_model.safetensors, the `save_pretrained`
    layout that `UNet2DModel.from_pretrained(path)` and `from_diffusers(path)` both load.
    Returns the path of the weights file.
    """
    from safetensors.torch import save_file

    if not isinstance(model, UNet):
        raise TypeError(f"model must be a ddpm.UNet, got {type(model).__name__}")
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
