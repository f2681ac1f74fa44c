"""Full sampling loops for any model callable, built from the single steps of `process`.

A model is a callable `model(x_t, t) -> output` with x_t (N, ...) and t an (N,) int64 array;
`guided(model, y, null_class, guidance_scale)` makes one from a class-conditional
`model(x_t, t, y)`. All Gaussian numbers come from the noise stream (DESIGN contract 2):
x_T uses stream SAMPLER_INIT_STREAM and step k (0-based) uses stream k + 1, for the global
sample indices `samples`, so sample i is the same whatever the batch it is drawn in.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._validate import check_eta, check_float_array, check_samples
from .noise import SAMPLER_INIT_STREAM, normal, sampler_step_stream
from .process import (
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    dpm_solver_pp_2m_step,
)
from .schedules import Schedule, check_schedule, timestep_subset

__all__ = ["guided", "sample_ddpm", "sample_ddim", "sample_dpm_solver_pp", "initial_noise"]

Model = Callable[[np.ndarray, np.ndarray], np.ndarray]


def guided(model, y, null_class: int, guidance_scale: float) -> Model:
    """Classifier-free guidance (Ho & Salimans 2022): out = u + w (c - u) for labels y."""
    y = np.asarray(y, dtype=np.int64)

    def fn(x, t):
        if guidance_scale == 1.0:
            return model(x, t, y)
        cond = model(x, t, y)
        uncond = model(x, t, np.full_like(y, null_class))
        return classifier_free_guidance(cond, uncond, guidance_scale)

    return fn


def _start(model, shape, schedule, seed, samples, x_T, dtype):
    """Validate a sampling loop's arguments; returns (shape, samples, x_T)."""
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t), got {type(model).__name__}")
    check_schedule(schedule)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a tuple of ints (N, ...), got {shape!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (N, ...) with every size >= 1, got {shape}")
    s = check_samples(samples, shape[0])
    if x_T is None:
        return shape, s, initial_noise(shape, seed, s, dtype)
    x_T = check_float_array(x_T, "x_T")
    if x_T.shape != shape:
        raise ValueError(f"x_T must have shape {shape}, got {x_T.shape}")
    return shape, s, x_T.astype(dtype)


def initial_noise(shape, seed: int, samples=None, dtype=np.float64) -> np.ndarray:
    """x_T ~ N(0, I) from the noise stream (stream SAMPLER_INIT_STREAM)."""
    shape = tuple(int(d) for d in shape)
    s = check_samples(samples, shape[0])
    return normal(seed, s, SAMPLER_INIT_STREAM, shape[1:]).astype(dtype)


def _step_noise(seed, s, step, shape, dtype):
    return normal(seed, s, sampler_step_stream(step), shape[1:]).astype(dtype)


def sample_ddpm(model: Model, shape, schedule: Schedule, seed: int, samples=None, *,
                x_T=None, num_steps: int | None = None, prediction: str = "epsilon",
                variance: str = "fixed_small", clip=None, dtype=np.float64, callback=None):
    """Ancestral sampling, DDPM Alg. 2; with num_steps < T on the respaced schedule (Improved DDPM Sec. 4).

    Returns x_0 of the given shape. callback(step, t, x) is called after every step.
    """
    shape, s, x = _start(model, shape, schedule, seed, samples, x_T, dtype)
    if num_steps is None or num_steps == schedule.T:
        timesteps = np.arange(schedule.T - 1, -1, -1, dtype=np.int64)
        steps_schedule = schedule
    else:
        timesteps = timestep_subset(schedule.T, num_steps, "leading")
        steps_schedule = schedule.respace(timesteps)
    for k, t in enumerate(timesteps):
        k_resp = len(timesteps) - 1 - k  # index of t in the (ascending) respaced schedule
        t_model = np.full(shape[0], t, dtype=np.int64)
        out = model(x, t_model)
        noise = _step_noise(seed, s, k, shape, dtype) if k_resp > 0 else None
        x = ddpm_step(x, k_resp, out, steps_schedule, noise, prediction, variance, clip).astype(dtype, copy=False)
        if callback is not None:
            callback(k, int(t), x)
    return x


def sample_ddim(model: Model, shape, schedule: Schedule, seed: int, samples=None, *,
                num_steps: int = 50, eta: float = 0.0, spacing: str = "leading", x_T=None,
                prediction: str = "epsilon", clip=None, dtype=np.float64, callback=None):
    """DDIM sampling over a descending timestep subset (Song et al. 2021, Eq. 12)."""
    eta = check_eta(eta)
    shape, s, x = _start(model, shape, schedule, seed, samples, x_T, dtype)
    timesteps = timestep_subset(schedule.T, num_steps, spacing)
    for k, t in enumerate(timesteps):
        t_prev = int(timesteps[k + 1]) if k + 1 < len(timesteps) else -1
        out = model(x, np.full(shape[0], t, dtype=np.int64))
        noise = _step_noise(seed, s, k, shape, dtype) if eta > 0 else None
        x = ddim_step(x, int(t), t_prev, out, schedule, eta, noise, prediction, clip).astype(dtype, copy=False)
        if callback is not None:
            callback(k, int(t), x)
    return x


def sample_dpm_solver_pp(model: Model, shape, schedule: Schedule, seed: int, samples=None, *,
                         num_steps: int = 20, spacing: str = "trailing", x_T=None,
                         prediction: str = "epsilon", clip=None, dtype=np.float64, callback=None):
    """DPM-Solver++(2M) sampling (Lu et al. 2022, Alg. 2), first order at the first and last step.

    Default spacing "trailing": with "leading"/"linspace" the last second-order step goes into
    t = 0 over a log-SNR step ~10x the previous one and its extrapolation costs quality."""
    shape, s, x = _start(model, shape, schedule, seed, samples, x_T, dtype)
    timesteps = timestep_subset(schedule.T, num_steps, spacing)
    history = None
    for k, t in enumerate(timesteps):
        t_prev = int(timesteps[k + 1]) if k + 1 < len(timesteps) else -1
        out = model(x, np.full(shape[0], t, dtype=np.int64))
        x, history = dpm_solver_pp_2m_step(x, int(t), t_prev, out, schedule, history, prediction, clip)
        x = x.astype(dtype, copy=False)  # a float64 model output would promote a float32 run
        if callback is not None:
            callback(k, int(t), x)
    return x
