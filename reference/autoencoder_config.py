"""The KL autoencoder's configuration, parameter naming and latent scaling (Rombach et al. 2022).

The NumPy `reference.AutoencoderKL` and the torch `ddpm.AutoencoderKL` hold exactly the
parameters of `autoencoder_parameter_shapes(config)`, named as diffusers' `AutoencoderKL`
(Encoder / Decoder of `diffusers.models.autoencoders.vae`), so a state dict moves between the
three by name:

    encoder.conv_in                                3x3 conv, in_channels -> C_0
    encoder.down_blocks.{i}.resnets.{j}            ResBlock (no time embedding), j < layers_per_block
    encoder.down_blocks.{i}.downsamplers.0.conv    pad (0, 1, 0, 1) + 3x3 stride-2 conv (all but the last)
    encoder.mid_block.resnets.0, .attentions.0, .resnets.1   at C_last, one attention head
    encoder.conv_norm_out, encoder.conv_out        GroupNorm+SiLU, 3x3 conv -> 2 latent_channels
    quant_conv                                     1x1 conv 2 latent -> 2 latent (mean, log variance)
    post_quant_conv                                1x1 conv latent -> latent
    decoder.conv_in                                3x3 conv latent -> C_last
    decoder.mid_block.*                            as the encoder's
    decoder.up_blocks.{i}.resnets.{j}              i = 0 at the coarsest level, j < layers_per_block + 1
    decoder.up_blocks.{i}.upsamplers.0.conv        nearest 2x + 3x3 conv (all but the last)
    decoder.conv_norm_out, decoder.conv_out        GroupNorm+SiLU, 3x3 conv -> out_channels

GroupNorm eps is 1e-6 everywhere (fixed in diffusers' VAE). The latent of an image_size image is
(latent_channels, image_size / 2^(levels-1), ...). The diffusion model sees
z_scaled = (z - shift_factor) * scaling_factor (diffusers' convention; shift None = 0); Rombach
et al. (Sec. 4.3.2 / Appendix G) set scaling_factor = 1 / std of the training latents.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import numpy as np

from .attention import ATTENTION_PARAMETERS

__all__ = ["AutoencoderConfig", "autoencoder_parameter_shapes", "latent_scaling_factor",
           "scale_latents", "unscale_latents", "AUTOENCODER_STREAM_BASE", "autoencoder_stream",
           "AUTOENCODER_EPS", "LOGVAR_CLAMP", "latent_unet_config"]

AUTOENCODER_EPS = 1e-6
# diffusers' DiagonalGaussianDistribution clamps the log variance to [-30, 20] (as the LDM code)
LOGVAR_CLAMP = (-30.0, 20.0)
# The posterior sample of training step s draws stream AUTOENCODER_STREAM_BASE + s (DESIGN
# contract 2): between bits/dim's streams (2^30 + t) and training's (2^31 + step).
AUTOENCODER_STREAM_BASE = 3 << 29


def autoencoder_stream(step: int) -> int:
    """The noise-stream id of the posterior sample of autoencoder training step `step` (0-based)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if not 0 <= step < (1 << 29):
        raise ValueError(f"step must lie in [0, 2^29), got {step}")
    return AUTOENCODER_STREAM_BASE + int(step)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters of the KL autoencoder; defaults: a small MNIST model (28x28 -> 4x7x7)."""

    image_size: int = 28
    in_channels: int = 1
    out_channels: int = 1
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    groups: int = 8
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 1.0
    shift_factor: float | None = None

    def __post_init__(self):
        try:
            chans = tuple(int(c) for c in self.block_out_channels)
        except TypeError:
            raise TypeError(f"block_out_channels must be a sequence of ints, got {self.block_out_channels!r}") from None
        object.__setattr__(self, "block_out_channels", chans)
        for name in ("image_size", "in_channels", "out_channels", "latent_channels", "layers_per_block", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not chans or min(chans) < 1:
            raise ValueError(f"block_out_channels must be non-empty positive ints, got {chans}")
        bad = [c for c in chans if c % self.groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not divisible by groups={self.groups}")
        if self.image_size % self.downsampling_factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^(levels-1) = "
                             f"{self.downsampling_factor} for block_out_channels={chans}")
        if not (np.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a finite number > 0, got {self.scaling_factor!r}")
        if self.shift_factor is not None and not np.isfinite(self.shift_factor):
            raise ValueError(f"shift_factor must be None or finite, got {self.shift_factor!r}")

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (self.levels - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsampling_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig field(s): {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "AutoencoderConfig":
        return AutoencoderConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def tiny(cls, **overrides) -> "AutoencoderConfig":
        """A minimal config for gradient checks: every block type, a handful of channels."""
        base = dict(image_size=4, in_channels=1, out_channels=1, latent_channels=2,
                    block_out_channels=(4, 6), layers_per_block=1, groups=2)
        return cls(**{**base, **overrides})


def _conv(shapes: OrderedDict, prefix: str, cin: int, cout: int, k: int) -> None:
    shapes[f"{prefix}.weight"] = (cout, cin, k, k)
    shapes[f"{prefix}.bias"] = (cout,)


def _norm(shapes: OrderedDict, prefix: str, c: int) -> None:
    shapes[f"{prefix}.weight"] = (c,)
    shapes[f"{prefix}.bias"] = (c,)


def _resnet(shapes: OrderedDict, prefix: str, cin: int, cout: int) -> None:
    _norm(shapes, f"{prefix}.norm1", cin)
    _conv(shapes, f"{prefix}.conv1", cin, cout, 3)
    _norm(shapes, f"{prefix}.norm2", cout)
    _conv(shapes, f"{prefix}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(shapes, f"{prefix}.conv_shortcut", cin, cout, 1)


def _mid_block(shapes: OrderedDict, prefix: str, c: int, attention: bool) -> None:
    if attention:
        for name in ATTENTION_PARAMETERS:
            shapes[f"{prefix}.attentions.0.{name}"] = (c,) if name.endswith("bias") or \
                name.startswith("group_norm") else (c, c)
    _resnet(shapes, f"{prefix}.resnets.0", c, c)
    _resnet(shapes, f"{prefix}.resnets.1", c, c)


def autoencoder_parameter_shapes(config: AutoencoderConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """name -> shape of every parameter, in diffusers' AutoencoderKL state-dict order."""
    cfg, chans, shapes = config, config.block_out_channels, OrderedDict()
    _conv(shapes, "encoder.conv_in", cfg.in_channels, chans[0], 3)
    cin = chans[0]
    for i, cout in enumerate(chans):
        for j in range(cfg.layers_per_block):
            _resnet(shapes, f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < cfg.levels - 1:
            _conv(shapes, f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout, 3)
        cin = cout
    _mid_block(shapes, "encoder.mid_block", chans[-1], cfg.mid_block_add_attention)
    _norm(shapes, "encoder.conv_norm_out", chans[-1])
    _conv(shapes, "encoder.conv_out", chans[-1], 2 * cfg.latent_channels, 3)

    _conv(shapes, "decoder.conv_in", cfg.latent_channels, chans[-1], 3)
    rev = list(reversed(chans))
    prev = rev[0]
    for i, cout in enumerate(rev):
        for j in range(cfg.layers_per_block + 1):
            _resnet(shapes, f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else cout, cout)
        if i < cfg.levels - 1:
            _conv(shapes, f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
        prev = cout
    _mid_block(shapes, "decoder.mid_block", chans[-1], cfg.mid_block_add_attention)  # after, as diffusers registers it
    _norm(shapes, "decoder.conv_norm_out", chans[0])
    _conv(shapes, "decoder.conv_out", chans[0], cfg.out_channels, 3)
    if cfg.use_quant_conv:
        _conv(shapes, "quant_conv", 2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
    if cfg.use_post_quant_conv:
        _conv(shapes, "post_quant_conv", cfg.latent_channels, cfg.latent_channels, 1)
    return shapes


# ----------------------------------------------------------------------------- latent scaling

def latent_scaling_factor(latents: np.ndarray, shift_factor: float | None = None) -> float:
    """1 / std of the (shifted) training latents, as Rombach et al. rescale the KL latents
    (LDM Sec. 4.3.2 and Appendix G: "we rescale the latents by the component-wise std"), so
    that the diffusion model's data has unit variance. latents (N, C, h, w), all finite."""
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 4 or z.shape[0] == 0:
        raise ValueError(f"latents must have shape (N, C, h, w) with N >= 1, got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"latents hold {int(np.sum(~np.isfinite(z)))} non-finite values")
    std = float(np.std(z - (0.0 if shift_factor is None else shift_factor)))
    if not std > 0:
        raise ValueError("latents have zero spread: the scaling factor 1/std is undefined")
    return 1.0 / std


def scale_latents(z, scaling_factor: float, shift_factor: float | None = None):
    """The diffusion model's data: (z - shift_factor) * scaling_factor (diffusers' convention)."""
    return (z - (0.0 if shift_factor is None else shift_factor)) * scaling_factor


def unscale_latents(z_scaled, scaling_factor: float, shift_factor: float | None = None):
    """Back to the decoder's input: z_scaled / scaling_factor + shift_factor."""
    return z_scaled / scaling_factor + (0.0 if shift_factor is None else shift_factor)


def latent_unet_config(latent_channels: int, latent_size: int, num_classes: int | None = None,
                       **overrides):
    """The default denoiser of a latent space: 64 channels, two levels when the latent side is
    even (one, at full latent resolution, when odd: e.g. MNIST's 7x7 latents), 2 ResBlocks per
    level, attention at the coarsest level and in the mid block, dropout 0.1."""
    from .unet_config import UNetConfig

    ch_mult = (1, 2) if latent_size % 2 == 0 and latent_size >= 4 else (1,)
    coarsest = latent_size // 2 ** (len(ch_mult) - 1)
    base = dict(image_size=latent_size, in_channels=latent_channels, out_channels=latent_channels, ch=64,
                ch_mult=ch_mult, num_res_blocks=2, attn_resolutions=(coarsest,), dropout=0.1, groups=8,
                eps=1e-6, num_classes=num_classes)
    return UNetConfig(**{**base, **overrides})
