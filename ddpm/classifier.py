"""The noise-aware classifier p_phi(y | x_t, t) in torch (Dhariwal & Nichol 2021, Sec. 4).

`reference.Classifier` op for op (see `reference/classifier.py`): the denoiser's down path and
middle block, built from `ddpm.unet`'s blocks, then GroupNorm+SiLU, a global average pool and a
linear layer to `config.num_classes` logits. Its `state_dict()` keys are exactly
`reference.classifier_parameter_shapes(config)`: the UNet's names for the shared part, so
`Classifier.from_denoiser(unet)` starts from a trained denoiser's encoder.

`log_prob_gradient(x, t, y)` is grad_x log p_phi(y | x_t, t) by autograd, the guidance gradient of
`ddpm.sample(..., classifier=, classifier_scale=)`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import kernels
from reference import check_class_labels, check_parameter_names
from reference.classifier import ENCODER_PREFIXES, classifier_parameter_shapes
from reference.unet_config import UNetConfig

from .unet import (AttentionBlock, Downsample, ResnetBlock, TimestepEmbedding, UNet, _Level, _MidBlock,
                   sinusoidal_frequencies)

__all__ = ["Classifier"]


class _Head(nn.Module):
    """GroupNorm + SiLU -> mean over H, W -> linear (names head.norm, head.linear)."""

    def __init__(self, channels: int, num_classes: int, groups: int, eps: float):
        super().__init__()
        self.norm = kernels.GroupNormSiLU(channels, groups, eps=eps, activation=True)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(h).mean(dim=(2, 3)))


class Classifier(nn.Module):
    """p_phi(y | x_t, t) for `config` (a UNetConfig; num_classes = the head's class count).

    forward(x, t) -> logits (N, num_classes): x (N, in_channels, image_size, image_size) in the
    parameters' dtype, t (N,) integer timesteps >= 0 or an int. Initialisation as the UNet's
    (torch's defaults; zero_init zeroes every ResBlock's conv2 and attention's to_out.0).
    """

    def __init__(self, config: UNetConfig, *, zero_init: bool = True):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a reference.UNetConfig, got {type(config).__name__}")
        if config.num_classes is None:
            raise ValueError("config.num_classes must be the classifier's class count, got None")
        self.config = cfg = config
        temb, chans = cfg.time_embed_dim, cfg.block_channels

        def resnet(cin: int, cout: int) -> ResnetBlock:
            return ResnetBlock(cin, cout, temb, cfg.groups, cfg.eps, cfg.dropout)

        def attention(c: int) -> AttentionBlock:
            return AttentionBlock(c, cfg.heads(c), cfg.groups, cfg.eps)

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(cfg.ch, temb)
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
        self.head = _Head(c_mid, cfg.num_classes, cfg.groups, cfg.eps)
        freqs = sinusoidal_frequencies(cfg.ch, cfg.freq_shift)  # float64, kept as int64 bits (as UNet)
        self.register_buffer("time_frequency_bits", torch.from_numpy(freqs.view(np.int64).copy()),
                             persistent=False)
        self.reset_parameters(zero_init)

    def timestep_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) integer t -> (N, ch) float64 sinusoidal embedding, the UNet's."""
        return UNet.timestep_embedding(self, t)

    num_classes = property(lambda self: int(self.config.num_classes))
    dtype = property(lambda self: self.conv_in.weight.dtype)
    device = property(lambda self: self.conv_in.weight.device)

    @torch.no_grad()
    def reset_parameters(self, zero_init: bool = True) -> None:
        """torch's defaults, GroupNorm weight 1 / bias 0; zero_init as `ddpm.UNet`."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()
            elif isinstance(module, kernels.GroupNormSiLU):
                module.weight.fill_(1.0)
                module.bias.zero_()
        if zero_init:
            for name, p in self.named_parameters():
                if ".conv2." in name or ".to_out.0." in name:
                    p.zero_()

    def _check_inputs(self, x, t) -> torch.Tensor:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, expected))}) (the classifier's "
                             f"image shape), got {tuple(x.shape)}")
        n = x.shape[0]
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            t = torch.full((n,), int(t), dtype=torch.int64, device=x.device)
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"t must be an int or an integer tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.shape != (n,):
            raise ValueError(f"t must be an int or have shape ({n},), got {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() and bool((t < 0).any()):
            raise ValueError(f"t must be >= 0, got min {int(t.min())}")
        return t.to(x.device)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """(N, C, H, W) noisy images, (N,) timesteps -> (N, num_classes) logits."""
        t = self._check_inputs(x, t)
        temb_act = F.silu(self.time_embedding(self.timestep_embedding(t).to(self.dtype)))
        h = self.conv_in(x)
        for block in self.down_blocks:
            for j, res in enumerate(block.resnets):
                h = res(h, temb_act)
                if block.attentions is not None:
                    h = block.attentions[j](h)
            if block.resampler is not None:
                h = block.resampler(h)
        mid = self.mid_block
        h = mid.resnets[0](h, temb_act)
        if mid.attentions is not None:
            h = mid.attentions[0](h)
        h = mid.resnets[1](h, temb_act)
        return self.head(h)

    def log_prob_gradient(self, x: torch.Tensor, t, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p_phi(y | x_t, t) (N,), grad_x log p_phi(y | x_t, t) (N, C, H, W)) by autograd, in
        the classifier's dtype (x is cast to it; the gradient is returned in x's dtype)."""
        with torch.enable_grad():
            x_in = x.detach().to(self.dtype).requires_grad_(True)
            log_p = F.log_softmax(self(x_in, t), dim=1)
            chosen = log_p.gather(1, y.reshape(-1, 1).to(log_p.device)).squeeze(1)
            (grad,) = torch.autograd.grad(chosen.sum(), x_in)
        return chosen.detach(), grad.to(x.dtype)

    # ------------------------------------------------------------------ state dicts

    def load_numpy_params(self, params: dict) -> None:
        """Copy a flat dict name -> array (e.g. `reference.Classifier.params`) into the parameters."""
        check_parameter_names(classifier_parameter_shapes(self.config), params, "params",
                              "the classifier config")
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})

    def numpy_params(self, dtype=np.float64) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((k, p.detach().cpu().numpy().astype(dtype)) for k, p in self.state_dict().items())

    @classmethod
    def from_denoiser(cls, denoiser: nn.Module, num_classes: int, *, zero_init: bool = True) -> "Classifier":
        """A classifier whose encoder (conv_in, time_embedding, down_blocks, mid_block) starts from
        a trained `ddpm.UNet`'s weights (same names); the head is freshly initialised."""
        cfg = getattr(denoiser, "config", None)
        if not isinstance(cfg, UNetConfig):
            raise TypeError(f"denoiser must be a ddpm.UNet (with a UNetConfig), got {type(denoiser).__name__}")
        check_class_labels(0, num_classes, "num_classes")  # a positive int
        model = cls(UNetConfig.from_dict({**cfg.to_dict(), "num_classes": int(num_classes)}), zero_init=zero_init)
        encoder = {k: v for k, v in denoiser.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
        missing, unexpected = model.load_state_dict(encoder, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(f"denoiser weights do not fit the classifier: missing {missing}, unexpected {unexpected}")
        return model.to(device=denoiser.conv_in.weight.device, dtype=denoiser.conv_in.weight.dtype)
