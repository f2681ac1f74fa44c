"""The DDPM UNet in torch (Ho et al. 2020, Appendix B; DESIGN contract 3).

Built from a `reference.UNetConfig`; its `state_dict()` keys and shapes are exactly
`reference.parameter_shapes(config)` (diffusers `UNet2DModel` naming), so a state dict moves
between this module, the NumPy `reference.UNet` and a diffusers checkpoint by name. The forward
pass is the reference's, op for op (see `reference/unet_config.py` for the architecture):

    temb = linear_2(SiLU(linear_1(sinusoidal(t))))  [+ class_embedding[y]]
    h    = conv_in(x); skips = [h]
    down: ResBlock (+ attention) x num_res_blocks, then a stride-2 conv (all but the last level)
    mid:  ResBlock, attention, ResBlock
    up:   ResBlock on [h, skip] (+ attention) x (num_res_blocks + 1), then nearest 2x + conv
    out = conv_out(SiLU(GroupNorm(h)))

Kernel seams (the fused kernels replace these calls, nothing else changes): every GroupNorm is
one `kernels.GroupNormSiLU` module call (activation off for the attention's norm), and the
ResBlock's time-embedding add is passed to norm2 as its `shift` (the fused "add before norm").
"""

from __future__ import annotations

from collections import OrderedDict
from os import PathLike

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels.validate import sync_checks_enabled
from reference import check_class_labels, check_parameter_names
from reference.layers import timestep_frequencies
from reference.unet_config import UNetConfig, parameter_shapes

from .diffusers_io import to_diffusers, unet_weights_from_diffusers

__all__ = ["UNet", "ResnetBlock", "AttentionBlock", "sinusoidal_frequencies"]


def sinusoidal_frequencies(dim: int, freq_shift: float = 1.0, max_period: float = 10000.0) -> np.ndarray:
    """(dim // 2,) float64 frequencies of the time embedding: reference.layers.timestep_frequencies."""
    return timestep_frequencies(dim, freq_shift, max_period)


class ResnetBlock(nn.Module):
    """norm1+SiLU -> conv1 -> (+ time_emb_proj(SiLU(temb))) norm2+SiLU -> dropout -> conv2, + skip.

    x (N, in_channels, H, W), temb_act = SiLU(temb) (N, temb_channels) -> (N, out_channels, H, W).
    temb_channels None: no time embedding (the autoencoder's blocks); forward takes temb_act=None.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int,
                 eps: float, dropout: float):
        super().__init__()
        self.norm1 = kernels.GroupNormSiLU(in_channels, groups, eps=eps, activation=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = kernels.GroupNormSiLU(out_channels, groups, eps=eps, activation=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                              if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        # The time embedding is added to conv1's output before norm2: passed as norm2's shift.
        h = self.norm2(h, shift=None if self.time_emb_proj is None else self.time_emb_proj(temb_act))
        h = self.conv2(self.dropout(h))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions with a residual (DDPM's AttnBlock, multi-head).

    group_norm (no SiLU) -> to_q/to_k/to_v (C, C) linear maps per pixel ->
    softmax(q k^T / sqrt(C / heads)) v -> to_out.0 -> + x.   x (N, C, H, W) -> same shape.
    """

    def __init__(self, channels: int, num_heads: int, groups: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.group_norm = kernels.GroupNormSiLU(channels, groups, eps=eps, activation=False)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' "to_out.0"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        heads = self.num_heads
        h = self.group_norm(x).reshape(n, c, height * width).transpose(1, 2)      # (N, HW, C)

        def split_heads(z: torch.Tensor) -> torch.Tensor:                        # (N, heads, HW, C/heads)
            return z.reshape(n, height * width, heads, c // heads).transpose(1, 2)

        q, k, v = split_heads(self.to_q(h)), split_heads(self.to_k(h)), split_heads(self.to_v(h))
        # Default scale 1/sqrt(C/heads). In float64 on the CPU this matches an explicit
        # softmax(q k^T) v to ~1e-15 (checked against the reference UNet in the tests).
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(n, height * width, c)
        o = self.to_out[0](o)
        return x + o.transpose(1, 2).reshape(n, c, height, width)


class Downsample(nn.Module):
    """3x3 stride-2 conv; downsample_padding 0 pads (0, 1, 0, 1) first (the original DDPM)."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 on the sinusoidal embedding (names as diffusers)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class _Level(nn.Module):
    """One down or up block: resnets, optional attentions, optional resampler (diffusers names)."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None,
                 resampler: nn.Module | None, resampler_name: str):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        else:
            self.attentions = None
        if resampler is not None:
            self.add_module(resampler_name, nn.ModuleList([resampler]))
        self.resampler_name = resampler_name if resampler is not None else None

    @property
    def resampler(self) -> nn.Module | None:
        return None if self.resampler_name is None else getattr(self, self.resampler_name)[0]


class _MidBlock(nn.Module):
    def __init__(self, resnets: list[nn.Module], attention: nn.Module | None):
        super().__init__()
        # registered first so that state_dict() order follows reference.parameter_shapes
        self.attentions = nn.ModuleList([attention]) if attention is not None else None
        self.resnets = nn.ModuleList(resnets)


class UNet(nn.Module):
    """The DDPM UNet for `config` (a `reference.UNetConfig`); eps-, x0- or v-model alike.

    forward(x, t, y=None):
        x: (N, in_channels, image_size, image_size) floating tensor, any memory format, with the
           parameters' dtype (or any, under autocast).
        t: (N,) integer tensor of timesteps >= 0, or an int (all samples).
        y: (N,) integer class ids in [0, num_classes] for a class-conditional model, where
           y == num_classes (`.null_class`) is the null class of classifier-free guidance;
           None means the null class for every sample. Must be None for a model without classes.
    Returns (N, out_channels, image_size, image_size) in x's dtype (the autocast dtype under
    autocast). Values of t and y are range-checked whenever that needs no device sync (CPU
    tensors) and on CUDA outside of CUDA-graph capture.

    Initialisation: see `reset_parameters` (the reference UNet's scheme).
    """

    def __init__(self, config: UNetConfig, *, zero_init: bool = True):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a reference.UNetConfig, got {type(config).__name__}")
        self.config = config
        cfg = config
        temb = cfg.time_embed_dim
        chans = cfg.block_channels

        def resnet(cin: int, cout: int) -> ResnetBlock:
            return ResnetBlock(cin, cout, temb, cfg.groups, cfg.eps, cfg.dropout)

        def attention(c: int) -> AttentionBlock:
            return AttentionBlock(c, cfg.heads(c), cfg.groups, cfg.eps)

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(cfg.ch, temb)
        self.class_embedding = (nn.Embedding(cfg.num_classes + 1, temb)
                                if cfg.num_classes is not None else None)

        self.down_blocks = nn.ModuleList()
        cin = chans[0]
        for level, cout in enumerate(chans):
            resnets = [resnet(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)]
            attns = ([attention(cout) for _ in range(cfg.num_res_blocks)]
                     if cfg.level_has_attention(level) else None)
            down = Downsample(cout, cfg.downsample_padding) if level < cfg.levels - 1 else None
            self.down_blocks.append(_Level(resnets, attns, down, "downsamplers"))
            cin = cout

        c_mid = chans[-1]
        self.mid_block = _MidBlock([resnet(c_mid, c_mid), resnet(c_mid, c_mid)],
                                   attention(c_mid) if cfg.mid_attention else None)

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(chans))
        prev_out = rev[0]
        for i, cout in enumerate(rev):
            level = cfg.levels - 1 - i
            skip_in = rev[min(i + 1, len(rev) - 1)]
            resnets = []
            for j in range(cfg.num_res_blocks + 1):
                res_skip = skip_in if j == cfg.num_res_blocks else cout
                resnets.append(resnet((prev_out if j == 0 else cout) + res_skip, cout))
            attns = ([attention(cout) for _ in range(cfg.num_res_blocks + 1)]
                     if cfg.level_has_attention(level) else None)
            up = Upsample(cout) if i < cfg.levels - 1 else None
            self.up_blocks.append(_Level(resnets, attns, up, "upsamplers"))
            prev_out = cout

        self.conv_norm_out = kernels.GroupNormSiLU(chans[0], cfg.groups, eps=cfg.eps, activation=True)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

        # The sinusoidal frequencies, float64 always: stored as their int64 bit patterns so that
        # .float()/.half()/.to(dtype) (which cast floating buffers only) cannot round them.
        freqs = sinusoidal_frequencies(cfg.ch, cfg.freq_shift)
        self.register_buffer("time_frequency_bits", torch.from_numpy(freqs.view(np.int64).copy()),
                             persistent=False)
        self.reset_parameters(zero_init)

    # ------------------------------------------------------------------ properties

    @property
    def null_class(self) -> int | None:
        """The class id of "no class" (classifier-free guidance), or None without classes."""
        return self.config.num_classes

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def reset_parameters(self, zero_init: bool = True) -> None:
        """The reference UNet's initialisation (`reference.UNet`), drawn from torch's generator.

        Conv and linear weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's
        defaults, kaiming_uniform(a=sqrt(5))), GroupNorm weight 1 and bias 0, class embedding
        N(0, 1). zero_init (as the original DDPM code): every ResBlock's conv2, every attention's
        to_out.0 and conv_out start at zero, so the untrained net outputs 0 and each residual
        block is the identity.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                module.reset_parameters()
            elif isinstance(module, kernels.GroupNormSiLU):
                if getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        if zero_init:
            for name, p in self.named_parameters():
                if ".conv2." in name or ".to_out.0." in name or name.startswith("conv_out."):
                    p.zero_()

    # ------------------------------------------------------------------ inputs

    def _check_inputs(self, x, t, y):
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, expected))}) "
                             f"(in_channels, image_size, image_size of the config), got {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device} but the model is on {self.device}")
        autocast = torch.is_autocast_enabled(x.device.type)
        if not autocast and x.dtype != self.dtype:
            raise TypeError(f"x must have the parameters' dtype {self.dtype} (or run under "
                            f"autocast), got {x.dtype}")
        n = x.shape[0]
        # Values are read back only for host tensors, as in kernels: on a GPU every check would be
        # a device sync per forward. Device-resident t and y are checked where they are made
        # (ddpm.sample, the Trainer) or here with DDPM_KERNELS_SYNC_CHECKS=1 (never mid-capture);
        # an out-of-range class id on the GPU still fails the embedding's device-side bound check.
        check_values = x.device.type == "cpu" or (
            sync_checks_enabled() and not torch.cuda.is_current_stream_capturing())

        if isinstance(t, bool):
            raise TypeError("t must be an int or an integer tensor, got bool")
        if isinstance(t, (int, np.integer)):
            if t < 0:
                raise ValueError(f"t must be >= 0, got {t}")
            t = torch.full((n,), int(t), dtype=torch.int64, device=x.device)
        elif isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"t must be an integer tensor (timesteps), got dtype {t.dtype}")
            if t.ndim == 0:
                t = t.reshape(1).expand(n)
            if t.shape != (n,):
                raise ValueError(f"t must be an int or have shape ({n},), got {tuple(t.shape)}")
            if t.device != x.device:
                raise ValueError(f"t is on {t.device} but x is on {x.device}")
            if check_values and t.numel() and bool((t < 0).any()):
                raise ValueError(f"t must be >= 0, got min {int(t.min())}")
        else:
            raise TypeError(f"t must be an int or an integer tensor, got {type(t).__name__}")

        if cfg.num_classes is None:
            if y is not None:
                raise ValueError("y (class ids) given but the model has no classes "
                                 "(config.num_classes is None)")
            return t, None
        if y is None:
            return t, torch.full((n,), cfg.num_classes, dtype=torch.int64, device=x.device)
        if not isinstance(y, torch.Tensor):
            if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
                y = torch.full((n,), int(y), dtype=torch.int64, device=x.device)
            else:
                raise TypeError(f"y must be None, an int or an integer tensor, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer tensor (class ids), got dtype {y.dtype}")
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},), got {tuple(y.shape)}")
        if y.device != x.device:
            raise ValueError(f"y is on {y.device} but x is on {x.device}")
        if check_values:
            check_class_labels(y.cpu(), cfg.num_classes, "y", allow_null=True)
        return t, y

    # ------------------------------------------------------------------ forward

    def timestep_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) integer t -> (N, ch) float64 sinusoidal embedding (reference.layers.timestep_embedding)."""
        freqs = self.time_frequency_bits.view(torch.float64)
        args = t.to(torch.float64)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        if self.config.flip_sin_to_cos:
            half = freqs.shape[0]
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        return emb

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) noisy images, (N,) timesteps, optional (N,) classes -> (N, C_out, H, W)."""
        t, y = self._check_inputs(x, t, y)
        temb = self.time_embedding(self.timestep_embedding(t).to(self.dtype))
        if self.class_embedding is not None:
            temb = temb + self.class_embedding(y)
        temb_act = F.silu(temb)  # every ResBlock applies SiLU to temb before its projection

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            for j, res in enumerate(block.resnets):
                h = res(h, temb_act)
                if block.attentions is not None:
                    h = block.attentions[j](h)
                skips.append(h)
            if block.resampler is not None:
                h = block.resampler(h)
                skips.append(h)

        mid = self.mid_block
        h = mid.resnets[0](h, temb_act)
        if mid.attentions is not None:
            h = mid.attentions[0](h)
        h = mid.resnets[1](h, temb_act)

        for block in self.up_blocks:
            for j, res in enumerate(block.resnets):
                h = res(torch.cat([h, skips.pop()], dim=1), temb_act)
                if block.attentions is not None:
                    h = block.attentions[j](h)
            if block.resampler is not None:
                h = block.resampler(h)

        return self.conv_out(self.conv_norm_out(h))

    # ------------------------------------------------------------------ state dicts

    def load_numpy_params(self, params: dict) -> None:
        """Copy a flat dict name -> NumPy array (e.g. `reference.UNet.params`) into the parameters.

        Keys and shapes must be exactly `reference.parameter_shapes(config)`; values are cast to
        the parameters' dtype.
        """
        check_state_dict_names(params, self.config, "params")
        state = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in params.items()}
        self.load_state_dict(state, strict=True)

    def numpy_params(self, dtype=np.float64) -> "OrderedDict[str, np.ndarray]":
        """The parameters as a flat dict name -> NumPy array (the reference UNet's layout)."""
        return OrderedDict((name, p.detach().cpu().numpy().astype(dtype))
                           for name, p in self.state_dict().items())

    @classmethod
    def from_diffusers(cls, state_dict_or_path: "dict | str | PathLike", config=None, *,
                       dtype: torch.dtype | None = None) -> "UNet":
        """A UNet holding the weights of a diffusers `UNet2DModel`.

        state_dict_or_path: a dict name -> tensor (e.g. `UNet2DModel.state_dict()`), a
            .safetensors or .bin file, or a `save_pretrained` directory. Legacy attention names
            are accepted.
        config: a UNetConfig; a diffusers config dict (missing keys: from the weights where their
            shapes fix them, else UNet2DModel's defaults); or None: the config stored with the
            weights (a config.json beside them, or our safetensors metadata), else the weights
            alone, which fix the layout (channels, levels, layers, attention placement, classes)
            but not `diffusers_io.WEIGHTS_UNDETERMINED`: a ValueError names the missing keys.
        dtype: the model's dtype; default the weights' own floating dtype (float32 if mixed).
        See `ddpm.diffusers_io.unet_weights_from_diffusers` for the checks.
        """
        config, state, dtype = unet_weights_from_diffusers(state_dict_or_path, config, dtype=dtype)
        # The weights replace every parameter: build on the meta device rather than draw a random
        # initialisation only to overwrite it (seconds for diffusers' 274M-parameter default), and
        # assign copies, so the model never shares memory with the caller's tensors.
        with torch.device("meta"):
            model = cls(config)
        weights = {name: value.to(device="cpu", dtype=dtype, memory_format=torch.contiguous_format, copy=True)
                   for name, value in state.items()}
        model.load_state_dict(weights, strict=True, assign=True)
        return model

    def to_diffusers(self) -> "OrderedDict[str, torch.Tensor]":
        """This model's weights as a diffusers `UNet2DModel` state dict (same names)."""
        return to_diffusers(self)


def check_state_dict_names(state: dict, config: UNetConfig, name: str = "state_dict") -> None:
    """Raise a ValueError listing missing, unexpected and wrong-shape keys against the config."""
    check_parameter_names(parameter_shapes(config), state, name)
