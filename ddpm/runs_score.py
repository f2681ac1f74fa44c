"""The score view in the CLI: the VE levels of `train --objective score` and the options of
`sample --sampler langevin | annealed_langevin | pc` (issue 13). `ddpm.runs` calls these; every
user error is a `UsageError` (exit status 2) raised before any work.
"""

from __future__ import annotations

import reference

from .preflight import UsageError

__all__ = ["OBJECTIVES", "SCORE_SAMPLE_FLAGS", "score_schedule", "check_score_sampling", "sampler_for"]

OBJECTIVES = ("diffusion", "score")
# sample_run keyword -> CLI flag, for the messages
SCORE_SAMPLE_FLAGS = {"step_size": "--step-size", "steps_per_level": "--steps-per-level", "snr": "--snr",
                      "corrector_steps": "--corrector-steps", "predictor": "--predictor",
                      "level": "--level", "denoise": "--no-denoise", "snr_norms": "--snr-norms"}


def score_schedule(objective: str | None, levels: dict, schedule_kind: str | None, timesteps: int | None):
    """The VE schedule of `--objective score` (`reference.ve_schedule` with --sigma-max,
    --sigma-min, --levels; defaults 10, 0.01, 100), or None for the diffusion objective."""
    given = {k: v for k, v in levels.items() if v is not None}
    if objective != "score":
        if given:
            raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to "
                             "--objective score only")
        return None
    if schedule_kind is not None or timesteps is not None:
        raise UsageError("--schedule/--timesteps set the VP (DDPM) process; --objective score uses "
                         "--sigma-max, --sigma-min and --levels")
    args = {"sigma_max": given.get("sigma_max", 10.0), "sigma_min": given.get("sigma_min", 0.01),
            "num_levels": given.get("levels", 100)}
    try:
        return reference.ve_schedule(**args)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--sigma-max/--sigma-min/--levels: {err}") from None


def sampler_for(schedule, sampler: str) -> str:
    """The sampler of the pictures at the end of training: pc for a score model."""
    return "pc" if isinstance(schedule, reference.VESchedule) and sampler not in reference.SCORE_SAMPLERS else sampler


def check_score_sampling(schedule, sampler: str, steps: int | None, options: dict):
    """Check --sampler and the score options against the checkpoint's process; returns the plan
    (so a bad value is one line naming its flag before any sampling)."""
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(schedule, reference.VESchedule) and sampler not in reference.SCORE_SAMPLERS:
        raise UsageError(f"--sampler {sampler}: the checkpoint is a score model (VE levels, "
                         f"{schedule!r}); use --sampler langevin, annealed_langevin or pc")
    if options and sampler not in reference.SCORE_SAMPLERS:
        flags = ", ".join(SCORE_SAMPLE_FLAGS[k] for k in options)
        raise UsageError(f"{flags} apply to --sampler langevin, annealed_langevin or pc, not {sampler}")
    if sampler not in reference.SCORE_SAMPLERS:
        return None
    try:
        return reference.sampling_plan(schedule, sampler, steps, **options)
    except (TypeError, ValueError) as err:
        message = str(err)
        for key, flag in SCORE_SAMPLE_FLAGS.items():
            message = message.replace(key, flag)
        raise UsageError(f"--sampler {sampler}: {message.replace('num_steps', '--steps')}") from None
