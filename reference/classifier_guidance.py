"""Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2) as a term of the sampler step.

The conditional score is the unconditional one plus s grad_x log p_phi(y | x_t, t). With
g = grad_x log p_phi(y | x_t, t) at the step's x_t and model timestep t, per sample n with scale
s_n, the sampler's elementwise rule gains one gradient term in three places (columns
GUIDANCE_COEFFICIENTS, per step, for s = 1; the loops multiply by s_n):

    x0_hat  += a0 g        eps_hat += a1 g        (before clipping)
    x_prev  += a2 g        (after the mean, before the noise term)

    DDPM ancestral (Alg. 1, mean shift mu + s Sigma g):    a = (0, 0, sigma_t^2), Sigma the
        step's variance (beta_tilde_t, beta_t, or the respaced one; 0 at the step into x_0);
    DDPM with variance="learned" (Improved DDPM Eq. 15, "learned_variance_step" kind): Sigma is
        the model's per-element variance exp(log sigma^2), known only once v is; a = (0, 0, c9)
        with c9 = 1 where the step draws z (0 into x_0, as above), and the step forms a2 Sigma g
        itself (reference.learned_variance_step);
    DDIM and DPM-Solver++ (Alg. 2, eps shift eps_hat - s sqrt(1 - alpha_bar_t) g, and x0_hat
        recomputed from it, x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)):
        a = ((1 - alpha_bar_t) / sqrt(alpha_bar_t), -sqrt(1 - alpha_bar_t), 0).

These hold for every prediction kind (x0_hat and eps_hat always satisfy DDPM Eq. 4 at x_t) and
compose with classifier-free guidance (the term is added to the rule after the CFG combine of the
model outputs). DPM-Solver++ reads only x0_hat (a0). The score samplers (Langevin, annealed
Langevin, predictor-corrector) have no guidance term and are refused.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_class_labels
from .learned_variance_step import LEARNED_VARIANCE_COEFFICIENTS
from .process import STEP_COEFFICIENTS
from .sampling_plan import SamplingPlan

__all__ = ["GUIDANCE_COEFFICIENTS", "GUIDED_STEP_KINDS", "classifier_guidance_coefficients",
           "check_classifier_scale", "check_classifier_guidance", "guidance_rows"]

GUIDANCE_COEFFICIENTS = ("x0_from_grad", "eps_from_grad", "prev_from_grad")
GUIDED_STEP_KINDS = ("sampler_step", "dpm_solver_pp_2m", "learned_variance_step")


def classifier_guidance_coefficients(plan: SamplingPlan) -> np.ndarray:
    """(K, 3) float64 columns GUIDANCE_COEFFICIENTS of each step of `plan`, for scale s = 1."""
    if not isinstance(plan, SamplingPlan):
        raise TypeError(f"plan must be a reference.SamplingPlan, got {type(plan).__name__}")
    unguided = sorted(set(plan.step_kinds) - set(GUIDED_STEP_KINDS))
    if unguided:
        raise ValueError(f"classifier guidance is defined for step kinds {GUIDED_STEP_KINDS} (the samplers "
                         f"ddpm, ddim, dpm_solver++); sampler={plan.sampler!r} has steps {unguided}")
    K = plan.num_steps
    zero = np.zeros(K)
    if plan.sampler == "ddpm" and plan.learned_variance:  # Algorithm 1, Sigma from the model's v
        has_noise = plan.coefficients[:, LEARNED_VARIANCE_COEFFICIENTS.index("has_noise")]
        return np.stack([zero, zero, has_noise], axis=-1)
    if plan.sampler == "ddpm":  # Algorithm 1: mu + s Sigma g
        sigma = plan.coefficients[:, STEP_COEFFICIENTS.index("sigma")]
        return np.stack([zero, zero, sigma**2], axis=-1)
    alpha_bar = plan.schedule.alpha_bars[plan.timesteps]  # Algorithm 2 at the model's t
    return np.stack([(1.0 - alpha_bar) / np.sqrt(alpha_bar), -np.sqrt(1.0 - alpha_bar), zero], axis=-1)


def check_classifier_scale(scale, n: int) -> np.ndarray:
    """classifier_scale: a finite number >= 0 or (n,) of them -> (n,) float64."""
    if isinstance(scale, bool):
        raise TypeError("classifier_scale must be a number or (N,) numbers, got bool")
    try:
        values = np.asarray(scale, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"classifier_scale must be a number or (N,) numbers, got {type(scale).__name__}") from None
    if values.ndim == 0:
        values = np.full(n, float(values))
    if values.shape != (n,):
        raise ValueError(f"classifier_scale must be a number or have shape ({n},), got {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"classifier_scale must be finite and >= 0, got {values.tolist()[:8]}")
    return values


def check_classifier_guidance(classifier_config, shape, y, scale, *, model_num_classes=None):
    """The checks of a classifier-guided run; returns (y (N,) int64, scale (N,) float64).

    classifier_config: the classifier's UNetConfig (image shape, num_classes = its classes);
    shape: the run's (N, C, H, W); y: the requested classes (N,) or one int; model_num_classes:
    the denoiser's class count when it is class-conditional (must equal the classifier's).
    """
    n = int(shape[0])
    image = (classifier_config.in_channels, classifier_config.image_size, classifier_config.image_size)
    if tuple(shape[1:]) != image:
        raise ValueError(f"classifier image shape {image} does not match the model's sample shape "
                         f"{tuple(shape[1:])}")
    classes = int(classifier_config.num_classes)
    if model_num_classes is not None and int(model_num_classes) != classes:
        raise ValueError(f"classifier has {classes} classes but the model has {model_num_classes}")
    if y is None:
        raise ValueError("classifier guidance needs the class to guide to: pass y (class ids)")
    y = check_class_labels(y, classes, "y")
    if y.ndim == 0:
        y = np.full(n, int(y), dtype=np.int64)
    if y.shape != (n,):
        raise ValueError(f"y must be one class id or have shape ({n},), got {y.shape}")
    return y, check_classifier_scale(scale, n)


def guidance_rows(plan: SamplingPlan, scale: np.ndarray) -> np.ndarray:
    """(K, N, 3) float64: step k's columns for sample n, times its scale s_n."""
    unit = classifier_guidance_coefficients(plan)
    return unit[:, None, :] * np.asarray(scale, dtype=np.float64)[None, :, None]
