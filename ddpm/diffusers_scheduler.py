"""The diffusers `DDPMScheduler` config of a schedule and a model's variance, both ways.

A learned-variance model (Improved DDPM: out_channels = 2 in_channels, the second half v of
Eq. 15) is a diffusers `UNet2DModel` with that many output channels plus a scheduler with
`variance_type="learned_range"`, which interpolates log beta_t and log beta_tilde_t with
frac = (v + 1) / 2 exactly as `reference.learned_log_variance` does. Fixed variances map to
"fixed_small" (beta_tilde) and "fixed_large" (beta).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import reference

__all__ = ["VARIANCE_TYPES", "scheduler_config", "variance_from_scheduler_config", "save_scheduler_config",
           "schedule_from_scheduler_config"]

# reference / TrainConfig variance -> diffusers DDPMScheduler variance_type
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned": "learned_range"}
SCHEDULER_CONFIG_NAME = "scheduler_config.json"


def scheduler_config(schedule: reference.Schedule, *, variance: str = "fixed_small",
                     prediction: str = "epsilon") -> dict:
    """The DDPMScheduler config (`DDPMScheduler.from_config(...)`) of `schedule` and `variance`.

    The betas go as `trained_betas` (the reference's float64 values; diffusers keeps them as
    float32), so every schedule kind, respaced ones included, is the same table there.
    """
    schedule = reference.schedules.check_schedule(schedule)
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"variance must be one of {tuple(VARIANCE_TYPES)}, got {variance!r}")
    if prediction not in reference.PREDICTIONS:
        raise ValueError(f"prediction must be one of {reference.PREDICTIONS}, got {prediction!r}")
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": schedule.T,
        "trained_betas": [float(b) for b in schedule.betas],
        "variance_type": VARIANCE_TYPES[variance],
        "prediction_type": prediction,
        "clip_sample": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }


def variance_from_scheduler_config(config: dict) -> str:
    """The reference variance of a DDPMScheduler config's `variance_type` (default fixed_small)."""
    variance_type = config.get("variance_type", "fixed_small")
    for ours, theirs in VARIANCE_TYPES.items():
        if theirs == variance_type:
            return ours
    raise ValueError(f"scheduler config variance_type={variance_type!r} is not one of "
                     f"{tuple(VARIANCE_TYPES.values())} (the ones this library samples)")


def save_scheduler_config(path, schedule: reference.Schedule, *, variance: str = "fixed_small",
                          prediction: str = "epsilon") -> Path:
    """Write `scheduler_config.json` into the directory `path` (diffusers' `save_pretrained` name)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out = path / SCHEDULER_CONFIG_NAME
    out.write_text(json.dumps(scheduler_config(schedule, variance=variance, prediction=prediction), indent=2))
    return out


def schedule_from_scheduler_config(config: dict) -> reference.Schedule:
    """A reference Schedule from a config with `trained_betas` (as `scheduler_config` writes)."""
    betas = config.get("trained_betas")
    if betas is None:
        raise ValueError("scheduler config has no trained_betas; build the schedule with reference.make_schedule")
    return reference.Schedule.from_betas(np.asarray(betas, dtype=np.float64))
