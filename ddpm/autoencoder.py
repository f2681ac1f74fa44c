"""The KL autoencoder of latent diffusion in torch (Rombach et al. 2022; DESIGN contract 6).

Built from a `reference.AutoencoderConfig`; `state_dict()` keys and shapes are exactly
`reference.autoencoder_parameter_shapes(config)`, the names of diffusers' `AutoencoderKL`, and
the forward pass is `reference.AutoencoderKL`'s op for op (the UNet's ResBlock, attention and
resampling modules, every GroupNorm+SiLU one `kernels.GroupNormSiLU` call, as in ddpm.UNet):

    encode(x)  -> mean, logvar           encoder -> quant_conv -> split, logvar clamped to [-30, 20]
    decode(z)  -> x_hat                  post_quant_conv -> decoder          (z unscaled)
    forward(x, noise) -> x_hat, mean, logvar   z = mean + exp(logvar / 2) noise (mean if noise None)
    loss = mean (x_hat - x)^2 + kl_weight mean_n sum KL(q(z|x_n) || N(0, I))   (reference.autoencoder_loss)

The diffusion model sees `to_diffusion(z) = (z - shift_factor) * scaling_factor`.
"""

from __future__ import annotations

from collections import OrderedDict
from os import PathLike

import numpy as np
import torch
from torch import nn

import kernels
import reference
from kernels.validate import sync_checks_enabled
from reference.autoencoder_config import AUTOENCODER_EPS, LOGVAR_CLAMP, AutoencoderConfig

from .autoencoder_io import autoencoder_weights_from_diffusers, save_autoencoder_diffusers
from .unet import AttentionBlock, Downsample, ResnetBlock, Upsample, _Level, _MidBlock

__all__ = ["AutoencoderKL", "autoencoder_loss", "posterior_noise", "check_finite"]


def check_finite(x: torch.Tensor, name: str) -> None:
    """A ValueError naming `name` when x holds NaN or inf (host tensors, or on request on a GPU)."""
    if x.device.type == "cpu" or (sync_checks_enabled() and not torch.cuda.is_current_stream_capturing()):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf)")


def _resnet(cin: int, cout: int, groups: int) -> ResnetBlock:
    return ResnetBlock(cin, cout, None, groups, AUTOENCODER_EPS, 0.0)


def _mid(c: int, cfg: AutoencoderConfig) -> _MidBlock:
    attention = AttentionBlock(c, 1, cfg.groups, AUTOENCODER_EPS) if cfg.mid_block_add_attention else None
    return _MidBlock([_resnet(c, c, cfg.groups), _resnet(c, c, cfg.groups)], attention)


def _run_mid(mid: _MidBlock, h: torch.Tensor) -> torch.Tensor:
    h = mid.resnets[0](h, None)
    if mid.attentions is not None:
        h = mid.attentions[0](h)
    return mid.resnets[1](h, None)


def _run_levels(levels: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
    for level in levels:
        for res in level.resnets:
            h = res(h, None)
        if level.resampler is not None:
            h = level.resampler(h)
    return h


class Encoder(nn.Module):
    """x (N, in, S, S) -> (N, 2 latent, S/f, S/f) before quant_conv."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        cin = chans[0]
        for i, cout in enumerate(chans):
            resnets = [_resnet(cin if j == 0 else cout, cout, cfg.groups) for j in range(cfg.layers_per_block)]
            down = Downsample(cout, 0) if i < cfg.levels - 1 else None
            self.down_blocks.append(_Level(resnets, None, down, "downsamplers"))
            cin = cout
        self.mid_block = _mid(chans[-1], cfg)
        self.conv_norm_out = kernels.GroupNormSiLU(chans[-1], cfg.groups, eps=AUTOENCODER_EPS, activation=True)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid_block, _run_levels(self.down_blocks, self.conv_in(x)))
        return self.conv_out(self.conv_norm_out(h))


class Decoder(nn.Module):
    """z (N, latent, S/f, S/f) after post_quant_conv -> (N, out, S, S)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[-1], 3, padding=1)
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(chans))
        prev = rev[0]
        for i, cout in enumerate(rev):
            resnets = [_resnet(prev if j == 0 else cout, cout, cfg.groups) for j in range(cfg.layers_per_block + 1)]
            up = Upsample(cout) if i < cfg.levels - 1 else None
            self.up_blocks.append(_Level(resnets, None, up, "upsamplers"))
            prev = cout
        self.mid_block = _mid(chans[-1], cfg)  # registered after up_blocks, as diffusers
        self.conv_norm_out = kernels.GroupNormSiLU(chans[0], cfg.groups, eps=AUTOENCODER_EPS, activation=True)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_levels(self.up_blocks, _run_mid(self.mid_block, self.conv_in(z)))
        return self.conv_out(self.conv_norm_out(h))


def autoencoder_loss(x_hat: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                     kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction, kl) as `reference.autoencoder_loss`: mean (x_hat - x)^2 +
    kl_weight * mean_n sum KL(N(mean, e^logvar) || N(0, 1)) (closed form, Kingma & Welling App. B)."""
    def wide(t: torch.Tensor) -> torch.Tensor:  # float32 at least (bf16 autocast outputs), float64 kept
        return t if t.dtype == torch.float64 else t.float()

    x_hat, x, mean, logvar = wide(x_hat), wide(x), wide(mean), wide(logvar)
    reconstruction = (x_hat - x).pow(2).mean()
    kl_elements = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    kl = kl_elements.flatten(1).sum(dim=1).mean()
    return reconstruction + kl_weight * kl, reconstruction, kl


def posterior_noise(seed: int, samples: torch.Tensor, step: int, latent_shape, *, dtype=torch.float32):
    """The posterior sample's noise of training step `step`: the noise stream's
    `reference.autoencoder_stream(step)` for the global sample indices `samples`."""
    return kernels.normal(seed, samples, reference.autoencoder_stream(step), tuple(latent_shape), dtype=dtype)


class AutoencoderKL(nn.Module):
    """The KL autoencoder for `config` (a `reference.AutoencoderConfig`); see the module docstring."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"config must be a reference.AutoencoderConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        two_l = 2 * config.latent_channels
        self.quant_conv = nn.Conv2d(two_l, two_l, 1) if config.use_quant_conv else None
        self.post_quant_conv = (nn.Conv2d(config.latent_channels, config.latent_channels, 1)
                                if config.use_post_quant_conv else None)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    def _check(self, x, channels: int, size: int, name: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 4 or tuple(x.shape[1:]) != (channels, size, size):
            raise ValueError(f"{name} must have shape (N, {channels}, {size}, {size}) for this autoencoder "
                             f"(image_size={self.config.image_size}), got {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the autoencoder is on {self.device}")

    # ------------------------------------------------------------------ the model

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, in_channels, S, S) -> mean, logvar (N, latent_channels, S/f, S/f)."""
        cfg = self.config
        self._check(x, cfg.in_channels, cfg.image_size, "x")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_CLAMP)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, latent_channels, S/f, S/f), unscaled -> x_hat (N, out_channels, S, S)."""
        cfg = self.config
        self._check(z, cfg.latent_channels, cfg.latent_size, "z (the latent)")
        check_finite(z, "z (the latent)")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """x -> (x_hat, mean, logvar) through z = mean + exp(logvar / 2) * noise (mean without noise)."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)
        return self.decode(z), mean, logvar

    # ------------------------------------------------------------------ latent scaling

    def to_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        """(z - shift_factor) * scaling_factor: the data of the latent diffusion model."""
        return reference.scale_latents(z, self.config.scaling_factor, self.config.shift_factor)

    def from_diffusion(self, z_scaled: torch.Tensor) -> torch.Tensor:
        return reference.unscale_latents(z_scaled, self.config.scaling_factor, self.config.shift_factor)

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scaled posterior means of x in batches (the latents a denoiser trains on)."""
        parts = [self.to_diffusion(self.encode(x[i:i + batch_size])[0]) for i in range(0, x.shape[0], batch_size)]
        latents = torch.cat(parts)
        check_finite(latents, "the encoded latents")
        return latents

    @torch.no_grad()
    def decode_latents(self, z_scaled: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images from scaled latents (a sampler's output), in batches."""
        check_finite(z_scaled, "the sampled latents")
        return torch.cat([self.decode(self.from_diffusion(z_scaled[i:i + batch_size]))
                          for i in range(0, z_scaled.shape[0], batch_size)])

    # ------------------------------------------------------------------ weights

    def load_numpy_params(self, params: dict) -> None:
        """Copy a flat dict name -> array (e.g. `reference.AutoencoderKL.params`) into the parameters."""
        reference.check_parameter_names(reference.autoencoder_parameter_shapes(self.config), params, "params")
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}, strict=True)

    @classmethod
    def from_diffusers(cls, state_dict_or_folder: "dict | str | PathLike", config=None, *,
                       dtype: torch.dtype | None = None) -> "AutoencoderKL":
        """An AutoencoderKL holding the weights of a diffusers `AutoencoderKL`.

        state_dict_or_folder: a state dict, a .safetensors/.bin file or a `save_pretrained`
        folder. config: an AutoencoderConfig, a diffusers config dict, or None (the config stored
        with the weights). See `ddpm.autoencoder_io.autoencoder_weights_from_diffusers`.
        """
        config, state, dtype = autoencoder_weights_from_diffusers(state_dict_or_folder, config, dtype=dtype)
        model = cls(config)
        model.load_state_dict({k: v.to(dtype=dtype) for k, v in state.items()}, strict=True)
        return model.to(dtype)

    def to_diffusers(self) -> "OrderedDict[str, torch.Tensor]":
        """This model's weights as a diffusers `AutoencoderKL` state dict (same names)."""
        return OrderedDict((k, v.detach().clone().contiguous()) for k, v in self.state_dict().items())

    def save_diffusers(self, path) -> "PathLike":
        """A `save_pretrained` folder (config.json + diffusion_pytorch_model.safetensors) that
        diffusers' `AutoencoderKL.from_pretrained` and `ddpm.AutoencoderKL.from_diffusers` load."""
        return save_autoencoder_diffusers(self.config, self.to_diffusers(), path)
