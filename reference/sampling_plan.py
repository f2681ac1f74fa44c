"""The plan of a sampling run: every host-side float64 decision of a sampler, made once.

A sampler is a plan plus a loop. The plan says, for each of its K steps k = 0..K-1:

    timesteps[k]        the model's t at step k (int64, descending)
    timesteps_prev[k]   where the step lands (the next step's t; -1 = "before t = 0" after the last)
    step_kinds[k]       which update rule turns (x_t, model output) into the next x
    coefficients[k]     that rule's float64 coefficients (columns `coefficient_names`)
    noise_streams[k]    the noise stream of the step's Gaussian z (DESIGN contract 2), -1: no z

and the loops only execute it: `reference.sampling.sample_plan` in NumPy, `ddpm.Sampler` with
one `kernels.sampler_step` launch per step. Both take the same plan, so their timesteps and
coefficients are the same float64 numbers by construction, not by two copies of the same code.

Step kinds (STEP_KINDS):
    "sampler_step"      the elementwise rule of `reference.sampler_step` (DDPM Alg. 2, DDIM
                        Eq. 12), coefficient columns STEP_COEFFICIENTS;
    "dpm_solver_pp_2m"  DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), columns
                        DPM_SOLVER_COEFFICIENTS; it also reads the previous step's x0_hat;
    "learned_variance_step"  DDPM Alg. 2 with the model's own per-element variance (Improved
                        DDPM Eq. 15; `reference.learned_variance_step`), columns
                        LEARNED_VARIANCE_COEFFICIENTS: the rows hold log beta_t and log
                        beta_tilde_t, the step interpolates them with the model's v.
With variance="learned" the model outputs 2C channels (the mean part, then v): the ddpm plan
is made of "learned_variance_step" steps, and ddim / dpm_solver++ read the mean part only
(`SamplingPlan.learned_variance`), as improved-diffusion's DDIM does.
A new sampler (learned variance, classifier guidance, Langevin, predictor-corrector) is a new
plan builder here and, where its update is none of these rules, a new step kind with its own
columns: the loops dispatch on `step_kinds[k]`, they are not written again. A corrector step
of predictor-corrector sampling, for example, is one more step at the same timestep.

The sampler defaults live here only: DEFAULT_NUM_STEPS and DEFAULT_SPACING.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._validate import check_clip, check_eta
from .noise import sampler_step_stream
from .learned_variance_step import (
    LEARNED_VARIANCE,
    LEARNED_VARIANCE_COEFFICIENTS,
    learned_variance_coefficients,
)
from .process import (
    DPM_SOLVER_COEFFICIENTS,
    PREDICTIONS,
    STEP_COEFFICIENTS,
    VARIANCES,
    ddim_coefficients,
    ddpm_coefficients,
    dpm_solver_pp_coefficients,
)
from .schedules import SPACINGS, Schedule, check_schedule, timestep_subset
from .score import VESchedule
from .score_plan import SCORE_DEFAULTS, SCORE_SAMPLERS, score_plan_fields

__all__ = ["score_sampling_plan", "ALL_SAMPLERS", "SAMPLERS", "STEP_KINDS", "SAMPLER_VARIANCES", "DEFAULT_NUM_STEPS", "DEFAULT_SPACING", "NO_NOISE",
           "SamplingPlan", "sampling_plan", "default_num_steps"]

SAMPLERS = ("ddpm", "ddim", "dpm_solver++")
STEP_KINDS = ("sampler_step", "dpm_solver_pp_2m", "learned_variance_step")
# the score view (issue 13, reference/score_plan.py): every step a "langevin_step"
ALL_SAMPLERS = SAMPLERS + SCORE_SAMPLERS
STEP_KINDS = STEP_KINDS + ("langevin_step",)
# the fixed variances of DDPM, and the learned one of Improved DDPM (the model's 2C outputs)
SAMPLER_VARIANCES = VARIANCES + (LEARNED_VARIANCE,)
NO_NOISE = -1  # noise_streams[k] of a step that draws no z

# num_steps=None: every timestep for DDPM (Alg. 2 as trained), else these, capped at T.
DEFAULT_NUM_STEPS = {"ddpm": None, "ddim": 50, "dpm_solver++": 20}
# spacing=None: "leading" (diffusers' DDIM default) for ddpm/ddim; "trailing" for DPM-Solver++,
# whose second-order step into t = 0 on a leading/linspace grid extrapolates over a log-SNR
# step ~10x the previous one (r ~ 0.1): 2.7x vs 1.6x the data floor on the toy demo.
DEFAULT_SPACING = {"ddpm": "leading", "ddim": "leading", "dpm_solver++": "trailing"}


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """K steps of one sampler over `schedule` (see the module docstring); arrays read-only.

    timesteps, timesteps_prev, noise_streams: (K,) int64; step_kinds: K names from STEP_KINDS;
    coefficients: (K, len(coefficient_names)) float64. The options it was built from are kept:
    sampler, spacing, eta, prediction, variance, clip (None or (lo, hi), applied to x0_hat).
    """

    schedule: Schedule
    sampler: str
    timesteps: np.ndarray
    timesteps_prev: np.ndarray
    step_kinds: tuple
    coefficients: np.ndarray
    coefficient_names: tuple
    noise_streams: np.ndarray
    spacing: str
    eta: float
    prediction: str
    variance: str
    clip: tuple | None
    # the score samplers (reference/score_plan.py): x_T = init_scale * N(0, I) (VE: sigma_max),
    # the process of the schedule ("vp" | "ve") and the sampler's options (step_size, snr, ...)
    init_scale: float = 1.0
    process: str = "vp"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("timesteps", "timesteps_prev", "noise_streams", "coefficients"):
            dtype = np.float64 if name == "coefficients" else np.int64
            array = np.array(getattr(self, name), dtype=dtype)  # a private copy, then frozen
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        K = self.timesteps.shape[0]
        if self.coefficients.shape != (K, len(self.coefficient_names)) or len(self.step_kinds) != K:
            raise ValueError(f"a plan of {K} steps needs ({K}, {len(self.coefficient_names)}) "
                             f"coefficients and {K} step kinds, got {self.coefficients.shape} "
                             f"and {len(self.step_kinds)}")

    @property
    def num_steps(self) -> int:
        """K, the number of steps (= model calls)."""
        return int(self.timesteps.shape[0])

    @property
    def needs_noise(self) -> bool:
        """Whether any step draws a Gaussian z (a stochastic sampler: the seed matters per step)."""
        return bool(np.any(self.noise_streams != NO_NOISE))

    @property
    def learned_variance(self) -> bool:
        """Whether the model outputs 2C channels (mean part, then v; Improved DDPM Eq. 15)."""
        return self.variance == LEARNED_VARIANCE

    def __repr__(self) -> str:
        return (f"SamplingPlan(sampler={self.sampler!r}, num_steps={self.num_steps}, "
                f"spacing={self.spacing!r}, eta={self.eta}, prediction={self.prediction!r}, "
                f"variance={self.variance!r}, clip={self.clip}, schedule={self.schedule!r})")


def default_num_steps(sampler: str, T: int) -> int:
    """num_steps=None for `sampler` over T training steps: T for ddpm, else the default capped at T."""
    if sampler not in ALL_SAMPLERS:
        raise ValueError(f"sampler must be one of {ALL_SAMPLERS}, got {sampler!r}")
    if sampler in SCORE_SAMPLERS:  # levels (annealed, pc) or Langevin steps, reference/score_plan.py
        default = SCORE_DEFAULTS["num_steps"][sampler]
        return default if sampler == "langevin" else min(default, int(T))
    default = DEFAULT_NUM_STEPS[sampler]
    return int(T) if default is None else min(default, int(T))


def _check_num_steps(num_steps, T: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int or None, got {type(num_steps).__name__}")
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must lie in [1, T={T}], got {num_steps}")
    return int(num_steps)


def _step_streams(sigma: np.ndarray) -> np.ndarray:
    """Step k draws its z from stream k + 1 (DESIGN contract 2) where its sigma is not 0."""
    streams = [sampler_step_stream(k) if s != 0 else NO_NOISE for k, s in enumerate(sigma)]
    return np.asarray(streams, dtype=np.int64).reshape(-1)


def _ddpm_coefficients(schedule: Schedule, timesteps, prediction: str, variance: str) -> np.ndarray:
    """(K, 8) DDPM Alg. 2 rows ((K, 10) learned-variance rows for variance="learned"); fewer than
    T steps run on the respaced schedule (Improved DDPM Sec. 4: the learned variance then
    interpolates the respaced betas), all T on the training schedule itself (a respaced copy
    would recompute its betas from ratios of alpha_bar, equal only to round-off)."""
    K = timesteps.shape[0]
    step_schedule = schedule if K == schedule.T else schedule.respace(timesteps)
    # the step schedule is ascending and the walk descending: step k is its index K-1-k
    respaced_index = np.arange(K - 1, -1, -1, dtype=np.int64)
    if variance == LEARNED_VARIANCE:
        return learned_variance_coefficients(step_schedule, respaced_index, prediction)
    return ddpm_coefficients(step_schedule, respaced_index, prediction, variance)


def _dpm_solver_pp_coefficients(schedule: Schedule, timesteps, timesteps_prev, prediction: str):
    """(K, 7) rows; Lu et al. 2022, Alg. 2: step k's history is step k-1's x0_hat (at its t),
    the first step has none (-1) and is first order."""
    timesteps_last = np.concatenate([[-1], timesteps[:-1]]).astype(np.int64)
    return dpm_solver_pp_coefficients(schedule, timesteps, timesteps_prev, timesteps_last, prediction)


def score_sampling_plan(schedule, sampler: str, num_steps: int | None = None, spacing: str | None = None,
                        **options) -> SamplingPlan:
    """The plan of a score sampler "langevin" | "annealed_langevin" | "pc" over a VP Schedule or a
    VESchedule (reference/score_plan.py: `score_plan_fields`); step k draws z from stream k + 1."""
    fields = score_plan_fields(schedule, sampler, num_steps, spacing, **options)
    fields["noise_streams"] = np.array([sampler_step_stream(k) if draws else NO_NOISE
                                        for k, draws in enumerate(fields["noise_streams"])], dtype=np.int64)
    return SamplingPlan(**fields)


def sampling_plan(schedule: Schedule, sampler: str, num_steps: int | None = None,
                  spacing: str | None = None, eta: float = 0.0, prediction: str = "epsilon",
                  variance: str = "fixed_small", clip=None, **score_options) -> SamplingPlan:
    """The plan of `sampler` over `schedule` (a reference.Schedule, the training schedule).

    sampler: "ddpm" (ancestral, DDPM Alg. 2; num_steps < T on the respaced schedule of Improved
        DDPM Sec. 4), "ddim" (Song et al. 2021, Eq. 12, with eta in [0, 1]) or "dpm_solver++"
        (Lu et al. 2022, 2M). num_steps None: `default_num_steps(sampler, T)`.
    spacing: "leading" | "trailing" | "linspace" (`timestep_subset`); None: DEFAULT_SPACING.
    eta: DDIM only. prediction: "epsilon" | "sample" | "v_prediction". variance: "fixed_small"
        | "fixed_large" (used by ddpm) | "learned" (a model with 2C output channels: ddpm uses its
        v, ddim and dpm_solver++ its mean part). clip: None or (lo, hi) for x0_hat.
    Bad input raises a ValueError (TypeError for a wrong type) naming the argument.
    The score samplers "langevin", "annealed_langevin", "pc" (over a VP Schedule or a
    reference.VESchedule) and their score_options: `reference.score_sampling_plan`.
    """
    if sampler in SCORE_SAMPLERS:
        return score_sampling_plan(schedule, sampler, num_steps, spacing, prediction=prediction,
                                   variance=variance, clip=clip, eta=eta, **score_options)
    if isinstance(schedule, VESchedule):
        raise ValueError(f"sampler={sampler!r} runs the VP (DDPM) process over alpha_bar; schedule is a "
                         f"VE schedule (a score model, {schedule!r}): use sampler 'langevin', "
                         "'annealed_langevin' or 'pc'")
    if any(v is not None for v in score_options.values()):
        raise ValueError(f"{', '.join(sorted(k for k, v in score_options.items() if v is not None))} apply to the score samplers "
                         f"{SCORE_SAMPLERS}, not to sampler={sampler!r}")
    schedule = check_schedule(schedule)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {ALL_SAMPLERS}, got {sampler!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if variance not in SAMPLER_VARIANCES:
        raise ValueError(f"variance must be one of {SAMPLER_VARIANCES}, got {variance!r}")
    eta = check_eta(eta)
    if sampler != "ddim" and eta != 0.0:
        raise ValueError(f"eta applies to the ddim sampler only, got eta={eta} with sampler={sampler!r}")
    clip = check_clip(clip)
    spacing = DEFAULT_SPACING[sampler] if spacing is None else spacing
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    T = schedule.T
    num_steps = default_num_steps(sampler, T) if num_steps is None else _check_num_steps(num_steps, T)

    if sampler == "ddpm" and num_steps == T:
        timesteps = np.arange(T - 1, -1, -1, dtype=np.int64)  # DDPM Alg. 2, every t
    else:
        timesteps = timestep_subset(T, num_steps, spacing)
    timesteps_prev = np.append(timesteps[1:], -1).astype(np.int64)  # -1: alpha_bar_prev = 1

    if sampler == "dpm_solver++":
        coefficients = _dpm_solver_pp_coefficients(schedule, timesteps, timesteps_prev, prediction)
        kind, names = "dpm_solver_pp_2m", DPM_SOLVER_COEFFICIENTS
        streams = np.full(num_steps, NO_NOISE, dtype=np.int64)  # an ODE solver: no z
    elif sampler == "ddpm" and variance == LEARNED_VARIANCE:
        coefficients = _ddpm_coefficients(schedule, timesteps, prediction, variance)
        kind, names = "learned_variance_step", LEARNED_VARIANCE_COEFFICIENTS
        streams = _step_streams(coefficients[:, LEARNED_VARIANCE_COEFFICIENTS.index("has_noise")])
    else:
        if sampler == "ddpm":
            coefficients = _ddpm_coefficients(schedule, timesteps, prediction, variance)
        else:  # Song et al. 2021, Eqs. 12 and 16
            coefficients = ddim_coefficients(schedule, timesteps, timesteps_prev, eta, prediction)
        kind, names = "sampler_step", STEP_COEFFICIENTS
        streams = _step_streams(coefficients[:, STEP_COEFFICIENTS.index("sigma")])
    return SamplingPlan(schedule=schedule, sampler=sampler, timesteps=timesteps,
                        timesteps_prev=timesteps_prev, step_kinds=(kind,) * num_steps,
                        coefficients=coefficients, coefficient_names=tuple(names),
                        noise_streams=streams, spacing=spacing, eta=eta, prediction=prediction,
                        variance=variance, clip=clip)
