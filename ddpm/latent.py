"""Latent diffusion's data side: the autoencoder of a run, the latents a denoiser trains on (cached
to safetensors), the checks that a denoiser fits them, and decoding samples (Rombach et al. 2022).

A latent run directory holds, besides the UNet's checkpoints, `autoencoder/`: the autoencoder it
was trained with as a diffusers `save_pretrained` folder whose config carries the scaling factor
used, so `python -m ddpm sample` (and diffusers) decode its samples with no other file. Its
latents are the autoencoder's posterior means, scaled: z_scaled = (mean - shift) * scaling_factor;
for an autoencoder of our own, scaling_factor = 1 / std of the training latents
(`reference.latent_scaling_factor`, LDM Sec. 4.3.2), for a diffusers one its config's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

import reference

from .autoencoder import AutoencoderKL
from .autoencoder_train import is_autoencoder_checkpoint, load_autoencoder_checkpoint
from .checkpoint import CheckpointError
from .data import ImageDataset
from .preflight import UsageError

__all__ = ["AUTOENCODER_DIR", "load_autoencoder", "check_latent_fit", "latent_dataset",
           "run_autoencoder", "decode_latent_samples", "weights_digest"]

AUTOENCODER_DIR = "autoencoder"


def load_autoencoder(spec, flag: str = "--latent") -> tuple[AutoencoderKL, bool]:
    """(autoencoder in eval mode on the CPU, whether it is our own) from one of our autoencoder
    runs/checkpoints (its EMA weights) or a diffusers AutoencoderKL folder / weights file."""
    path = Path(spec)
    if not path.exists():
        raise UsageError(f"{flag} {path} does not exist (pass a train-autoencoder run or a diffusers "
                         f"AutoencoderKL folder)")
    if is_autoencoder_checkpoint(path):
        return load_autoencoder_checkpoint(path, trainer_state=False).model(ema=True), True
    try:
        return AutoencoderKL.from_diffusers(path, dtype=torch.float32).eval(), False
    except (ValueError, TypeError) as err:
        raise UsageError(f"{flag} {path} is neither an autoencoder run of this library nor a diffusers "
                         f"AutoencoderKL: {' '.join(str(err).split())}") from None


def check_latent_fit(unet_config: reference.UNetConfig, ae_config: reference.AutoencoderConfig,
                     what: str = "the denoiser") -> None:
    """A UsageError unless a UNet of `unet_config` denoises this autoencoder's latents."""
    if unet_config.in_channels != ae_config.latent_channels or unet_config.out_channels not in (
            ae_config.latent_channels, 2 * ae_config.latent_channels):
        raise UsageError(f"{what} has in_channels={unet_config.in_channels}, out_channels="
                         f"{unet_config.out_channels} but the autoencoder's latents have "
                         f"latent_channels={ae_config.latent_channels}")
    if unet_config.image_size != ae_config.latent_size:
        raise UsageError(f"{what} works on {unet_config.image_size}x{unet_config.image_size} but the autoencoder "
                         f"(image_size={ae_config.image_size}, downsampling x{ae_config.downsampling_factor}) "
                         f"makes {ae_config.latent_size}x{ae_config.latent_size} latents")


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes, float32 bytes): the latent cache's key."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode() + str(tuple(value.shape)).encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, key: dict):
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get("latent_cache", "null"))
        if stored != key:
            return None
        return load_file(str(path))["latents"]
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def latent_dataset(ae: AutoencoderKL, data: ImageDataset, *, own: bool, cache=None, echo=print,
                   device=None) -> tuple[ImageDataset, float]:
    """(the scaled latents of `data` as an ImageDataset, the scaling factor used).

    own: compute scaling_factor = 1 / std of these latents (our autoencoder); else keep the
    autoencoder's. cache: a .safetensors path; reused when it was made by the same weights from
    the same data, (re)written otherwise."""
    cfg = ae.config
    expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if data.image_shape != expected:
        raise UsageError(f"--latent: the autoencoder takes {expected} images (image_size={cfg.image_size}), "
                         f"the data holds {data.image_shape}")
    key = {"weights": weights_digest(ae), "data": data.fingerprint(), "own": own,
           "scaling_factor": None if own else cfg.scaling_factor, "shift_factor": cfg.shift_factor}
    means = None if cache is None or not Path(cache).is_file() else _read_cache(Path(cache), key)
    if means is None:
        model = ae.to(device or "cpu")
        means = torch.cat([model.encode(data.images[i:i + 256].to(model.device))[0].cpu()
                           for i in range(0, len(data), 256)]).detach()
        ae.to("cpu")
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            save_file({"latents": means.contiguous()}, str(cache), metadata={"latent_cache": json.dumps(key)})
            echo(f"cached {len(data)} latents {tuple(means.shape[1:])} in {cache}")
    else:
        echo(f"latents read from the cache {cache}")
    if not bool(torch.isfinite(means).all()):  # a broken autoencoder or image: name the first one
        bad = (~torch.isfinite(means)).flatten(1).any(1)
        raise UsageError(f"--latent: the autoencoder's latents of --data {data.source} hold non-finite values "
                         f"(NaN or inf) for {int(bad.sum())} images, the first at index {int(bad.nonzero()[0, 0])}")
    scaling = (reference.latent_scaling_factor(means.double().numpy(), cfg.shift_factor) if own
               else cfg.scaling_factor)
    latents = reference.scale_latents(means, float(scaling), cfg.shift_factor).float().contiguous()
    return ImageDataset(images=latents, labels=data.labels, num_classes=data.num_classes,
                        class_names=data.class_names, source=f"latents of {data.source}", hflip=False), float(scaling)


def run_autoencoder(run_dir) -> AutoencoderKL | None:
    """The autoencoder saved in a latent run directory (None for a pixel-space run)."""
    folder = Path(run_dir) / AUTOENCODER_DIR
    if not folder.is_dir():
        return None
    try:
        return AutoencoderKL.from_diffusers(folder, dtype=torch.float32).eval()
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder} is not a readable autoencoder: {' '.join(str(err).split())}") from None


def decode_latent_samples(ae: AutoencoderKL, latents: torch.Tensor, source: str) -> torch.Tensor:
    """Images from a sampler's scaled latents; non-finite latents are refused naming `source`."""
    bad = int((~torch.isfinite(latents)).sum())
    if bad:
        raise CheckpointError(f"the sampled latents hold {bad} non-finite values (NaN or inf): the "
                              f"denoiser in {source} diverged; nothing was decoded or written")
    model = ae.to(latents.device)
    return model.decode_latents(latents.to(model.dtype)).clamp(-1.0, 1.0)
