"""The README's main job: `python -m ddpm demo`.

Trains a class-conditional DDPM (Ho et al. 2020) on scikit-learn's embedded 8x8 digits, with
label dropout so that one model also gives classifier-free guidance (Ho & Salimans 2022); then
draws one row per digit with DDIM (Song et al. 2021) from the EMA weights and asks a logistic
regression trained on the real digits which digit each sample shows. Writes to the output
directory (default runs/demo):

    samples.png      10 rows (digits 0..9) x `per_class` samples
    reverse.gif      the reverse process, x_T -> x_0, of the same grid
    loss_curve.png   training loss (needs matplotlib; skipped with a warning if absent)
    hit_rate.json    per-class and overall hit rate, settings, wall times
    checkpoints/     the trained model (`python -m ddpm sample --checkpoint runs/demo ...`)

Defaults are sized for a few minutes on two CPU cores; a CUDA device is used when present.
Re-running with the same settings resumes (or, when already trained, only samples again);
other settings are refused with a CheckpointError naming them (ddpm.runs.check_resume).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import reference

from .data import load_digits
from .distributed import single_process
from .metrics import format_hit_rate, hit_rate, train_digit_classifier
from .preflight import check_output_dir
from .runs import (
    check_resume,
    draw,
    ema_model,
    new_trainer,
    open_run,
    resume,
    save_loss_curve_or_warn,
    train_to,
)
from .train import TrainConfig, Trainer
from .viz import save_gif, save_grid

__all__ = ["DemoSettings", "run_demo"]

_WRITES = ("samples.png", "reverse.gif", "loss_curve.png", "hit_rate.json", "latest")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains and draws. The defaults are the tuned ones (see the README)."""

    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    timesteps: int = 1000
    schedule: str = "linear"
    ch: int = 32
    sample_steps: int = 50
    guidance_scale: float = 2.0
    per_class: int = 10
    gif_frames: int = 25
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        """A seconds-long run through every stage (for tests); the pictures show noise."""
        return cls(steps=12, batch_size=32, warmup_steps=2, sample_steps=4, per_class=2, gif_frames=4)

    def replace(self, **changes) -> "DemoSettings":
        return replace(self, **changes)

    def unet_config(self) -> reference.UNetConfig:
        return reference.UNetConfig.digits8(num_classes=10, ch=self.ch)

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=self.warmup_steps, ema_decay=self.ema_decay,
                           label_dropout=self.label_dropout, seed=self.seed, grad_clip=1.0)


def _train(out: Path, settings: DemoSettings, ctx, *, progress: bool, echo) -> tuple[Trainer, float]:
    """Train the demo's model into `out`, continuing the run there (ddpm.runs.check_resume:
    other settings raise CheckpointError); returns the trainer and the seconds spent training."""
    data = load_digits()
    config = settings.unet_config()
    schedule = reference.make_schedule(settings.schedule, settings.timesteps)
    # channels_last on the CPU: there torch's convolutions and our GroupNorm+SiLU run faster in
    # it (issue 17, benchmarks/results/cpu-vs-diffusers-quiet.md); a speed option, not the math
    train_config = replace(settings.train_config(), channels_last=ctx.device.type == "cpu")
    ckpt = open_run(out, ctx, _WRITES)
    if ckpt is not None:
        check_resume(ckpt, unet_config=config, schedule=schedule, training=train_config.to_dict(),
                     label="demo", data=data)
    trainer = new_trainer(config, schedule, train_config, data, ctx)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    echo(f"data: {data.describe()}")
    echo(f"model: class-conditional UNet (digits8, ch={config.ch}), {n_params:,} parameters; "
         f"{schedule.kind} schedule T={schedule.T}; device {ctx.device}")
    resume(trainer, ckpt, echo)
    return trainer, train_to(trainer, out, keep_last=1, progress=progress)


def _draw_pictures(out: Path, settings: DemoSettings, trainer: Trainer, ctx, echo):
    """samples.png (one row per digit, EMA weights, classifier-free guidance), reverse.gif and
    loss_curve.png; returns (images on the CPU, their labels, seconds spent sampling)."""
    start = time.perf_counter()
    y = torch.arange(10).repeat_interleave(settings.per_class)
    images, frames = draw(ema_model(trainer), trainer.schedule, y, len(y), ctx,
                          num_steps=settings.sample_steps, guidance_scale=settings.guidance_scale,
                          seed=settings.seed, gif_frames=settings.gif_frames)
    sample_s = time.perf_counter() - start
    images = images.cpu()
    save_grid(out / "samples.png", images, settings.per_class)
    # the GIF opens on x_T, the sampler's initial noise, which no sampler step snapshots
    initial = reference.normal(settings.seed, range(len(y)), reference.SAMPLER_INIT_STREAM,
                               tuple(images.shape[1:]))
    save_gif(out / "reverse.gif", [torch.from_numpy(initial)] + [f.cpu() for f in frames],
             settings.per_class)
    save_loss_curve_or_warn(out / "loss_curve.png", trainer.history, title="digits demo: training loss",
                            warn=echo)
    return images, y, sample_s


def run_demo(out, settings: DemoSettings = DemoSettings(), *, device: torch.device | str | None = None,
             progress: bool = True, echo=print) -> dict:
    """Train, sample, score; returns the figures written to hit_rate.json."""
    start = time.perf_counter()
    out = check_output_dir(out, "--out", _WRITES)  # before any work: a path we cannot write is one line
    ctx = single_process(device)
    out.mkdir(parents=True, exist_ok=True)
    trainer, train_s = _train(out, settings, ctx, progress=progress, echo=echo)
    images, y, sample_s = _draw_pictures(out, settings, trainer, ctx, echo)

    classifier = train_digit_classifier(seed=settings.seed)
    result = hit_rate(classifier, images, y)
    wall = time.perf_counter() - start
    echo("\nhit rate: which digit a logistic regression trained on the real digits sees in each sample")
    echo(format_hit_rate(result, classifier))
    summary = {
        "hit_rate": result.overall,
        "hit_rate_per_class": [float(v) for v in result.per_class],
        "classifier_held_out_accuracy": classifier.held_out_accuracy,
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "final_loss_mean_of_last_50": float(torch.tensor(trainer.history["loss"][-50:]).nanmean())
        if trainer.history["loss"] else None,
        "train_s": train_s,
        "sample_s": sample_s,
        "wall_time_s": wall,
        "device": str(ctx.device),
        "torch_threads": torch.get_num_threads(),
        "settings": asdict(settings),
    }
    (out / "hit_rate.json").write_text(json.dumps(summary, indent=2))
    echo(f"\nwrote {out / 'samples.png'} (one row per digit 0..9), {out / 'reverse.gif'}, "
         f"{out / 'loss_curve.png'}, {out / 'hit_rate.json'}")
    echo(f"wall time {wall:.1f} s (training {train_s:.1f} s, sampling {sample_s:.1f} s); "
         f"overall hit rate {100 * result.overall:.1f}%")
    return summary
