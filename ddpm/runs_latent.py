"""Latent diffusion runs (Rombach et al. 2022): `python -m ddpm train-autoencoder` and
`python -m ddpm train --latent AE`. The CLI parses; this module runs, with ddpm.runs' pieces
(output checks, resume, Trainer loop, checkpoints, pictures) and ddpm.latent's data side.

    train-autoencoder: AutoencoderTrainer on the images; checkpoints (resumed like a UNet run:
        same settings and data, only --steps may grow), loss_curve.png, reconstructions.png
        (originals above their EMA reconstructions) and the reconstruction PSNR.
    train --latent AE: the images encoded once (posterior means, cached in
        RUN/latents.safetensors), scaled by 1/std of those latents for our own autoencoder (its
        config's scaling_factor for a diffusers one); the autoencoder with that factor is saved
        as RUN/autoencoder/ (a diffusers folder); the UNet trains on the latents with the usual
        Trainer; samples.png decodes its samples. `python -m ddpm sample` decodes any latent run.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import reference

from .autoencoder import AutoencoderKL
from .autoencoder_train import AutoencoderTrainer, load_autoencoder_checkpoint
from .checkpoint import CheckpointError, latest_checkpoint, remove_leftovers
from .data import load_dataset
from .distributed import barrier, init_distributed, shutdown_distributed
from .latent import AUTOENCODER_DIR, check_latent_fit, decode_latent_samples, latent_dataset, load_autoencoder, \
    run_autoencoder, weights_digest
from .preflight import UsageError, check_output_dir, data_changes
from .runs import (_echo, _resolve_run, _with_variance, class_labels, draw, ema_model, model_config, new_trainer,
                   open_run, resume, save_loss_curve_or_warn, save_pictures, train_to)
from .train import TrainConfig
from .viz import save_grid

__all__ = ["AUTOENCODER_PRESETS", "autoencoder_config", "train_autoencoder_run", "train_latent_run", "psnr"]

AUTOENCODER_PRESETS = ("mnist", "digits", "tiny")


def autoencoder_config(preset: str) -> reference.AutoencoderConfig:
    """mnist: 28x28 -> 4x7x7; digits: 8x8 -> 2x4x4; tiny: 4x4 -> 2x2x2 (tests)."""
    if preset == "mnist":
        return reference.AutoencoderConfig()
    if preset == "digits":
        return reference.AutoencoderConfig(image_size=8, latent_channels=2, block_out_channels=(32, 64))
    if preset == "tiny":
        return reference.AutoencoderConfig.tiny()
    raise UsageError(f"--config must be one of {AUTOENCODER_PRESETS}, got {preset!r}")


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE)."""
    mse = float((x_hat.clamp(-1, 1).double() - x.double()).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


# ----------------------------------------------------------------------------- train-autoencoder

def _resume_autoencoder(ckpt, ae_config, training: dict, data, allow_data_change: bool):
    """The resume policy of ddpm.runs.check_resume for an autoencoder run -> (config, TrainConfig, kl_weight)."""
    if ae_config is not None and ae_config != ckpt.ae_config:
        raise CheckpointError(f"{ckpt.path} holds an autoencoder of another config ({ckpt.ae_config}); "
                              f"pass another --out to start a new run")
    saved = dict(ckpt.config.get("training", {}))
    changed = {k: (saved.get(k), v) for k, v in training.items() if k != "steps" and saved.get(k) != v}
    if changed:
        raise CheckpointError(f"{ckpt.path} was trained with other settings: "
                              + ", ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in changed.items())
                              + "; only --steps may change when resuming")
    steps = training.get("steps", saved["steps"])
    if steps < ckpt.step:
        raise CheckpointError(f"--steps {steps} lies behind {ckpt.path} (step {ckpt.step})")
    changes = [] if allow_data_change else data_changes(ckpt.config, data.fingerprint())
    if changes:
        raise CheckpointError(f"{ckpt.path} was trained on other data: {'; '.join(changes)}; pass "
                              f"--allow-data-change to continue on this data")
    saved["steps"] = steps
    kl_weight = saved.pop("kl_weight")
    return ckpt.ae_config, TrainConfig.from_dict(saved), kl_weight


def train_autoencoder_run(out, *, data: str = "digits", preset: str | None = None, hflip: bool | None = None,
                          training: dict | None = None, kl_weight: float | None = None,
                          checkpoint_every: int = 1000, device=None, progress: bool = True,
                          allow_data_change: bool = False, echo=_echo) -> AutoencoderTrainer:
    """`python -m ddpm train-autoencoder`: train (or resume) the autoencoder run in `out`."""
    out = check_output_dir(out, "--out", ("loss_curve.png", "reconstructions.png", "latest"))
    training = dict(training or {})
    ctx = init_distributed(device)
    try:
        if ctx.is_main:
            remove_leftovers(out)
        barrier(ctx)
        found = latest_checkpoint(out)
        ckpt = None if found is None else load_autoencoder_checkpoint(found)
        wanted = None if preset is None else autoencoder_config(preset)
        shape_from = wanted or (ckpt.ae_config if ckpt else autoencoder_config("digits" if data == "digits" else "mnist"))
        dataset = load_dataset(data, shape_from.image_size, shape_from.in_channels, hflip=hflip)
        if ckpt is None:
            try:
                train_config = TrainConfig(**training)
            except ValueError as err:
                raise UsageError(str(err)) from None
            ae_config, beta = shape_from, 1e-6 if kl_weight is None else kl_weight
        else:
            if kl_weight is not None:
                training["kl_weight"] = kl_weight
            ae_config, train_config, beta = _resume_autoencoder(ckpt, wanted, training, dataset, allow_data_change)
        torch.manual_seed(train_config.seed)
        trainer = AutoencoderTrainer(AutoencoderKL(ae_config), train_config, dataset, kl_weight=beta, ctx=ctx)
        if ckpt is not None:
            trainer.load(ckpt)
            echo(f"resuming from {ckpt.path} at step {trainer.step}")
        if ctx.is_main:
            n_params = sum(p.numel() for p in trainer.model.parameters())
            echo(f"data: {dataset.describe()}\nmodel: AutoencoderKL {n_params:,} parameters, "
                 f"{ae_config.image_size}x{ae_config.image_size} -> latents {ae_config.latent_shape}; "
                 f"kl_weight {beta:g}; device {ctx.device} x {ctx.world_size} process(es)")
        elapsed = train_to(trainer, out, checkpoint_every=checkpoint_every, progress=progress)
        if ctx.is_main:
            save_loss_curve_or_warn(out / "loss_curve.png", trainer.history, title="autoencoder loss")
            model = trainer.ema_model()
            x = dataset.images[:64].to(ctx.device)
            with torch.no_grad():
                x_hat = model(x)[0].clamp(-1, 1)
            save_grid(out / "reconstructions.png", torch.cat([x[:8], x_hat[:8]]).cpu(), nrow=8)
            echo(f"trained to step {trainer.step} in {elapsed:.1f} s; reconstruction PSNR (EMA, first "
                 f"{len(x)} training images) {psnr(x_hat, x):.2f} dB; wrote {out}")
        return trainer
    finally:
        shutdown_distributed(ctx)


# ----------------------------------------------------------------------------- train --latent

def _check_same_autoencoder(out: Path, ae: AutoencoderKL) -> None:
    saved = run_autoencoder(out)
    if saved is None:
        return
    same = saved.config.replace(scaling_factor=1.0) == ae.config.replace(scaling_factor=1.0) and \
        weights_digest(saved) == weights_digest(ae)
    if not same:
        raise CheckpointError(f"{out} was trained on the latents of another autoencoder ({out / AUTOENCODER_DIR}, "
                              f"image_size {saved.config.image_size}, latents {saved.config.latent_shape}) than "
                              f"--latent (image_size {ae.config.image_size}, latents {ae.config.latent_shape}); "
                              f"pass another --out")


def train_latent_run(out, *, latent, latent_cache=None, data: str = "digits", preset: str | None = None,
                     unconditional: bool = False, schedule: str | None = None, timesteps: int | None = None,
                     training: dict | None = None, checkpoint_every: int = 1000, samples: int = 8,
                     guidance: float = 2.0, sample_steps: int = 50, device=None, progress: bool = True,
                     allow_data_change: bool = False, hflip: bool | None = None, echo=_echo):
    """`python -m ddpm train --latent AE`: a DDPM on the autoencoder's latents of --data."""
    if hflip:
        raise UsageError("--hflip on does not apply with --latent: the latents are encoded once, unflipped")
    out = check_output_dir(out, "--out", ("loss_curve.png", "samples.png", "latest"))
    training = dict(training or {})
    ae, own = load_autoencoder(latent)
    ctx = init_distributed(device)
    try:
        ckpt = open_run(out, ctx)
        _check_same_autoencoder(out, ae)
        images = load_dataset(data, ae.config.image_size, ae.config.in_channels, hflip=False)
        latents, scaling = latent_dataset(ae, images, own=own, device=ctx.device,
                                          cache=Path(latent_cache) if latent_cache else out / "latents.safetensors",
                                          echo=echo if ctx.is_main else (lambda _: None))
        num_classes = None if unconditional else latents.num_classes
        if preset is not None:  # a pixel preset must fit the latents (channels and size)
            check_latent_fit(_with_variance(model_config(preset, num_classes), training), ae.config,
                             f"--config {preset}")
        if ckpt is None:
            try:
                train_config = TrainConfig(**training)
            except ValueError as err:
                raise UsageError(str(err)) from None
            config = _with_variance(model_config(preset, num_classes) if preset else reference.latent_unet_config(
                ae.config.latent_channels, ae.config.latent_size, num_classes), training)
            sched = reference.make_schedule(schedule or "linear", 1000 if timesteps is None else timesteps)
        else:
            config, sched, train_config = _resolve_run(ckpt, latents, preset=preset, unconditional=unconditional,
                                                       schedule=schedule, timesteps=timesteps, training=training,
                                                       allow_data_change=allow_data_change)
        check_latent_fit(config, ae.config, f"the denoiser of {out}")
        scaled = AutoencoderKL(ae.config.replace(scaling_factor=scaling))
        scaled.load_state_dict(ae.state_dict())
        if ctx.is_main:
            scaled.save_diffusers(out / AUTOENCODER_DIR)
        trainer = new_trainer(config, sched, train_config, latents, ctx)
        resume(trainer, ckpt, echo)
        if ctx.is_main:
            echo(f"latents: {latents.describe()}; scaling_factor {scaling:.6g} "
                 f"({'1/std of these latents' if own else 'the autoencoder config'})\nmodel: latent UNet "
                 f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters; {sched!r}")
        elapsed = train_to(trainer, out, checkpoint_every=checkpoint_every, progress=progress)
        if ctx.is_main:
            save_loss_curve_or_warn(out / "loss_curve.png", trainer.history)
        if samples > 0:
            y, n, nrow = class_labels("all" if config.num_classes else None, samples, config.num_classes)
            z, _ = draw(ema_model(trainer), sched, y, n, ctx, num_steps=min(sample_steps, sched.T),
                        guidance_scale=guidance if y is not None else 1.0)
            if ctx.is_main:
                save_pictures(out / "samples.png", decode_latent_samples(scaled, z, str(out)), [], nrow)
        if ctx.is_main:
            echo(f"trained to step {trainer.step} in {elapsed:.1f} s; wrote {out}")
        return trainer
    finally:
        shutdown_distributed(ctx)
