"""Training a DDPM: the simple objective (Ho et al. 2020, Alg. 1 / Eq. 14) with the usual extras.

One optimisation step s on a global batch of B images (split over ranks, see ddpm.distributed):

    indices  = EpochSampler(seed).next(B)                  data order (NumPy, per-epoch permutation)
    t        ~ U{0, ..., T-1}                               } reference.training_draws (host
    label_drop = U[0,1) < label_dropout -> y = null class   } NumPy, B words, one copy to the device)
    flip     = U[0,1) < 1/2 (data that allows flips)        torch.Generator(seed), global batch
    x_t, eps = kernels.q_sample(x0, t, ..., seed, samples=global batch positions,
                                stream=draws.stream)                  DDPM Eq. 4, the noise stream
    loss     = mean_i w_i mean_j (model(x_t, t, y) - target)^2        target eps / x0 / v,
               w = Min-SNR-gamma weights (Hang et al. 2023) or 1       reference.min_snr_weights
               or Improved DDPM's hybrid / vlb objectives (config.loss, config.variance;
               ddpm.losses = reference.variational_loss), t importance-sampled for "vlb" with
               timestep_sampling="importance" (reference.importance_draws, the same word of the
               noise stream; the history of L_t per t is in the checkpoint)

then AdamW with linear warmup (and optional cosine decay), gradient-norm clipping and an EMA of
the weights. bf16 autocast is used on CUDA (and, asked for, on CPUs with native bf16). A step whose loss or gradient norm is not finite
is skipped (no optimizer or EMA update), counted and logged; K in a row stop training with
`NonFiniteLossError`. Every piece of state (weights, EMA, optimizer, counters, the generator,
the data position, the global RNGs) goes into the checkpoint, so a resumed run on the CPU is
bit-for-bit the run that was never interrupted. `TrainConfig`, the set-up every trainer shares
(model, DDP, EMA, AdamW, data order, counters) and that state's save/restore live in
`ddpm.train_setup` (used by this Trainer, ClassifierTrainer and AutoencoderTrainer).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import kernels
import reference

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
from .data import ImageDataset
from .distributed import DistributedContext, all_gather_rows, all_reduce_mean, barrier, rank_slice
from .losses import VariationalTables, variational_loss
from .streaming import StreamingDataset
from .train_setup import TrainConfig, check_trainer_arguments, restore_training, setup_training, training_state

__all__ = ["TrainConfig", "Trainer", "StepResult", "NonFiniteLossError"]

log = logging.getLogger("ddpm.train")

def _mix_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed from (seed, step, rank): splitmix64 finalisers chained over the three."""
    z = 0
    for value in (seed, step, rank):
        z = (z + (value & 0xFFFFFFFFFFFFFFFF) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z >> 1


def _tensors(state: dict) -> dict:
    """NumPy arrays as tensors: checkpoints load with weights_only=True, which refuses ndarrays."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


class NonFiniteLossError(RuntimeError):
    """Raised after `max_consecutive_nonfinite` steps in a row had a NaN/inf loss or gradient."""


@dataclass
class StepResult:
    """What one call of `Trainer.train_step` did (loss is the global-batch mean)."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    skipped: bool


def _reference_schedule(schedule) -> reference.Schedule:
    if isinstance(schedule, (reference.Schedule, reference.VESchedule)):  # VE: a score model
        return schedule
    ref = getattr(schedule, "reference", None)
    if isinstance(ref, reference.Schedule):
        return ref
    raise TypeError(f"schedule must be a reference.Schedule or ddpm.TorchSchedule, got {type(schedule).__name__}")


class Trainer:
    """Trains `model` (a ddpm.UNet, or any module with `.config` and forward(x, t, y)) on `dataset`.

    model: moved to ctx.device and wrapped in DDP when world_size > 1; schedule: a
    reference.Schedule or ddpm.TorchSchedule; dataset: an ImageDataset (in memory) or a
    ddpm.streaming.StreamingDataset (decoded per item by DataLoader workers), images matching the model's
    (in_channels, image_size, image_size), labels when the model is class-conditional.
    """

    MODEL_KIND = "unet"  # what its checkpoints hold (ddpm.checkpoint.MODEL_KINDS)

    def __init__(self, model: nn.Module, schedule, config: TrainConfig, dataset: ImageDataset, *,
                 ctx: DistributedContext | None = None):
        check_trainer_arguments(model, config, dataset, (ImageDataset, StreamingDataset))
        self.config = config
        self.schedule = _reference_schedule(schedule)
        self.unet_config = getattr(model, "config", None)
        if not isinstance(self.unet_config, reference.MODEL_CONFIGS):  # a UNet or a DiT
            raise TypeError("model must carry its reference.UNetConfig (or DiTConfig) as `.config`")
        self._check_dataset(dataset)
        self._check_variance_channels()
        self.score_objective = isinstance(self.schedule, reference.VESchedule)
        if self.score_objective:
            self._check_score_objective()
        # model, DDP, EMA, AdamW, data order, generator, counters, history (ddpm.train_setup)
        setup_training(self, model, config, dataset, ctx)
        device = self.ctx.device

        # Schedule tables: the reference's float64 values, cast once (never recomputed here).
        # A VE schedule (the score view, reference/score.py): x_t = x0 + sigma_t z is q_sample with
        # the tables (1, sigma_t), and the eps-loss on z is DSM with lambda(sigma) = sigma^2.
        scales, noise_scales = ((np.ones(self.schedule.T), self.schedule.sigmas)
                                if self.score_objective else
                                (self.schedule.sqrt_alpha_bars, self.schedule.sqrt_one_minus_alpha_bars))
        self._sqrt_alpha_bar = torch.tensor(scales, dtype=torch.float32, device=device)
        self._sqrt_one_minus_alpha_bar = torch.tensor(noise_scales, dtype=torch.float32, device=device)
        self._min_snr_table = None
        if config.min_snr_gamma is not None:  # (T,) weights per timestep, computed once
            w = reference.min_snr_weights(np.arange(self.schedule.T), self.schedule, config.prediction,
                                          config.min_snr_gamma)
            self._min_snr_table = torch.tensor(w, dtype=torch.float32, device=device)
        self._vlb_tables = None if config.loss == "simple" else \
            VariationalTables(self.schedule, config.prediction, device=device, dtype=torch.float32)
        self.importance = None  # the L_t history of importance-sampled t (Improved DDPM Sec. 3.3)
        if config.timestep_sampling == "importance":
            self.importance = reference.LossSecondMomentHistory(self.schedule.T, config.importance_history)
        self._step_t = self._step_terms = None
        # streamed data: a DataLoader replays the sampler's order (ddpm.streaming)
        self.feed = dataset.feed(config.seed, config.batch_size, self.ctx) \
            if isinstance(dataset, StreamingDataset) else None

    # ------------------------------------------------------------------ validation
    def _check_dataset(self, dataset: ImageDataset) -> None:
        cfg = self.unet_config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if dataset.image_shape != expected:
            raise ValueError(f"dataset images have shape (C, H, W) = {dataset.image_shape}, the model "
                             f"expects {expected}; load the data with image_size={cfg.image_size}, "
                             f"channels={cfg.in_channels}")
        if cfg.num_classes is not None:
            if dataset.labels is None:
                raise ValueError(f"the model is class-conditional (num_classes={cfg.num_classes}) but "
                                 f"the dataset {dataset.source!r} has no labels")
            if dataset.num_classes > cfg.num_classes:
                raise ValueError(f"dataset has {dataset.num_classes} classes, the model only "
                                 f"num_classes={cfg.num_classes}")

    def _check_variance_channels(self) -> None:
        """A learned variance needs out_channels = 2 in_channels (the v half); a fixed one, equal."""
        cfg, variance = self.unet_config, self.config.variance
        want = 2 * cfg.in_channels if variance == "learned" else cfg.in_channels
        if cfg.out_channels != want:
            half = "a variance half (v, Improved DDPM Eq. 15)" if variance == "learned" else "no variance half"
            raise ValueError(f"config.variance={variance!r} needs {half}: a model with out_channels = {want}, "
                             f"got out_channels={cfg.out_channels} for in_channels={cfg.in_channels}")

    def _check_score_objective(self) -> None:
        """A VE score model (Song & Ermon 2019) trains by DSM with lambda(sigma) = sigma^2 on a
        z-predicting net: the plain eps objective, none of the VP-only options."""
        cfg = self.config
        wrong = {name: value for name, value, plain in (
            ("prediction", cfg.prediction, "epsilon"), ("loss", cfg.loss, "simple"),
            ("variance", cfg.variance, "fixed_small"), ("min_snr_gamma", cfg.min_snr_gamma, None),
            ("timestep_sampling", cfg.timestep_sampling, "uniform")) if value != plain}
        if wrong:
            raise ValueError("a VE schedule trains a score model by denoising score matching "
                             "(lambda = sigma^2, the net predicts z); it takes none of "
                             + ", ".join(f"{k}={v!r}" for k, v in wrong.items()))

    def check_batch(self, x0: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise TypeError/ValueError unless (x0, y) fit the model (shape, dtype, class range).

        The class range is checked for CPU labels only (on a GPU it would synchronise every
        step); the trainer's own labels come from a validated dataset.
        """
        cfg = self.unet_config
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            raise TypeError(f"x0 must be a float tensor, got {getattr(x0, 'dtype', type(x0).__name__)}")
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x0.ndim != 4 or tuple(x0.shape[1:]) != expected:
            raise ValueError(f"x0 must have shape (N, {', '.join(map(str, expected))}), got {tuple(x0.shape)}")
        if cfg.num_classes is None:
            if y is not None:
                raise ValueError("y (class labels) given but the model is unconditional (num_classes=None)")
            return
        if y is None:
            raise ValueError(f"the model is class-conditional (num_classes={cfg.num_classes}); y is required")
        if y.dtype != torch.int64 or y.shape != (x0.shape[0],):
            raise ValueError(f"y must be int64 of shape ({x0.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if y.device.type == "cpu":
            reference.check_class_labels(y, cfg.num_classes, "y", allow_null=True)

    # ------------------------------------------------------------------ the objective
    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of reference.training_target: eps, x0, or
        v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
        prediction = self.config.prediction
        if prediction == "epsilon":
            return eps
        if prediction == "sample":
            return x0
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return (self._sqrt_alpha_bar[t].view(shape) * eps
                - self._sqrt_one_minus_alpha_bar[t].view(shape) * x0)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """(N,) float32 Min-SNR-gamma weights from reference.min_snr_weights, the importance
        weights 1 / (T p_t) once the L_t history is full (reference.importance_draws), or None."""
        if self.importance is not None:
            p = self.importance.probabilities()
            if p is None:
                return None
            return torch.tensor(1.0 / (self.schedule.T * p), dtype=torch.float32, device=t.device)[t]
        if self._min_snr_table is None:
            return None
        return self._min_snr_table[t]

    def compute_loss(self, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                     samples: torch.Tensor, step: int) -> torch.Tensor:
        """The weighted MSE of this rank's batch (a scalar with grad).

        x0: (n, C, H, W) float32 on the device; t: (n,) int64; y: (n,) int64 or None;
        samples: (n,) the global batch positions keying the noise stream; step: its stream offset.
        """
        self.check_batch(x0, y)
        x_t, eps = kernels.q_sample(x0, t, self._sqrt_alpha_bar, self._sqrt_one_minus_alpha_bar,
                                    noise=None, seed=self.config.seed, samples=samples,
                                    stream=reference.train_stream(step))
        target = self.target(x0, eps, t)
        # Dropout draws from the global torch RNG: seed it per (seed, step, rank) for this forward
        # only, so ranks draw different masks (they share the global seed) and a resumed run
        # draws the same ones; the caller's RNG state is restored afterwards.
        devices = [x_t.device] if x_t.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_mix_seed(self.config.seed, step, self.ctx.rank))
            with torch.autocast(device_type=x_t.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                out = self.ddp_model(x_t, t, y)
        weights = self.loss_weights(t)
        if self._vlb_tables is not None:  # Improved DDPM: the hybrid or vlb objective
            cfg = self.config
            loss, self._step_terms = variational_loss(out.float(), x0, x_t, target, t, self._vlb_tables,
                                                      loss=cfg.loss, variance=cfg.variance,
                                                      vlb_weight=cfg.vlb_weight, weights=weights)
            return loss
        per_sample = (out.float() - target).pow(2).flatten(1).mean(dim=1)
        return per_sample.mean() if weights is None else (weights * per_sample).mean()

    # ------------------------------------------------------------------ one step
    def _draw_batch(self):
        """Global-batch draws (identical on every rank), then this rank's slice, on the device."""
        cfg, B = self.config, self.config.batch_size
        start = self.sampler.position
        indices = torch.from_numpy(self.sampler.next(B))
        # The reference decides t and the dropped labels from (seed, global batch position, step)
        # only, so every rank and a resumed run draw the same; B words on the host, then one copy.
        draws = reference.training_draws(cfg.seed, np.arange(B), self.step, self.schedule.T, cfg.label_dropout)
        t, label_drop = torch.from_numpy(draws.t), torch.from_numpy(draws.label_drop)
        if self.importance is not None:  # same word of the stream, read through p_t once warmed up
            t = torch.from_numpy(reference.importance_draws(cfg.seed, np.arange(B), self.step,
                                                            self.importance.probabilities(), self.schedule.T).t)
        self._step_t = t
        flip = torch.rand(B, generator=self.generator) < 0.5
        mine = rank_slice(B, self.ctx)
        device = self.ctx.device
        idx = indices[mine]
        x0 = self.dataset.images[idx] if self.feed is None else self.feed.take(start, idx.numpy())
        if self.dataset.hflip:
            x0 = torch.where(flip[mine].view(-1, 1, 1, 1), x0.flip(-1), x0)
        y = None
        if self.unet_config.num_classes is not None:
            y = torch.where(label_drop[mine], self.unet_config.num_classes, self.dataset.labels[idx])
            y = y.to(device)
        samples = torch.arange(B, dtype=torch.int64)[mine].to(device)
        return x0.to(device, non_blocking=True), t[mine].to(device), y, samples

    def _grad_norm(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.grad_clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if not params:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))

    def train_step(self) -> StepResult:
        """One optimisation step on the next global batch (skipped if non-finite)."""
        self.model.train()
        step = self.step
        x0, t, y, samples = self._draw_batch()
        loss = self.compute_loss(x0, t, y, samples, step)
        loss.backward()  # always, so DDP's all-reduce runs on every rank even for a NaN loss
        grad_norm = float(self._grad_norm())
        mean_loss = float(all_reduce_mean(loss, self.ctx))
        lr = self.config.lr_at(self.optimizer_steps)
        skipped = not (math.isfinite(mean_loss) and math.isfinite(grad_norm))
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.consecutive_nonfinite += 1
            log.warning("step %d skipped: non-finite loss %s or gradient norm %s (%d in a row, %d total)",
                        step, mean_loss, grad_norm, self.consecutive_nonfinite, self.skipped_steps)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.update(self.model)
            self._record_importance()
            self.optimizer_steps += 1
            self.consecutive_nonfinite = 0
        self.step += 1
        for key, value in (("step", step), ("loss", mean_loss), ("grad_norm", grad_norm), ("lr", lr)):
            self.history[key].append(value)
        if self.consecutive_nonfinite >= self.config.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"training stopped at step {step}: {self.consecutive_nonfinite} consecutive steps had a "
                f"non-finite loss or gradient (last loss {mean_loss}, gradient norm {grad_norm}); "
                f"lower the learning rate (now {lr:g}), keep grad_clip on, or check the data for NaN")
        return StepResult(step, mean_loss, grad_norm, lr, skipped)

    def _record_importance(self) -> None:
        """Add this step's L_t of the whole global batch to the history (every rank alike)."""
        if self.importance is None:
            return
        world = self.ctx.world_size
        counts = [self.config.batch_size // world] * world
        terms = all_gather_rows(self._step_terms.detach().float(), counts, self.ctx)
        self.importance.update(self._step_t.numpy(), terms.cpu().double().numpy())

    # ------------------------------------------------------------------ the loop
    def fit(self, steps: int | None = None, *, run_dir=None, checkpoint_every: int | None = None,
            keep_last: int | None = 3, progress: bool = True, callback=None) -> list[StepResult]:
        """Train until `self.step == steps` (default config.steps), saving to run_dir every
        `checkpoint_every` steps and at the end. callback(trainer, result) after every step."""
        from tqdm.auto import tqdm

        target = self.config.steps if steps is None else int(steps)
        if target < self.step:
            raise ValueError(f"steps={target} is behind the trainer, which is at step {self.step}")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive int or None, got {checkpoint_every!r}")
        results = []
        bar = tqdm(total=target, initial=self.step, disable=not (progress and self.ctx.is_main),
                   desc="train", unit="step", dynamic_ncols=True)
        start, start_step = time.perf_counter(), self.step
        try:
            while self.step < target:
                result = self.train_step()
                results.append(result)
                bar.set_postfix(loss=f"{result.loss:.4f}", skipped=self.skipped_steps, refresh=False)
                bar.update(1)
                if callback is not None:
                    callback(self, result)
                if run_dir is not None and checkpoint_every and self.step % checkpoint_every == 0 \
                        and self.step < target:
                    self.save(run_dir, keep_last=keep_last)
        finally:
            bar.close()
            if self.feed is not None:  # stop the DataLoader workers (restarted where the next call begins)
                self.feed.close()
        if run_dir is not None:
            self.save(run_dir, keep_last=keep_last)
        elapsed = time.perf_counter() - start
        if self.ctx.is_main and self.step > start_step:
            log.info("trained %d steps in %.1f s (%.2f step/s)", self.step - start_step, elapsed,
                     (self.step - start_step) / max(elapsed, 1e-9))
        return results

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict:
        """The checkpoint's trainer state (ddpm.train_setup.training_state) and the L_t history."""
        return {**training_state(self),
                "importance": None if self.importance is None else _tensors(self.importance.state_dict())}

    def save(self, run_dir, keep_last: int | None = 3) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only; every rank waits for it)."""
        path = None
        if self.ctx.is_main:
            cfg = checkpoint_config(self.unet_config, self.schedule, training=self.config.to_dict(),
                                    data={"source": self.dataset.source, "size": len(self.dataset),
                                          "class_names": self.dataset.class_names,
                                          "fingerprint": self.dataset.fingerprint(),
                                          **({} if self.feed is None else {"loader": self.dataset.options.record()})},
                                    step=self.step, model=self.MODEL_KIND)
            path = save_checkpoint(run_dir, self.step, model_state=self.model.state_dict(),
                                   ema_state=self.ema.state_dict(), config=cfg,
                                   trainer_state=self.trainer_state(), keep_last=keep_last)
        barrier(self.ctx)
        return path

    def load(self, checkpoint: Checkpoint | str | Path) -> None:
        """Restore everything from a checkpoint (or a run/checkpoint directory) of this model."""
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, map_location="cpu")
        if checkpoint.model_kind != self.MODEL_KIND:
            raise CheckpointError(f"checkpoint {checkpoint.path} holds a {checkpoint.model_kind}, this "
                                  f"trainer trains a {self.MODEL_KIND}")
        checkpoint.check_compatible(self.unet_config, self.schedule)
        state = checkpoint.trainer_state
        if state is None:
            raise CheckpointError(f"checkpoint {checkpoint.path} was loaded without its trainer state")
        if state.get("world_size", 1) != self.ctx.world_size:
            log.info("resuming a %d-process run on %d processes (same global batch, same draws)",
                     state.get("world_size", 1), self.ctx.world_size)
        restore_training(self, checkpoint.model_state, checkpoint.ema_state, state)
        if self.importance is not None:
            if state.get("importance") is None:
                raise CheckpointError(f"checkpoint {checkpoint.path} has no L_t history for "
                                      f"timestep_sampling='importance'")
            self.importance.load_state_dict({k: v.numpy() if isinstance(v, torch.Tensor) else v
                                             for k, v in state["importance"].items()})
