"""Runs of the noise-aware classifier (classifier guidance, Dhariwal & Nichol 2021, Sec. 4):
`python -m ddpm train-classifier` and the classifier half of `python -m ddpm sample --classifier`.

Training reuses the denoiser's machinery: `ClassifierTrainer` is a `ddpm.Trainer` (same data
order, noise stream, AdamW, warmup, gradient clipping, EMA, progress bar, atomic checkpoints and
bit-exact resume) whose objective is the cross-entropy of classifier(x_t, t) against the label,
with x_t = q_sample(x0, t, eps) at the denoiser's uniformly drawn t. Its checkpoints record
model "classifier" (ddpm.checkpoint.MODEL_KINDS); the resume policy is `ddpm.runs.check_resume`.
A held-out split of the data (`reference.holdout_split`) is kept out of training; after training
the EMA classifier's accuracy on it is measured at `reference.accuracy_timesteps(T)` and written
to accuracy_vs_t.json and accuracy_vs_t.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import kernels
import reference
from reference.classifier import ACCURACY_STREAM_BASE

from .classifier import Classifier
from .data import ImageDataset, load_dataset
from .distributed import init_distributed, shutdown_distributed
from .preflight import UsageError, check_output_dir
from .runs import check_resume, load_model, model_config, open_run, resume, save_loss_curve_or_warn, train_to
from .train import TrainConfig, Trainer

__all__ = ["ClassifierTrainer", "train_classifier_run", "accuracy_vs_t", "save_accuracy_curve"]

_WRITES = ("accuracy_vs_t.png", "accuracy_vs_t.json", "loss_curve.png", "latest")


def _echo(message: str) -> None:
    print(message, flush=True)


class ClassifierTrainer(Trainer):
    """A `ddpm.Trainer` of a `ddpm.Classifier`: loss = cross-entropy(classifier(x_t, t), y)."""

    MODEL_KIND = "classifier"

    def __init__(self, model: Classifier, schedule, config: TrainConfig, dataset: ImageDataset, **kwargs):
        if not isinstance(model, Classifier):
            raise TypeError(f"model must be a ddpm.Classifier, got {type(model).__name__}")
        if config.label_dropout != 0.0 or config.loss != "simple" or config.min_snr_gamma is not None:
            raise ValueError("a classifier trains with label_dropout=0, loss='simple' and no min_snr_gamma "
                             f"(got {config.label_dropout}, {config.loss!r}, {config.min_snr_gamma})")
        super().__init__(model, schedule, config, dataset, **kwargs)

    def check_batch(self, x0: torch.Tensor, y: torch.Tensor | None) -> None:
        cfg = self.unet_config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if not isinstance(x0, torch.Tensor) or x0.ndim != 4 or tuple(x0.shape[1:]) != expected:
            raise ValueError(f"x0 must have shape (N, {', '.join(map(str, expected))}), got "
                             f"{tuple(getattr(x0, 'shape', ()))}")
        if y is None or y.dtype != torch.int64 or y.shape != (x0.shape[0],):
            raise ValueError(f"y must be int64 class ids of shape ({x0.shape[0]},)")
        if y.device.type == "cpu":
            reference.check_class_labels(y, cfg.num_classes, "y")

    def compute_loss(self, x0, t, y, samples, step) -> torch.Tensor:
        """Mean cross-entropy of this rank's batch at x_t = q_sample(x0, t, eps) (the noise stream)."""
        self.check_batch(x0, y)
        x_t, _ = kernels.q_sample(x0, t, self._sqrt_alpha_bar, self._sqrt_one_minus_alpha_bar,
                                  noise=None, seed=self.config.seed, samples=samples,
                                  stream=reference.train_stream(step))
        with torch.autocast(device_type=x_t.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.ddp_model(x_t, t)
        return F.cross_entropy(logits.float(), y)


def _subset(dataset: ImageDataset, rows: np.ndarray, part: str) -> ImageDataset:
    index = torch.from_numpy(rows)
    return ImageDataset(dataset.images[index], dataset.labels[index], dataset.num_classes,
                        dataset.class_names, f"{dataset.source} ({part})", dataset.hflip)


@torch.no_grad()
def accuracy_vs_t(classifier: Classifier, dataset: ImageDataset, schedule: reference.Schedule, *,
                  seed: int = 0, count: int = 20, batch_size: int = 512) -> dict:
    """Held-out accuracy of `classifier` at `reference.accuracy_timesteps(T, count)`: each image
    noised to x_t with the noise stream (seed, image index, ACCURACY_STREAM_BASE + k)."""
    classifier = classifier.eval()
    device = classifier.device
    timesteps = reference.accuracy_timesteps(schedule.T, count)
    sqrt_ab = torch.tensor(schedule.sqrt_alpha_bars, dtype=torch.float32, device=device)
    sqrt_1mab = torch.tensor(schedule.sqrt_one_minus_alpha_bars, dtype=torch.float32, device=device)
    n = len(dataset)
    accuracy = []
    for k, t in enumerate(timesteps):
        correct = 0
        for start in range(0, n, batch_size):
            rows = torch.arange(start, min(start + batch_size, n))
            x0 = dataset.images[rows].to(device)
            t_batch = torch.full((len(rows),), int(t), dtype=torch.int64, device=device)
            x_t, _ = kernels.q_sample(x0, t_batch, sqrt_ab, sqrt_1mab, None, seed=seed,
                                      samples=rows.to(device), stream=ACCURACY_STREAM_BASE + k)
            predicted = classifier(x_t.to(classifier.dtype), t_batch).argmax(dim=1).cpu()
            correct += int((predicted == dataset.labels[rows]).sum())
        accuracy.append(correct / n)
    return {"t": [int(t) for t in timesteps], "accuracy": accuracy, "n": n, "seed": seed}


def save_accuracy_curve(path, result: dict, title: str) -> Path:
    """accuracy against t as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(result["t"], result["accuracy"], "o-", color="tab:blue")
    chance = 1.0 / max(result.get("num_classes", 10), 1)
    ax.axhline(chance, color="gray", linestyle=":", label="chance")
    ax.set_xlabel("t (0 = clean)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _initial_classifier(config, from_denoiser, schedule, num_classes: int) -> Classifier:
    """A fresh classifier, or one whose encoder is a trained denoiser's (--from-denoiser)."""
    if from_denoiser is None:
        return Classifier(config)
    unet, unet_schedule, ckpt = load_model(from_denoiser, ema=True, device=torch.device("cpu"))
    encoder = {k: v for k, v in unet.config.to_dict().items() if k not in ("num_classes", "out_channels")}
    mine = {k: v for k, v in config.to_dict().items() if k not in ("num_classes", "out_channels")}
    if encoder != mine:
        raise UsageError(f"--from-denoiser {from_denoiser}: its UNet layout differs from the classifier's "
                         f"(--config): " + ", ".join(f"{k}: {encoder[k]!r} vs {mine[k]!r}"
                                                     for k in mine if encoder.get(k) != mine[k]))
    if unet_schedule.T != schedule.T:
        raise UsageError(f"--from-denoiser {from_denoiser} was trained with T={unet_schedule.T}, "
                         f"the classifier with T={schedule.T}")
    return Classifier.from_denoiser(unet, num_classes)


def train_classifier_run(out, *, data: str = "digits", preset: str | None = None, schedule: str | None = None,
                         timesteps: int | None = None, training: dict | None = None, holdout: float = 0.1,
                         checkpoint_every: int = 1000, from_denoiser=None, device=None, progress: bool = True,
                         allow_data_change: bool = False, echo=_echo) -> ClassifierTrainer:
    """`python -m ddpm train-classifier`: train (or resume) the classifier run in `out`, then write
    loss_curve.png and the held-out accuracy against t (accuracy_vs_t.json / .png)."""
    out = check_output_dir(out, "--out", _WRITES)
    if not 0.0 < holdout < 1.0:
        raise UsageError(f"--holdout must lie in (0, 1), got {holdout}")
    ctx = init_distributed(device)
    try:
        ckpt = open_run(out, ctx)
        if ckpt is not None and ckpt.model_kind != "classifier":
            raise UsageError(f"--out {out} holds a {ckpt.model_kind} checkpoint, not a classifier run")
        shape_from = ckpt.unet_config if ckpt is not None and preset is None else model_config(preset or "digits8", None)
        dataset = load_dataset(data, shape_from.image_size, shape_from.in_channels, hflip=False)
        if dataset.labels is None:
            raise UsageError(f"--data {data} has no labels: a classifier needs classes")
        training = {**dict(training or {}), "label_dropout": 0.0}
        seed = training.get("seed", (ckpt.config.get("training", {}).get("seed", 0) if ckpt else 0))
        train_rows, held_rows = reference.holdout_split(len(dataset), holdout, seed)
        train_set, held_set = _subset(dataset, train_rows, "train split"), _subset(dataset, held_rows, "held out")
        if ckpt is None:
            try:
                train_config = TrainConfig(**training)
            except ValueError as err:
                raise UsageError(str(err)) from None
            config = model_config(preset or "digits8", dataset.num_classes)
            sched = reference.make_schedule(schedule or "linear", 1000 if timesteps is None else timesteps)
        else:
            wanted = None if preset is None else model_config(preset, dataset.num_classes)
            wanted_schedule = None
            if schedule is not None or timesteps is not None:
                wanted_schedule = reference.make_schedule(schedule or ckpt.schedule.kind,
                                                          ckpt.schedule.T if timesteps is None else timesteps)
            config, sched, train_config = check_resume(ckpt, unet_config=wanted, schedule=wanted_schedule,
                                                       training=training, data=train_set,
                                                       allow_data_change=allow_data_change)
        torch.manual_seed(train_config.seed)
        model = _initial_classifier(config, from_denoiser if ckpt is None else None, sched, dataset.num_classes)
        trainer = ClassifierTrainer(model, sched, train_config, train_set, ctx=ctx)
        resume(trainer, ckpt, echo)
        if ctx.is_main:
            n_params = sum(p.numel() for p in model.parameters())
            echo(f"data: {train_set.describe()}; {len(held_set)} held out\nmodel: noise-aware classifier "
                 f"({config.num_classes} classes), {n_params:,} parameters; {sched!r}; device {ctx.device}")
        elapsed = train_to(trainer, out, checkpoint_every=checkpoint_every, progress=progress)
        if ctx.is_main:
            save_loss_curve_or_warn(out / "loss_curve.png", trainer.history, title="classifier: cross-entropy")
            ema = Classifier(config).to(ctx.device)
            trainer.ema.copy_to(ema)
            result = {**accuracy_vs_t(ema, held_set, sched, seed=train_config.seed),
                      "num_classes": config.num_classes, "step": trainer.step, "weights": "ema"}
            (out / "accuracy_vs_t.json").write_text(json.dumps(result, indent=2))
            try:
                save_accuracy_curve(out / "accuracy_vs_t.png", result,
                                    f"held-out accuracy vs t (step {trainer.step}, EMA)")
            except ImportError:
                print("warning: accuracy_vs_t.png needs matplotlib", file=sys.stderr)
            echo(f"trained to step {trainer.step} in {elapsed:.1f} s; held-out accuracy "
                 f"t={result['t'][0]}: {result['accuracy'][0]:.3f}, t={result['t'][-1]}: "
                 f"{result['accuracy'][-1]:.3f}; wrote {out}")
        return trainer
    finally:
        shutdown_distributed(ctx)
