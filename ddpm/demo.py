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
Re-running with the same settings resumes (or, when already trained, only samples again).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import reference

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .cli import draw
from .data import load_digits
from .distributed import single_process
from .metrics import format_hit_rate, hit_rate, train_digit_classifier
from .train import TrainConfig, Trainer
from .viz import save_gif, save_grid, save_loss_curve

__all__ = ["DemoSettings", "run_demo"]


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


def _resume(trainer: Trainer, out: Path) -> bool:
    path = latest_checkpoint(out)
    if path is None:
        return False
    ckpt = load_checkpoint(path)
    saved = dict(ckpt.config.get("training", {}))
    wanted = trainer.config.to_dict()
    changed = [k for k in wanted if k != "steps" and saved.get(k) != wanted[k]]
    if changed:
        raise CheckpointError(f"{out} holds a demo checkpoint with other settings ({', '.join(changed)}); "
                              f"pass another --out or delete {out}")
    trainer.load(ckpt)
    return True


def run_demo(out, settings: DemoSettings = DemoSettings(), *, device: torch.device | str | None = None,
             progress: bool = True, echo=print) -> dict:
    """Train, sample, score; returns the figures written to hit_rate.json."""
    from .unet import UNet

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = single_process(device)
    data = load_digits()
    config = settings.unet_config()
    schedule = reference.make_schedule(settings.schedule, settings.timesteps)
    torch.manual_seed(settings.seed)
    trainer = Trainer(UNet(config), schedule, settings.train_config(), data, ctx=ctx)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    echo(f"data: {data.describe()}")
    echo(f"model: class-conditional UNet (digits8, ch={config.ch}), {n_params:,} parameters; "
         f"{schedule.kind} schedule T={schedule.T}; device {ctx.device}")
    if _resume(trainer, out):
        echo(f"resuming from {latest_checkpoint(out)} at step {trainer.step}")

    t_train = time.perf_counter()
    if trainer.step < settings.steps:
        trainer.fit(settings.steps, run_dir=out, progress=progress, keep_last=1)
    train_s = time.perf_counter() - t_train

    # sample: one row per digit, from the EMA weights, with classifier-free guidance
    t_sample = time.perf_counter()
    model = UNet(config).to(ctx.device).eval()
    trainer.ema.copy_to(model)
    y = torch.arange(10).repeat_interleave(settings.per_class)
    images, frames = draw(model, schedule, y, len(y), ctx, num_steps=settings.sample_steps,
                          guidance_scale=settings.guidance_scale, seed=settings.seed,
                          gif_frames=settings.gif_frames)
    sample_s = time.perf_counter() - t_sample
    images = images.cpu()
    save_grid(out / "samples.png", images, settings.per_class)
    initial = reference.normal(settings.seed, range(len(y)), reference.SAMPLER_INIT_STREAM,
                               tuple(images.shape[1:]))
    save_gif(out / "reverse.gif", [torch.from_numpy(initial)] + [f.cpu() for f in frames],
             settings.per_class)
    try:
        save_loss_curve(out / "loss_curve.png", trainer.history, title="digits demo: training loss")
    except RuntimeError as err:
        echo(f"warning: {err}")

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
