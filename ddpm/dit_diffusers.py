"""DiT <-> diffusers `DiTTransformer2DModel`: weights by `reference.dit_config.diffusers_names`.

Export: attn.qkv splits into attn1.to_q/to_k/to_v; the shared timestep and label embedders are
copied into every block's norm1.emb (diffusers keeps one per block, and its final layer uses
block 0's); an unconditional DiT exports one class with zero label rows, so the label term adds 0.
Import: the per-block embedders must be equal (as in the converted paper checkpoints): a model
whose blocks embed t differently is not a DiT of the paper and is refused, naming the block.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

from reference import check_parameter_names
from reference.dit_config import DiTConfig, diffusers_names, dit_parameter_shapes, dit_config_from_diffusers, dit_diffusers_config

from .diffusers_io import CONFIG_NAME, WEIGHTS_NAMES, load_diffusers_state_dict

__all__ = ["dit_from_diffusers", "dit_to_diffusers", "save_dit_diffusers"]


def _resolve_config(config, stored: dict | None) -> DiTConfig:
    if isinstance(config, DiTConfig):
        return config
    if isinstance(config, dict):
        return dit_config_from_diffusers(config)
    if config is None:
        if stored is None:
            raise ValueError("config: the weights carry no DiTTransformer2DModel config (no config.json beside "
                             "them); pass config= (a reference.DiTConfig or the diffusers config dict): "
                             "num_attention_heads cannot be read from the weights")
        return dit_config_from_diffusers(stored)
    raise TypeError(f"config must be a DiTConfig, a diffusers config dict or None, got {type(config).__name__}")


def _gather(state: dict, ours: str, sources: list) -> torch.Tensor:
    missing = [name for name, _ in sources if name not in state]
    if missing:
        raise ValueError(f"state dict is missing {missing[:3]}{' ...' if len(missing) > 3 else ''} (for {ours})")
    if sources[0][1] is not None:                                 # q, k, v -> qkv
        return torch.cat([state[name] for name, _ in sources], dim=0)
    first = state[sources[0][0]]
    for name, _ in sources[1:]:
        if not torch.equal(state[name], first):
            raise ValueError(f"{name} differs from {sources[0][0]}: this DiT shares one timestep/label "
                             f"embedder across blocks (as the paper's checkpoints), the weights do not")
    return first


def dit_from_diffusers(cls, state_dict_or_folder, config=None, *, dtype: torch.dtype | None = None):
    state, stored = load_diffusers_state_dict(state_dict_or_folder)
    cfg = _resolve_config(config, stored)
    table = diffusers_names(cfg if cfg.num_classes is not None else
                            DiTConfig.from_dict({**cfg.to_dict(), "num_classes": 1}))
    weights, used = OrderedDict(), set()
    for ours, sources in table.items():
        used.update(name for name, _ in sources)
        if ours.startswith("y_embedder") and cfg.num_classes is None:
            continue
        weights[ours] = _gather(state, ours, sources)
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise ValueError(f"state dict has {len(unexpected)} key(s) a DiT of this config does not: {unexpected[:5]}")
    floating = {v.dtype for v in weights.values()}
    dtype = dtype or (floating.pop() if len(floating) == 1 else torch.float32)
    check_parameter_names(dit_parameter_shapes(cfg), weights, "diffusers weights", "the DiT config")
    with torch.device("meta"):  # every parameter is replaced: no random init to overwrite
        model = cls(cfg)
    model.load_state_dict({k: v.to(device="cpu", dtype=dtype, copy=True).contiguous() for k, v in weights.items()},
                          strict=True, assign=True)
    if any(b.is_meta for b in model.buffers()):  # torch.from_numpy ignores the meta device; keep it so
        raise RuntimeError("DiT buffers were created on the meta device")
    return model


def dit_to_diffusers(model) -> "OrderedDict[str, torch.Tensor]":
    cfg = model.config
    dit_diffusers_config(cfg)                                    # refuses what diffusers cannot express
    state = model.state_dict()
    out = OrderedDict()
    export_cfg = cfg if cfg.num_classes is not None else DiTConfig.from_dict({**cfg.to_dict(), "num_classes": 1})
    for ours, targets in diffusers_names(export_cfg).items():
        value = state[ours] if ours in state else torch.zeros(2, cfg.hidden_size, dtype=model.dtype)
        d = cfg.hidden_size
        for name, part in targets:
            piece = value if part is None else value[part * d:(part + 1) * d]
            out[name] = piece.detach().clone().contiguous()
    return out


def save_dit_diffusers(model, path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    cfg = {"_class_name": "DiTTransformer2DModel", **dit_diffusers_config(model.config)}
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    weights = path / WEIGHTS_NAMES[0]
    save_file({k: v.cpu() for k, v in dit_to_diffusers(model).items()}, str(weights), metadata={"format": "pt"})
    return path
