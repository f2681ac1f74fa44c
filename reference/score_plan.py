"""The plans of the score samplers: Langevin, annealed Langevin, predictor-corrector.

Each is a `SamplingPlan` of "langevin_step" steps (rows LANGEVIN_COEFFICIENTS, the rule of
`reference.langevin_step`), executed by the same loops as DDPM/DDIM (`reference.sample_plan`,
`ddpm.Sampler`). The process comes from the schedule: a `reference.Schedule` is VP (a DDPM
eps-model, score = -eps / sqrt(1 - alpha_bar_t)), a `reference.VESchedule` is VE (a score model,
score = -out / sigma_t). "Levels" are the model's t; the noise variance of level t is
v_t = sigma_t^2 (VE) or 1 - alpha_bar_t (VP).

    "langevin"           plain Langevin at ONE level t = `level` (default 0, the least noisy):
                         num_steps steps x <- x + eps s + sqrt(2 eps) z (eps = step_size).
    "annealed_langevin"  Song & Ermon 2019, Algorithm 1: for each of num_steps levels (descending),
                         steps_per_level steps with alpha_i = eps v_i / v_L,
                         x <- x + alpha_i / 2 s + sqrt(alpha_i) z.
    "pc"                 Song et al. 2021, Algorithm 2/3 (as their code and diffusers order it):
                         per level, corrector_steps Langevin corrector steps with the snr rule
                         (Alg. 4 VP / 5 VE), then one predictor step to the next level:
                         "reverse_diffusion" (default for VE, = diffusers' step_pred) or
                         "ancestral" (default for VP, Eq. 47; for VE its noise is
                         sqrt(sigma_prev^2 (sigma^2 - sigma_prev^2) / sigma^2)).

With denoise=True (default) langevin and annealed_langevin end with one noise-free Tweedie step
(x + v s, scaled by 1/sqrt(alpha_bar) for VP; Jolicoeur-Martineau et al. 2020, as NCSNv2's
final denoising) and pc's last predictor step adds no noise (Song's `denoise`, diffusers'
returned `prev_sample_mean`). x starts from the prior: N(0, v_{t_0} I) at the plan's first
level for VE (sigma_max with the default linspace levels), N(0, I) for VP; plain Langevin
starts from the VE prior N(0, sigma_max^2 I) / N(0, I) as well. Model evaluations: langevin
num_steps (+1), annealed num_steps x steps_per_level (+1), pc num_steps x (1 + corrector_steps).

Step k of a plan draws its z from stream k + 1, as every sampler's step k (DESIGN contract 2).
"""

from __future__ import annotations

import math

import numpy as np

from .langevin_step import LANGEVIN_COEFFICIENTS, SNR_NORMS
from .schedules import SPACINGS, timestep_subset
from .score import check_process_schedule

__all__ = ["SCORE_SAMPLERS", "PREDICTORS", "SCORE_DEFAULTS", "score_plan_fields", "check_score_model"]

SCORE_SAMPLERS = ("langevin", "annealed_langevin", "pc")
PREDICTORS = ("reverse_diffusion", "ancestral")
# Song & Ermon 2019 Sec. 4.2 (eps 2e-5, T = 100 per level, L = 10); Song et al. 2021 (snr 0.16,
# one corrector step); plain Langevin: 1000 steps at the least noisy level
SCORE_DEFAULTS = {"step_size": 2e-5, "steps_per_level": 100, "snr": 0.16, "corrector_steps": 1,
                  "num_steps": {"langevin": 1000, "annealed_langevin": 10, "pc": 100}}
_OPTIONS = {"langevin": ("step_size", "level", "denoise"),
            "annealed_langevin": ("step_size", "steps_per_level", "denoise"),
            "pc": ("snr", "corrector_steps", "predictor", "denoise", "snr_norms")}


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _count(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_score_model(process: str, prediction: str, clip, eta) -> None:
    """The score samplers read an eps/z-predicting model, without clipping or DDIM's eta."""
    if prediction != "epsilon":
        raise ValueError(f"the score samplers need prediction='epsilon' (score = -eps / "
                         f"{'sigma_t' if process == 've' else 'sqrt(1 - alpha_bar_t)'}), got "
                         f"prediction={prediction!r}")
    if clip is not None:
        raise ValueError(f"clip applies to ddpm/ddim/dpm_solver++ (x0_hat), not to the score samplers, got clip={clip!r}")
    if eta != 0.0:
        raise ValueError(f"eta applies to the ddim sampler only, got eta={eta}")


def _variances(schedule, process: str, t: np.ndarray) -> np.ndarray:
    """v_t: the noise variance of level t (sigma_t^2 VE, 1 - alpha_bar_t VP)."""
    return schedule.sigmas[t] ** 2 if process == "ve" else 1.0 - schedule.alpha_bars[t]


def _row(x_scale, scale, step, noise_scale, snr=0.0, alpha=0.0, batch=0.0) -> list:
    return [x_scale, scale, step, noise_scale, snr, alpha, batch]


def _denoise_row(schedule, process: str, t: int) -> list:
    """Tweedie's formula E[x0 | x_t]: VE x + sigma^2 s; VP (x + (1 - alpha_bar) s) / sqrt(alpha_bar)."""
    v = float(_variances(schedule, process, np.array([t]))[0])
    scale = -1.0 / math.sqrt(v)
    if process == "ve":
        return _row(1.0, scale, v, 0.0)
    root = math.sqrt(schedule.alpha_bars[t])
    return _row(1.0 / root, scale, v / root, 0.0)


def _predictor_row(schedule, process: str, predictor: str, t: int, t_next: int, last_quiet: bool) -> list:
    """One predictor step from level t to t_next (-1: to the data, sigma = 0 / alpha_bar = 1)."""
    v = float(_variances(schedule, process, np.array([t]))[0])
    scale = -1.0 / math.sqrt(v)
    if process == "ve":
        v_next = 0.0 if t_next < 0 else float(schedule.sigmas[t_next] ** 2)
        step = v - v_next                                   # sigma_i^2 - sigma_{i-1}^2
        noise = math.sqrt(step) if predictor == "reverse_diffusion" else math.sqrt(v_next * step / v)
        x_scale = 1.0
    else:
        alpha_bar_next = 1.0 if t_next < 0 else float(schedule.alpha_bars[t_next])
        alpha = float(schedule.alpha_bars[t]) / alpha_bar_next   # the respaced alpha_i
        beta = 1.0 - alpha
        noise = math.sqrt(beta)
        if predictor == "ancestral":                        # Eq. 47 (VP): DDPM with sigma^2 = beta
            x_scale, step = 1.0 / math.sqrt(alpha), beta / math.sqrt(alpha)
        else:                                               # reverse diffusion, VP discretised
            x_scale, step = 2.0 - math.sqrt(alpha), beta
    return _row(x_scale, scale, step, 0.0 if last_quiet else noise)


def _corrector_row(schedule, process: str, t: int, t_next: int, snr: float, batch: bool) -> list:
    """The snr corrector at level t: alpha = 1 (VE, Alg. 5) or alpha_i (VP, Alg. 4, respaced)."""
    v = float(_variances(schedule, process, np.array([t]))[0])
    if process == "ve":
        alpha = 1.0
    else:
        alpha = float(schedule.alpha_bars[t]) / (1.0 if t_next < 0 else float(schedule.alpha_bars[t_next]))
    return _row(1.0, -1.0 / math.sqrt(v), 0.0, 0.0, snr, alpha, float(batch))


def _levels(schedule, sampler: str, num_steps, spacing) -> tuple[np.ndarray, str]:
    spacing = "linspace" if spacing is None else spacing
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    default = SCORE_DEFAULTS["num_steps"][sampler]
    num_levels = min(default, schedule.T) if num_steps is None else _count(num_steps, "num_steps", 1)
    if num_levels > schedule.T:
        raise ValueError(f"num_steps (levels) must lie in [1, {schedule.T}] for {sampler}, got {num_levels}")
    return timestep_subset(schedule.T, num_levels, spacing), spacing


def score_plan_fields(schedule, sampler: str, num_steps: int | None = None, spacing: str | None = None,
                      *, prediction: str = "epsilon", variance: str = "fixed_small", clip=None,
                      eta: float = 0.0, **options) -> dict:
    """The fields of a score sampler's SamplingPlan (module docstring) over a VP or VE `schedule`
    (`reference.score_sampling_plan` builds the plan; noise_streams here: True where step k draws z).

    num_steps: langevin's number of Langevin steps (default 1000); the number of levels of
    annealed_langevin (default 10) and pc (default 100), capped at T, spaced by `spacing`
    (default "linspace": both ends, sigma_max and sigma_min, are visited). options (each only
    where it applies; None: the default in SCORE_DEFAULTS): step_size (eps > 0), level (int,
    langevin), steps_per_level (>= 1), snr (> 0), corrector_steps (>= 0), predictor
    ("reverse_diffusion" | "ancestral"; None: reverse_diffusion for VE, ancestral for VP),
    snr_norms ("sample": per-sample norms, batch invariant, the default; "batch": the batch means
    of Song's code and diffusers; reference/langevin_step.py says when each fits),
    denoise (bool, default True). Bad input: a ValueError/TypeError naming the argument.
    """
    schedule, process = check_process_schedule(schedule)
    if sampler not in SCORE_SAMPLERS:
        raise ValueError(f"sampler must be one of {SCORE_SAMPLERS}, got {sampler!r}")
    check_score_model(process, prediction, clip, eta)
    unknown = sorted(k for k, v in options.items() if v is not None and k not in _OPTIONS[sampler])
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes {_OPTIONS[sampler]}, got {', '.join(unknown)}")
    denoise = options.get("denoise")
    denoise = True if denoise is None else denoise
    if not isinstance(denoise, (bool, np.bool_)):
        raise TypeError(f"denoise must be a bool, got {type(denoise).__name__}")
    get = lambda name: SCORE_DEFAULTS[name] if options.get(name) is None else options[name]  # noqa: E731
    rows, model_t, landing = [], [], []

    if sampler == "langevin":
        count = SCORE_DEFAULTS["num_steps"]["langevin"] if num_steps is None else _count(num_steps, "num_steps", 1)
        level = 0 if options.get("level") is None else int(schedule.check_t(_count(options["level"], "level", 0), "level"))
        eps = _positive(get("step_size"), "step_size")
        scale = -1.0 / math.sqrt(float(_variances(schedule, process, np.array([level]))[0]))
        rows += [_row(1.0, scale, eps, math.sqrt(2.0 * eps))] * count
        model_t += [level] * count
        landing += [level] * count
        levels, spacing = np.array([level]), "single"
    elif sampler == "annealed_langevin":
        levels, spacing = _levels(schedule, sampler, num_steps, spacing)
        eps = _positive(get("step_size"), "step_size")
        per_level = _count(get("steps_per_level"), "steps_per_level", 1)
        v = _variances(schedule, process, levels)
        for t, v_t in zip(levels, v):
            alpha = eps * v_t / v[-1]                       # Alg. 1: eps sigma_i^2 / sigma_L^2
            scale = -1.0 / math.sqrt(v_t)
            rows += [_row(1.0, scale, alpha / 2.0, math.sqrt(alpha))] * per_level
            model_t += [int(t)] * per_level
            landing += [int(t)] * per_level
    else:
        levels, spacing = _levels(schedule, sampler, num_steps, spacing)
        snr = _positive(get("snr"), "snr")
        corrector_steps = _count(get("corrector_steps"), "corrector_steps", 0)
        predictor = options.get("predictor") or ("reverse_diffusion" if process == "ve" else "ancestral")
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
        options["predictor"] = predictor
        snr_norms = options.get("snr_norms") or "sample"
        if snr_norms not in SNR_NORMS:
            raise ValueError(f"snr_norms must be one of {SNR_NORMS}, got {snr_norms!r}")
        nexts = np.append(levels[1:], -1)
        for i, (t, t_next) in enumerate(zip(levels, nexts)):
            rows += [_corrector_row(schedule, process, int(t), int(t_next), snr, snr_norms == "batch")] * corrector_steps
            model_t += [int(t)] * corrector_steps
            landing += [int(t)] * corrector_steps
            quiet = denoise and i == len(levels) - 1
            rows.append(_predictor_row(schedule, process, predictor, int(t), int(t_next), quiet))
            model_t.append(int(t))
            landing.append(int(t_next))
    if sampler != "pc" and denoise:
        rows.append(_denoise_row(schedule, process, int(levels[-1])))
        model_t.append(int(levels[-1]))
        landing.append(-1)

    coefficients = np.asarray(rows, dtype=np.float64).reshape(-1, len(LANGEVIN_COEFFICIENTS))
    draws = (coefficients[:, 3] != 0) | (coefficients[:, 4] != 0)   # noise_scale or snr
    init_scale = math.sqrt(float(_variances(schedule, process, np.array([schedule.T - 1 if sampler == "langevin"
                                                                          else levels[0]]))[0])) if process == "ve" else 1.0
    recorded = {k: v for k, v in options.items() if v is not None}
    return dict(schedule=schedule, sampler=sampler, timesteps=np.asarray(model_t, dtype=np.int64),
                timesteps_prev=np.asarray(landing, dtype=np.int64),
                step_kinds=("langevin_step",) * len(rows), coefficients=coefficients,
                coefficient_names=LANGEVIN_COEFFICIENTS, noise_streams=draws, spacing=spacing,
                eta=0.0, prediction=prediction, variance=variance, clip=None,
                init_scale=init_scale, process=process, options=recorded)
