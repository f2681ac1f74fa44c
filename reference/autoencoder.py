"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G) in
NumPy, forward above backward, built from the UNet's layers (conv, GroupNorm+SiLU, ResBlock,
attention, resampling); naming and layout in `reference.autoencoder_config`.

    encode:  h = encoder(x) -> quant_conv -> moments (N, 2 latent, h, w) = [mean, logvar]
             logvar clamped to [-30, 20]                  (diffusers' DiagonalGaussianDistribution)
    sample:  z = mean + exp(logvar / 2) * noise           (reparameterisation, Kingma & Welling
             2014 Eq. 10; noise from the noise stream, `reference.autoencoder_stream`)
    decode:  x_hat = decoder(post_quant_conv(z))
    loss     = mean_elements (x_hat - x)^2 + kl_weight * mean_n sum_latent KL(q(z|x_n) || N(0, I))

    encoder: conv_in; per level ResBlocks (no time embedding) and a stride-2 conv (all but the
             last); mid ResBlock, attention, ResBlock; GroupNorm+SiLU; conv_out -> 2 latent
    decoder: conv_in; mid ResBlock, attention, ResBlock; per level (coarsest first)
             layers_per_block + 1 ResBlocks and a nearest-2x + conv (all but the last);
             GroupNorm+SiLU; conv_out

The reconstruction loss is the Gaussian-decoder MSE (LDM trains with L1 + LPIPS + a patch GAN;
this library has no perceptual net or discriminator, so the KL-VAE objective alone).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ._validate import check_float_array, check_parameter_names
from .attention import attention_block, attention_block_backward
from .autoencoder_config import (AUTOENCODER_EPS, LOGVAR_CLAMP, AutoencoderConfig,
                                 autoencoder_parameter_shapes)
from .conv import conv2d, conv2d_backward, downsample, downsample_backward, upsample, upsample_backward
from .norm import group_norm_silu, group_norm_silu_backward
from .unet import _local, resnet_block, resnet_block_backward
from .variational import normal_kl, normal_kl_backward

__all__ = ["AutoencoderKL", "posterior_sample", "posterior_sample_backward",
           "autoencoder_loss", "autoencoder_loss_backward"]


# ----------------------------------------------------------------------------- posterior

def posterior_sample(moments: np.ndarray, noise: np.ndarray | None):
    """moments (N, 2L, h, w) -> mean, logvar (clamped), z (N, L, h, w); z = mean without noise.

    Returns (mean, logvar, z, cache)."""
    mean, raw_logvar = np.split(moments, 2, axis=1)
    logvar = np.clip(raw_logvar, *LOGVAR_CLAMP)
    if noise is None:
        z, std = mean, None
    else:
        if noise.shape != mean.shape:
            raise ValueError(f"noise must have the latent shape {mean.shape}, got {noise.shape}")
        std = np.exp(0.5 * logvar)
        z = mean + std * noise
    inside = (raw_logvar >= LOGVAR_CLAMP[0]) & (raw_logvar <= LOGVAR_CLAMP[1])
    return mean, logvar, z, (std, noise, inside)


def posterior_sample_backward(dz: np.ndarray | None, dmean: np.ndarray | None,
                              dlogvar: np.ndarray | None, cache) -> np.ndarray:
    """Gradients of z, mean and logvar (any may be None) -> dmoments (N, 2L, h, w).

    dz/dmean = 1; dz/dlogvar = noise * std / 2; the clamp passes the gradient inside [-30, 20]."""
    std, noise, inside = cache
    dm = np.zeros(inside.shape) if dmean is None else np.array(dmean, dtype=np.float64)
    dlv = np.zeros(inside.shape) if dlogvar is None else np.array(dlogvar, dtype=np.float64)
    if dz is not None:
        dm = dm + dz
        if noise is not None:
            dlv = dlv + dz * noise * 0.5 * std
    return np.concatenate([dm, dlv * inside], axis=1)


# ----------------------------------------------------------------------------- the loss

def autoencoder_loss(x_hat: np.ndarray, x: np.ndarray, mean: np.ndarray, logvar: np.ndarray,
                     kl_weight: float):
    """x_hat, x (N, C, H, W); mean, logvar (N, L, h, w) -> (loss, reconstruction, kl, cache).

    reconstruction = mean over elements of (x_hat - x)^2; kl = mean over samples of the summed
    KL(N(mean, e^logvar) || N(0, 1)) (reference.normal_kl); loss = reconstruction + kl_weight kl."""
    x_hat = check_float_array(x_hat, "x_hat", min_ndim=4)
    x = check_float_array(x, "x", min_ndim=4)
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat {x_hat.shape} and x {x.shape} must have the same shape")
    if not (np.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight!r}")
    diff = x_hat.astype(np.float64) - x
    reconstruction = float(np.mean(diff * diff))
    kl = float(np.sum(normal_kl(mean, logvar, 0.0, 0.0)) / mean.shape[0])
    return reconstruction + kl_weight * kl, reconstruction, kl, (diff, mean, logvar, kl_weight)


def autoencoder_loss_backward(cache, dloss: float = 1.0):
    """-> dx_hat (N, C, H, W), dmean, dlogvar (N, L, h, w)."""
    diff, mean, logvar, kl_weight = cache
    dx_hat = dloss * 2.0 * diff / diff.size
    dkl = np.full(mean.shape, dloss * kl_weight / mean.shape[0])
    dmean, dlogvar, _, _ = normal_kl_backward(dkl, mean, logvar, 0.0, 0.0)
    return dx_hat, dmean, dlogvar


# ----------------------------------------------------------------------------- the model

class AutoencoderKL:
    """The KL autoencoder: `encode(x) -> (mean, logvar)`, `decode(z) -> x_hat`, float64.

    `forward(x, noise=None) -> x_hat` runs encode, the posterior sample (its mean without noise)
    and decode, caching for `backward(dx_hat, dmean=None, dlogvar=None) -> dx`, which fills
    `.grads` (same keys as `.params`). Initialisation: torch's nn defaults from
    default_rng(seed) as `reference.UNet` (no zero-init: diffusers' VAE does not zero layers).
    """

    def __init__(self, config: AutoencoderConfig, params: Mapping[str, np.ndarray] | None = None,
                 seed: int = 0):
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"config must be an AutoencoderConfig, got {type(config).__name__}")
        self.config = config
        self.shapes = autoencoder_parameter_shapes(config)
        if params is None:
            self.params = self._initial_params(np.random.default_rng(seed))
        else:
            self.params = {name: np.zeros(shape) for name, shape in self.shapes.items()}
            self.load(params)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._tape = None

    def _initial_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        params = {}
        for name, shape in self.shapes.items():
            if ".norm" in name or "group_norm" in name or "conv_norm_out" in name:
                params[name] = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
            else:
                fan_in = int(np.prod(self.shapes[name.rsplit(".", 1)[0] + ".weight"][1:]))
                params[name] = rng.uniform(-1.0 / np.sqrt(fan_in), 1.0 / np.sqrt(fan_in), shape)
        return params

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy `params` in place; every name of the config with its exact shape, finite floats."""
        check_parameter_names(self.shapes, params, "params")
        for name in self.shapes:
            np.copyto(self.params[name], check_float_array(np.asarray(params[name]), f"params[{name!r}]"))

    @property
    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    # ------------------------------------------------------------------------- blocks

    def _check_x(self, x: np.ndarray, channels: int, size: int, name: str) -> np.ndarray:
        x = check_float_array(x, name, min_ndim=4)
        if x.ndim != 4 or x.shape[1:] != (channels, size, size):
            raise ValueError(f"{name} must have shape (N, {channels}, {size}, {size}), got {x.shape}")
        return x.astype(np.float64, copy=False)

    def _mid(self, h, prefix, tape):
        p, cfg = self.params, self.config
        h, cache = resnet_block(h, None, _local(p, f"{prefix}.resnets.0"), cfg.groups, AUTOENCODER_EPS)
        tape.append(("resnet", f"{prefix}.resnets.0", cache))
        if cfg.mid_block_add_attention:
            h, cache = attention_block(h, _local(p, f"{prefix}.attentions.0"), cfg.groups, AUTOENCODER_EPS, 1)
            tape.append(("attention", f"{prefix}.attentions.0", cache))
        h, cache = resnet_block(h, None, _local(p, f"{prefix}.resnets.1"), cfg.groups, AUTOENCODER_EPS)
        tape.append(("resnet", f"{prefix}.resnets.1", cache))
        return h

    def _conv(self, h, prefix, tape, padding):
        h, cache = conv2d(h, self.params[prefix + ".weight"], self.params[prefix + ".bias"], 1, padding)
        tape.append(("conv", prefix, cache))
        return h

    def _out(self, h, prefix, tape):
        p = self.params
        h, cache = group_norm_silu(h, p[f"{prefix}.conv_norm_out.weight"], p[f"{prefix}.conv_norm_out.bias"],
                                   self.config.groups, AUTOENCODER_EPS)
        tape.append(("group_norm_silu", f"{prefix}.conv_norm_out", cache))
        return self._conv(h, f"{prefix}.conv_out", tape, 1)

    def _encode(self, x, tape):
        cfg, p = self.config, self.params
        h = self._conv(x, "encoder.conv_in", tape, 1)
        for i in range(cfg.levels):
            for j in range(cfg.layers_per_block):
                prefix = f"encoder.down_blocks.{i}.resnets.{j}"
                h, cache = resnet_block(h, None, _local(p, prefix), cfg.groups, AUTOENCODER_EPS)
                tape.append(("resnet", prefix, cache))
            if i < cfg.levels - 1:
                prefix = f"encoder.down_blocks.{i}.downsamplers.0.conv"
                h, cache = downsample(h, p[prefix + ".weight"], p[prefix + ".bias"], 0)
                tape.append(("downsample", prefix, cache))
        h = self._out(self._mid(h, "encoder.mid_block", tape), "encoder", tape)
        return self._conv(h, "quant_conv", tape, 0) if cfg.use_quant_conv else h

    def _decode(self, z, tape):
        cfg, p = self.config, self.params
        h = self._conv(z, "post_quant_conv", tape, 0) if cfg.use_post_quant_conv else z
        h = self._mid(self._conv(h, "decoder.conv_in", tape, 1), "decoder.mid_block", tape)
        for i in range(cfg.levels):
            for j in range(cfg.layers_per_block + 1):
                prefix = f"decoder.up_blocks.{i}.resnets.{j}"
                h, cache = resnet_block(h, None, _local(p, prefix), cfg.groups, AUTOENCODER_EPS)
                tape.append(("resnet", prefix, cache))
            if i < cfg.levels - 1:
                prefix = f"decoder.up_blocks.{i}.upsamplers.0.conv"
                h, cache = upsample(h, p[prefix + ".weight"], p[prefix + ".bias"])
                tape.append(("upsample", prefix, cache))
        return self._out(h, "decoder", tape)

    # ------------------------------------------------------------------------- public

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, in_channels, S, S) -> mean, logvar (N, latent_channels, S/f, S/f), logvar clamped."""
        cfg = self.config
        moments = self._encode(self._check_x(x, cfg.in_channels, cfg.image_size, "x"), [])
        mean, logvar, _, _ = posterior_sample(moments, None)
        return mean, logvar

    def decode(self, z: np.ndarray) -> np.ndarray:
        """z (N, latent_channels, S/f, S/f) (unscaled) -> x_hat (N, out_channels, S, S)."""
        cfg = self.config
        z = self._check_x(z, cfg.latent_channels, cfg.latent_size, "z")
        if not np.all(np.isfinite(z)):
            raise ValueError("z (the latent) holds NaN or inf")
        return self._decode(z, [])

    def forward(self, x: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """x -> x_hat through z = mean + std * noise (z = mean when noise is None); caches for backward.

        The posterior's mean and logvar are left in `self.mean`, `self.logvar` (for the loss)."""
        cfg = self.config
        x = self._check_x(x, cfg.in_channels, cfg.image_size, "x")
        encode_tape, decode_tape = [], []
        moments = self._encode(x, encode_tape)
        if noise is not None:
            noise = np.asarray(noise, dtype=np.float64)
        self.mean, self.logvar, z, posterior_cache = posterior_sample(moments, noise)
        x_hat = self._decode(z, decode_tape)
        self._tape = (encode_tape, posterior_cache, decode_tape, x_hat.shape)
        return x_hat

    def backward(self, dx_hat: np.ndarray, dmean: np.ndarray | None = None,
                 dlogvar: np.ndarray | None = None) -> np.ndarray:
        """dL/dx_hat (and optional dL/dmean, dL/dlogvar of the posterior) -> dL/dx; fills .grads."""
        if self._tape is None:
            raise RuntimeError("backward needs a preceding forward (the cache is empty)")
        encode_tape, posterior_cache, decode_tape, out_shape = self._tape
        dx_hat = check_float_array(dx_hat, "dx_hat", min_ndim=4)
        if dx_hat.shape != out_shape:
            raise ValueError(f"dx_hat must have the last output's shape {out_shape}, got {dx_hat.shape}")
        grads = {name: np.zeros_like(value) for name, value in self.params.items()}
        dz = _run_backward(decode_tape, dx_hat.astype(np.float64), grads)
        dmoments = posterior_sample_backward(dz, dmean, dlogvar, posterior_cache)
        dx = _run_backward(encode_tape, dmoments, grads)
        self.grads.update(grads)
        self._tape = None
        return dx

    def __repr__(self) -> str:
        return f"AutoencoderKL({self.config}, parameters={self.num_parameters:,})"


def _run_backward(tape, dh: np.ndarray, grads: dict) -> np.ndarray:
    """Walk a sequential tape backwards, writing the parameter gradients into `grads`."""
    for kind, prefix, cache in reversed(tape):
        if kind == "conv":
            dh, grads[prefix + ".weight"], grads[prefix + ".bias"] = conv2d_backward(dh, cache)
        elif kind == "group_norm_silu":
            dh, grads[prefix + ".weight"], grads[prefix + ".bias"] = group_norm_silu_backward(dh, cache)
        elif kind == "downsample":
            dh, grads[prefix + ".weight"], grads[prefix + ".bias"] = downsample_backward(dh, cache)
        elif kind == "upsample":
            dh, grads[prefix + ".weight"], grads[prefix + ".bias"] = upsample_backward(dh, cache)
        elif kind in ("resnet", "attention"):
            if kind == "resnet":
                dh, _, local = resnet_block_backward(dh, cache)
            else:
                dh, local = attention_block_backward(dh, cache)
            for name, value in local.items():
                grads[f"{prefix}.{name}"] = value
        else:  # pragma: no cover - the tape only holds the kinds above
            raise AssertionError(kind)
    return dh
