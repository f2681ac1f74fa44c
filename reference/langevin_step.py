"""The Langevin update, the one step rule of the score samplers (and of `kernels.langevin_step`).

Langevin dynamics sample p from its score (Song & Ermon 2019, Eq. 4; Welling & Teh 2011):

    x_{i+1} = x_i + step * grad log p(x_i) + sqrt(2 step) z_i.

Every score-sampler step of this project is that update with per-sample float64 coefficients
(columns LANGEVIN_STEP_COEFFICIENTS) and the score read off the model output:

    score  = c1 * out                       c1 = score_scale: -1/sigma_t (VE), -1/sqrt(1-alpha_bar_t) (VP)
    x_next = (c0 * x + c2 * score) + c3 * z  (z only where c3 != 0)

    Langevin / annealed Langevin (Alg. 1)   c0 = 1, c2 = step,  c3 = sqrt(2 step)
    the corrector (Song et al. 2021, Alg. 4/5)  as Langevin, step from the snr rule below
    VE reverse-diffusion predictor (Eq. 47)  c0 = 1, c2 = sigma_i^2 - sigma_{i-1}^2, c3 = sqrt(c2)
    VP ancestral predictor (Eq. 47)          c0 = 1/sqrt(1-beta_i), c2 = beta_i/sqrt(1-beta_i), c3 = sqrt(beta_i)
    VP reverse-diffusion predictor           c0 = 2 - sqrt(1-beta_i), c2 = beta_i, c3 = sqrt(beta_i)
    the final denoising step (Tweedie)       VE: c0 = 1, c2 = sigma^2; VP: c0 = 1/sqrt(alpha_bar),
                                             c2 = (1 - alpha_bar)/sqrt(alpha_bar); c3 = 0

The corrector's signal-to-noise rule (Song et al. 2021, Algorithms 4 and 5) picks the step per
sample from the norms of the score g and of the step's noise z:

    step = 2 alpha (snr ||z|| / ||g||)^2,  c3 = sqrt(2 step)      (alpha = 1 VE, alpha_i VP)

Song's code and diffusers' ScoreSdeVeScheduler.step_correct average the two norms over the
batch; by default (snr_norms="sample") they are per sample here, so sample i does not depend on
the batch it is drawn in (DESIGN contract 2); for a batch of one the two coincide. Per-sample
norms need many dimensions: ||z||^2 / ||g||^2 is then concentrated, while in 2-D it is ~ an
F(2, 2) ratio with infinite mean, and samples near a mode (||g|| -> 0) get huge steps.
snr_norms="batch" (plan column snr_batch = 1) is Song's rule exactly, at the price of batch
invariance. `langevin_snr_coefficients` turns a
plan row with snr > 0 into these per-sample rows.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_float_array, check_same_shape, per_sample, result_dtype

__all__ = ["LANGEVIN_STEP_COEFFICIENTS", "LANGEVIN_COEFFICIENTS", "SNR_NORMS", "langevin_step",
           "langevin_snr_coefficients"]

# the rows the elementwise step (and the fused kernel) reads
LANGEVIN_STEP_COEFFICIENTS = ("x_scale", "score_scale", "step", "noise_scale")
# a plan's rows: the step's columns, then the corrector's snr and alpha (snr = 0: a fixed step),
# and snr_batch = 1 for the batch-averaged norms of Song's code and diffusers (0: per sample)
LANGEVIN_COEFFICIENTS = LANGEVIN_STEP_COEFFICIENTS + ("snr", "snr_alpha", "snr_batch")
SNR_NORMS = ("sample", "batch")
_WIDTH = len(LANGEVIN_STEP_COEFFICIENTS)


def _rows(coefficients, batch: int, width: int, name: str = "coefficients") -> np.ndarray:
    c = np.asarray(coefficients, dtype=np.float64)
    if c.shape == (width,):
        c = np.broadcast_to(c, (batch, width))
    if c.shape != (batch, width):
        raise ValueError(f"{name} must have shape ({width},) or ({batch}, {width}), got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} contain NaN or inf")
    return c


def langevin_step(x: np.ndarray, model_output: np.ndarray, coefficients, noise: np.ndarray | None = None) -> np.ndarray:
    """x_next = (c0 x + c2 (c1 out)) + c3 z (module docstring). x, model_output, noise (N, ...);
    coefficients (4,) or (N, 4) float64 (LANGEVIN_STEP_COEFFICIENTS); noise needed where c3 != 0.

    Computed in float64 (float32 when every array is float32, rounded once at the end), in this
    operation order, which every backend of `kernels.langevin_step` follows.
    """
    x = check_float_array(x, "x", min_ndim=2)
    model_output = check_float_array(model_output, "model_output", min_ndim=2)
    check_same_shape(x, model_output, "x", "model_output")
    c = _rows(coefficients, x.shape[0], _WIDTH)
    dtype = result_dtype(x, model_output, *([noise] if isinstance(noise, np.ndarray) else []))
    col = [per_sample(c[:, k], x.ndim) for k in range(_WIDTH)]
    xd, out = x.astype(np.float64), model_output.astype(np.float64)
    score = col[1] * out
    x_next = col[0] * xd + col[2] * score
    has_noise = c[:, 3] != 0
    if np.any(has_noise):
        if noise is None:
            raise ValueError("noise is required for a Langevin step with noise_scale != 0")
        noise = check_float_array(noise, "noise", min_ndim=2)
        check_same_shape(x, noise, "x", "noise")
        term = col[3] * noise.astype(np.float64)
        x_next = x_next + np.where(per_sample(has_noise, x.ndim), term, 0.0)
    return x_next.astype(dtype)


def langevin_snr_coefficients(row, model_output: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """(N, 4) float64 step rows for a plan row (LANGEVIN_COEFFICIENTS) whose snr > 0: the
    corrector step of Song et al. 2021 (Alg. 4 VP, Alg. 5 VE) per sample,

        g = c1 out,  step_n = 2 alpha (snr ||z_n|| / ||g_n||)^2,  noise_scale_n = sqrt(2 step_n).

    model_output, noise (N, ...); norms over each sample's elements in float64. A sample whose
    score is exactly 0 gets step 0 (no move) rather than an infinite step."""
    row = np.asarray(row, dtype=np.float64).reshape(-1)
    if row.shape != (len(LANGEVIN_COEFFICIENTS),):
        raise ValueError(f"row must have {len(LANGEVIN_COEFFICIENTS)} entries "
                         f"{LANGEVIN_COEFFICIENTS}, got shape {row.shape}")
    out = check_float_array(model_output, "model_output", min_ndim=2)
    noise = check_float_array(noise, "noise", min_ndim=2)
    check_same_shape(out, noise, "model_output", "noise")
    x_scale, scale, _, _, snr, alpha, batch = row
    n = out.shape[0]
    grad_norm = np.sqrt(np.sum(np.square(scale * out.reshape(n, -1).astype(np.float64)), axis=1))
    noise_norm = np.sqrt(np.sum(np.square(noise.reshape(n, -1).astype(np.float64)), axis=1))
    if batch:  # Song et al.'s code and diffusers: the batch means of the norms
        grad_norm, noise_norm = np.full(n, grad_norm.mean()), np.full(n, noise_norm.mean())
    ratio = np.divide(snr * noise_norm, grad_norm, out=np.zeros(n), where=grad_norm > 0)
    step = 2.0 * alpha * ratio * ratio
    return np.stack([np.full(n, x_scale), np.full(n, scale), step, np.sqrt(2.0 * step)], axis=1)
