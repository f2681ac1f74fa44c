"""A generic NumPy training loop for diffusion models (DDPM Alg. 1), for the MLP and the UNet alike.

Model protocol (what `train_step` and `train` use; `reference.MLP` and `reference.UNet` follow it):

    model.params            flat dict name -> float array (float64 by default), updated in place
    model.grads             the same keys and shapes, overwritten by every `backward`
    model.forward(x_t, t, y=None, *, train=False) -> output   x_t (N, ...), t (N,) int64 in
                            [0, T), y (N,) int64 labels or None; caches what backward needs;
                            train=True turns on training-only behaviour (the UNet's dropout)
    model.dropout_mask_shapes() (models with dropout: the UNet) -> [(name, per-sample shape)],
                            and forward(..., dropout_masks={name: (N, *shape) bool}) takes them
    model.backward(dout) -> dx               dout = dL/d output (N, ...); fills model.grads
    model.num_classes       (conditional models only) labels 0..num_classes-1; the null class
                            of classifier-free guidance is the id `num_classes`

Randomness. Everything random in step `step` is a function of (seed, global sample index i,
step) through the project's noise stream (DESIGN contract 2), so it does not depend on the
batch composition or the number of processes, and a torch implementation can match it. With
stream s = TRAIN_STREAM_BASE + step and counters (j, 0, i, s):

    noise element j       Box-Muller of words 0 and 1 of counter j    (= reference.normal)
    timestep t_i          (word 2 of counter j=0) * T >> 32            (uniform on [0, T);
                          Lemire's multiply-shift, bias <= T / 2**32)
    label dropout         uniform(word 3 of counter j=0) < label_dropout   (label -> null class)
    dropout masks         uniform(word 0 of counter j) >= p, kept; j = D + o_b + k for element k
                          of block b's mask, D = elements of one x0 sample, o_b = the sizes of
                          the blocks before b (forward order): counters the noise never uses

Words 2 and 3 are unused by the normals, so these draws are independent of the noise.
`training_draws` is the one function that makes t, the label-dropout mask and the stream id of a
step: this loop and ddpm.Trainer both call it, so the NumPy and torch trainers draw alike. In
`train`, the rows of step `step` are `numpy.random.default_rng([seed, step]).integers(0, len(x0),
batch_size)` (with replacement), so a resumed run draws the same batches.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ._validate import check_float_array, check_samples
from .losses import (min_snr_weights, training_target, variational_loss, variational_loss_backward,
                     weighted_mse, weighted_mse_backward)
from .noise import TRAIN_STREAM_BASE, normal, philox_words, uniform, uint_to_uniform_float
from .optim import EMA, Adam, clip_grad_norm, global_norm
from .process import PREDICTIONS, q_sample
from .schedules import Schedule, check_schedule

__all__ = ["TrainingDraws", "training_draws", "ImportanceDraws", "importance_draws", "dropout_masks", "train_step", "train", "train_stream"]


def train_stream(step: int) -> int:
    """The noise-stream id of optimisation step `step` (0-based): TRAIN_STREAM_BASE + step."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if not 0 <= step < 2**32 - TRAIN_STREAM_BASE:
        raise ValueError(f"step must lie in [0, {2**32 - TRAIN_STREAM_BASE}), got {step}")
    return TRAIN_STREAM_BASE + int(step)


class TrainingDraws(NamedTuple):
    """The draws of one training step for the rows `samples` (module docstring).

    t: (N,) int64 timesteps in [0, T); label_drop: (N,) bool, True where the label becomes the
    null class; stream: the noise-stream id of the step, so eps = normal(seed, samples, stream,
    sample_shape) (the reference computes it in NumPy, ddpm.Trainer inside kernels.q_sample).
    """

    t: np.ndarray
    label_drop: np.ndarray
    stream: int


def training_draws(seed: int, samples, step: int, T: int, label_dropout: float = 0.0) -> TrainingDraws:
    """t and the label-dropout mask of training step `step` from word 2 and 3 of counter j = 0.

    One function for the reference loop and ddpm.Trainer: both draw the same t and dropped labels
    for the same (seed, global sample index, step), whatever the batch split over processes.
    """
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float, np.integer, np.floating)):
        raise TypeError(f"label_dropout must be a number, got {type(label_dropout).__name__}")
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1], got {label_dropout}")
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    stream = train_stream(step)
    words = philox_words(seed, np.asarray(samples), stream, 1)[:, 0, :]  # counter j = 0: (N, 4)
    t = ((words[:, 2].astype(np.uint64) * np.uint64(T)) >> np.uint64(32)).astype(np.int64)  # Lemire
    label_drop = uint_to_uniform_float(words[:, 3]) < np.float32(label_dropout)
    return TrainingDraws(t, label_drop, stream)


class ImportanceDraws(NamedTuple):
    """t (N,) int64 and weights (N,) float64 = 1 / (T p_t) (ones while t is uniform)."""

    t: np.ndarray
    weights: np.ndarray


def importance_draws(seed: int, samples, step: int, probabilities: np.ndarray | None, T: int) -> ImportanceDraws:
    """t of step `step` drawn from `probabilities` (Improved DDPM Sec. 3.3, reference.importance).

    u = (word 2 of counter j = 0 of the step's stream) / 2^32, exact in float64, and t = the first
    index whose cumulative probability exceeds u (inverse CDF); weights 1 / (T p_t) make
    mean_i w_i T L_t unbiased for L_vlb. probabilities None (the history is not full): uniform t,
    exactly the t of `training_draws` (Lemire's multiply-shift of the same word), weights 1.
    """
    samples = np.asarray(samples)
    if probabilities is None:
        t = training_draws(seed, samples, step, T).t
        return ImportanceDraws(t, np.ones(t.shape))
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (T,) or np.any(p <= 0) or not np.isclose(p.sum(), 1.0, rtol=1e-12, atol=0):
        raise ValueError(f"probabilities must be ({T},) positive numbers summing to 1")
    word = philox_words(seed, samples, train_stream(step), 1)[:, 0, 2]
    u = word.astype(np.float64) / 2.0**32
    cdf = np.cumsum(p)
    t = np.minimum(np.searchsorted(cdf, u, side="right"), T - 1).astype(np.int64)
    return ImportanceDraws(t, 1.0 / (T * p[t]))


def dropout_masks(model, seed: int, samples, step: int, offset: int) -> dict | None:
    """The dropout masks of one training step from the noise stream (module docstring), or None.

    None when the model has no dropout (no `dropout_mask_shapes`, or config.dropout == 0).
    offset: D, the elements of one x0 sample (the counters j < D belong to the noise).
    """
    p = getattr(getattr(model, "config", None), "dropout", 0.0)
    if not p or not hasattr(model, "dropout_mask_shapes"):
        return None
    shapes = model.dropout_mask_shapes()
    sizes = [int(np.prod(shape)) for _, shape in shapes]
    u = uniform(seed, samples, train_stream(step), (offset + sum(sizes),))[:, offset:]
    masks, start = {}, 0
    for (name, shape), size in zip(shapes, sizes):
        masks[name] = (u[:, start:start + size] >= np.float32(p)).reshape((len(samples),) + tuple(shape))
        start += size
    return masks


def train_step(model, optimizer: Adam, x0: np.ndarray, schedule: Schedule, seed: int, step: int,
               y=None, *, samples=None, prediction: str = "epsilon", min_snr_gamma: float | None = None,
               label_dropout: float = 0.0, ema: EMA | None = None,
               grad_clip: float | None = None, loss: str = "simple", variance: str = "fixed_small",
               vlb_weight: float = 0.001, history=None) -> dict:
    """One optimisation step of DDPM Alg. 1 (Ho et al. 2020) on the batch x0 (N, ...).

    t ~ U{0..T-1}, eps ~ N(0, I) (from the noise stream), x_t = q_sample(x0, t, eps);
    loss = mean_i w_i mean_j (model(x_t, t, y)_ij - target_ij)^2 with target eps / x0 / v
    (`prediction`) and w_i the Min-SNR-gamma weights (Hang et al. 2023) when min_snr_gamma is
    set, else 1 (DDPM's "simple" loss, Eq. 14). Then backward, optional gradient-norm clipping,
    the optimiser step and the EMA update.

    y: (N,) int labels for a conditional model (dropped to the null class with probability
    label_dropout). samples: the (N,) global indices of the rows (default arange(N)).
    loss "hybrid" / "vlb" with variance "learned" (or "vlb" with a fixed one): Improved DDPM's
    objectives (`variational_loss`); with loss "vlb" and a `history`
    (reference.LossSecondMomentHistory), t is importance-sampled (`importance_draws`) and the
    step's L_t are recorded in it.
    Returns {"loss": float, "grad_norm": float (before clipping), "terms": (N,) L_t in bits/dim}.
    """
    check_schedule(schedule)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    x0 = check_float_array(x0, "x0", min_ndim=2)
    n = x0.shape[0]
    samples = check_samples(samples, n)
    num_classes = getattr(model, "num_classes", None)
    if y is not None:
        if num_classes is None:
            raise ValueError("y was given but the model has no num_classes (unconditional)")
        y = np.asarray(y)
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
            raise TypeError(f"y must be an integer array of shape ({n},), got {y.dtype} {y.shape}")
    if label_dropout and num_classes is None:
        raise ValueError("label_dropout needs a conditional model (num_classes set)")
    if min_snr_gamma is not None and loss != "simple":
        raise ValueError(f"min_snr_gamma weights the simple loss only, got loss={loss!r}")

    t, label_drop, stream = training_draws(seed, samples, step, schedule.T, label_dropout)
    importance = None
    if history is not None and loss == "vlb":
        t, importance = importance_draws(seed, samples, step, history.probabilities(), schedule.T)
    noise = normal(seed, samples, stream, x0.shape[1:]).astype(x0.dtype)
    if num_classes is not None:
        labels = np.full(n, num_classes, dtype=np.int64) if y is None else y.astype(np.int64)
        y = np.where(label_drop, num_classes, labels)
    x_t = q_sample(x0, t, noise, schedule)
    target = training_target(x0, noise, t, schedule, prediction)
    weights = None if min_snr_gamma is None else min_snr_weights(t, schedule, prediction, min_snr_gamma)

    masks = dropout_masks(model, seed, samples, step, int(np.prod(x0.shape[1:])))
    extra = {} if masks is None else {"dropout_masks": masks}
    output = model.forward(x_t, t, y, train=True, **extra)
    if loss == "simple" and variance != "learned":
        value, cache = weighted_mse(output, target, weights)
        terms = np.zeros(n)
        model.backward(weighted_mse_backward(cache))
    else:
        value, terms, cache = variational_loss(
            output, x0, x_t, target, t, schedule, loss=loss, prediction=prediction, variance=variance,
            vlb_weight=vlb_weight, weights=importance if loss == "vlb" else weights)
        model.backward(variational_loss_backward(cache))
        if history is not None and loss == "vlb":
            history.update(t, terms)
    grad_norm = clip_grad_norm(model.grads, grad_clip) if grad_clip is not None else global_norm(model.grads)
    optimizer.step(model.grads)
    if ema is not None:
        ema.update(model.params)
    return {"loss": value, "grad_norm": grad_norm, "terms": terms}


def train(model, x0: np.ndarray, schedule: Schedule, *, steps: int, batch_size: int, seed: int = 0,
          y=None, optimizer: Adam | None = None, ema: EMA | None = None, start_step: int = 0,
          prediction: str = "epsilon", min_snr_gamma: float | None = None,
          label_dropout: float = 0.0, grad_clip: float | None = None,
          callback: Callable[[int, dict], None] | None = None, loss: str = "simple",
          variance: str = "fixed_small", vlb_weight: float = 0.001, importance_history=None) -> dict:
    """Run `steps` optimisation steps (start_step, ..., start_step + steps - 1) on the dataset x0.

    x0: (M, ...) float data; y: (M,) int labels or None. optimizer defaults to Adam(lr=1e-3).
    callback(step, record) is called after every step. loss, variance, vlb_weight,
    importance_history: Improved DDPM's objectives and importance-sampled t (`train_step`'s
    loss, variance, vlb_weight and history). Returns {"loss":
    [...], "grad_norm": [...]} with one entry per step, plus the optimizer under "optimizer".
    """
    x0 = check_float_array(x0, "x0", min_ndim=2)
    for name, value in (("steps", steps), ("batch_size", batch_size), ("start_step", start_step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if steps < 0 or batch_size < 1 or start_step < 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1, start_step >= 0; got {steps}, {batch_size}, {start_step}")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x0.shape[0],):
            raise ValueError(f"y must have shape ({x0.shape[0]},), got {y.shape}")
    optimizer = Adam(model.params, lr=1e-3) if optimizer is None else optimizer
    history: dict = {"loss": [], "grad_norm": [], "optimizer": optimizer}
    for step in range(start_step, start_step + steps):
        rows = np.random.default_rng([seed, step]).integers(0, x0.shape[0], batch_size)
        record = train_step(model, optimizer, x0[rows], schedule, seed, step,
                            None if y is None else y[rows], prediction=prediction,
                            min_snr_gamma=min_snr_gamma, label_dropout=label_dropout,
                            ema=ema, grad_clip=grad_clip, loss=loss, variance=variance,
                            vlb_weight=vlb_weight, history=importance_history)
        history["loss"].append(record["loss"])
        history["grad_norm"].append(record["grad_norm"])
        if callback is not None:
            callback(step, record)
    return history
