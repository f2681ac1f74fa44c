"""DiT in torch (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"; DESIGN contract 6).

Built from a `reference.DiTConfig`; its `state_dict()` keys and shapes are exactly
`reference.dit_parameter_shapes(config)` (the paper code's names), so weights move between this
module and the NumPy `reference.DiT` by name, and to diffusers' `DiTTransformer2DModel` through
`reference.dit_config.diffusers_names` (`from_diffusers` / `to_diffusers`, ddpm/dit_diffusers.py).
The forward is the reference's, op for op:

    h = patch_embed(x) + pos;  c = t_mlp(sinusoid(t)) [+ y_table[y]]
    block: shift1, scale1, gate1, shift2, scale2, gate2 = adaLN_modulation(c)   (SiLU, linear)
           h = h + gate1 attn(layer_norm_modulate(h, shift1, scale1))
           h = h + gate2 mlp(layer_norm_modulate(h, shift2, scale2))
    out = unpatchify(final linear(layer_norm_modulate(h, shift, scale)))

Kernel seam: every LayerNorm + modulation is one `kernels.layer_norm_modulate` call (the fused
kernel on CUDA). The trainer, samplers, EMA and checkpoints take a DiT wherever they take a UNet.
"""

from __future__ import annotations

import math
from os import PathLike

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import kernels
from reference import check_parameter_names
from reference.dit import pos_embed_2d
from reference.dit_config import DiTConfig, dit_parameter_shapes
from reference.layers import timestep_frequencies

from .unet import UNet

__all__ = ["DiT", "DiTBlock"]


def _float64_bits(values: np.ndarray) -> torch.Tensor:
    """float64 values stored as int64 bits: a buffer that `.to(dtype)` never rounds."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).view(np.int64).copy())


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)                         # softmax(q k^T / sqrt(d_head)) v
        return self.proj(o.transpose(1, 2).reshape(n, length, d))


class _Mlp(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """The adaLN-Zero block (Fig. 3): (N, L, D) tokens, (N, D) condition c -> (N, L, D)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps, self.mlp_eps = cfg.eps, cfg.mlp_eps
        self.attn = _Attention(cfg.hidden_size, cfg.num_heads)
        self.mlp = _Mlp(cfg.hidden_size, cfg.mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden_size, 6 * cfg.hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(kernels.layer_norm_modulate(x, shift1, scale1, self.eps))
        return x + gate2[:, None] * self.mlp(kernels.layer_norm_modulate(x, shift2, scale2, self.mlp_eps))


class _FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_size ** 2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(kernels.layer_norm_modulate(x, shift, scale, self.eps))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)


class _TimestepEmbedder(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cfg.frequency_embedding_size, cfg.hidden_size), nn.SiLU(),
                                 nn.Linear(cfg.hidden_size, cfg.hidden_size))


class _LabelEmbedder(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.embedding_table = nn.Embedding(cfg.num_classes + 1, cfg.hidden_size)   # row num_classes: null


class DiT(nn.Module):
    """DiT for `config` (a `reference.DiTConfig`): forward(x, t, y=None) -> (N, out_channels, H, W).

    x: (N, in_channels, image_size, image_size) in the parameters' dtype (any under autocast);
    t: (N,) integer tensor >= 0 or an int; y: (N,) class ids in [0, num_classes] (num_classes =
    `.null_class`, the null label of classifier-free guidance), None = the null label; must be
    None without classes. Checks as `ddpm.UNet` (values read back only when that needs no sync).
    """

    def __init__(self, config: DiTConfig, *, zero_init: bool = True):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise TypeError(f"config must be a reference.DiTConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.x_embedder = _PatchEmbed(cfg)
        self.t_embedder = _TimestepEmbedder(cfg)
        self.y_embedder = _LabelEmbedder(cfg) if cfg.num_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = _FinalLayer(cfg)
        self.register_buffer("pos_embed_bits", _float64_bits(pos_embed_2d(cfg.hidden_size, cfg.grid_size)),
                             persistent=False)
        self.register_buffer("time_frequency_bits", _float64_bits(
            timestep_frequencies(cfg.frequency_embedding_size, cfg.freq_shift)), persistent=False)
        if not self.x_embedder.proj.weight.is_meta:
            self.reset_parameters(zero_init)

    @property
    def null_class(self) -> int | None:
        return self.config.num_classes

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    @torch.no_grad()
    def reset_parameters(self, zero_init: bool = True) -> None:
        """The paper code's initialisation (as reference.DiT): xavier-uniform linear weights (the
        patch conv's viewed as (D, C p p)), zero biases, N(0, 0.02^2) label table and t-MLP
        weights; zero_init (adaLN-Zero): every adaLN modulation and the final linear are zero."""
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif name.startswith(("t_embedder", "y_embedder")):
                p.normal_(0.0, 0.02)
            else:
                bound = math.sqrt(6.0 / (p.shape[0] + p[0].numel()))
                p.uniform_(-bound, bound)
            if zero_init and ("adaLN_modulation" in name or name.startswith("final_layer.linear")):
                p.zero_()

    def _check_inputs(self, x, t, y):
        p = self.config.patch_size
        if isinstance(x, torch.Tensor) and x.ndim == 4 and (x.shape[2] % p or x.shape[3] % p):
            raise ValueError(f"x: image size {tuple(x.shape[2:])} is not divisible by patch_size {p}")
        return UNet._check_inputs(self, x, t, y)   # the same checks: shape, device, dtype, t, y range

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        t, y = self._check_inputs(x, t, y)
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2)             # (N, L, D), row-major patches
        h = h + self.pos_embed_bits.view(torch.float64).to(h.dtype)
        args = t.to(torch.float64)[:, None] * self.time_frequency_bits.view(torch.float64)[None, :]
        t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)      # [cos, sin] (diffusers' DiT)
        c = self.t_embedder.mlp(t_freq.to(self.dtype))
        if self.y_embedder is not None:
            c = c + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            h = block(h, c)
        out = self.final_layer(h, c)                                         # (N, L, p p out), (i, j, c) order
        n, g, p, co = x.shape[0], cfg.grid_size, cfg.patch_size, cfg.out_channels
        return out.reshape(n, g, g, p, p, co).permute(0, 5, 1, 3, 2, 4).reshape(n, co, g * p, g * p)

    # ------------------------------------------------------------------ state dicts

    def load_numpy_params(self, params: dict) -> None:
        """Copy a flat dict name -> NumPy array (e.g. `reference.DiT.params`), cast to the parameters' dtype."""
        check_parameter_names(dit_parameter_shapes(self.config), params, "params", "the DiT config")
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}, strict=True)

    def numpy_params(self, dtype=np.float64) -> dict:
        return {name: p.detach().cpu().numpy().astype(dtype) for name, p in self.state_dict().items()}

    @classmethod
    def from_diffusers(cls, state_dict_or_folder: "dict | str | PathLike", config=None, *,
                       dtype: torch.dtype | None = None) -> "DiT":
        """A DiT holding a diffusers `DiTTransformer2DModel`'s weights (state dict, weights file or
        save_pretrained folder); config: a DiTConfig, a diffusers config dict, or None (the folder's)."""
        from .dit_diffusers import dit_from_diffusers

        return dit_from_diffusers(cls, state_dict_or_folder, config, dtype=dtype)

    def to_diffusers(self):
        """This model's weights as a `DiTTransformer2DModel` state dict (embedders copied into every block)."""
        from .dit_diffusers import dit_to_diffusers

        return dit_to_diffusers(self)

    def save_diffusers(self, path) -> "PathLike":
        """A diffusers save_pretrained folder (config.json + safetensors) that
        `DiTTransformer2DModel.from_pretrained(path)` and `DiT.from_diffusers(path)` load."""
        from .dit_diffusers import save_dit_diffusers

        return save_dit_diffusers(self, path)
