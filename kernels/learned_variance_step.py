"""`kernels.learned_variance_step`: one DDPM step with the model's learned variance, one pass
(reference.learned_variance_step; Improved DDPM, Nichol & Dhariwal 2021, Eq. 15).

The model output has 2C channels (the mean part `out`, then v); with per-sample float64
coefficients c (columns reference.LEARNED_VARIANCE_COEFFICIENTS):

    x0_hat  = c0 x_t + c1 out ;  eps_hat = c2 x_t + c3 out
    x0_hat  = clip(x0_hat, lo, hi)                               (optional)
    mean    = c4 x0_hat + c5 x_t + c6 eps_hat
    x_prev  = mean + exp(0.5 (frac c7 + (1 - frac) c8)) z,  frac = (v + 1) / 2   (where c9 != 0)

c7 = log beta_t, c8 = log beta_tilde_t (clipped at t = 0), c9 = 1 where the step draws z.
Optional classifier guidance (Dhariwal & Nichol 2021, Alg. 1 with Sigma the learned variance;
reference.classifier_guidance), a gradient g and per-sample (a0, a1, a2), scale included:
x0_hat += a0 g, eps_hat += a1 g before the clip, x_prev += a2 exp(log sigma^2) g before the
noise (log sigma^2 = frac c7 + (1 - frac) c8, per element).

The log-variance interpolation, exp, sqrt (the 0.5 in the exponent) and the noise draw happen
per element in the same pass as the mean, in float64 registers (as `sampler_step`, for the same
cancellation reason), rounded once to x_t.dtype.
"""

from __future__ import annotations

import torch

from . import torch_ops
from .dispatch import device_guard, resolve_backend
from .validate import (
    check_classifier_guidance,
    check_clip,
    check_coefficients,
    check_float_tensor,
    check_same_device,
    check_same_dtype,
    check_step_noise_and_out,
    sync_checks_enabled,
)

__all__ = ["learned_variance_step", "LEARNED_VARIANCE_WIDTH"]

LEARNED_VARIANCE_WIDTH = 10  # len(reference.LEARNED_VARIANCE_COEFFICIENTS)
_HAS_NOISE = 9


def _check_model_output(model_output, x_t: torch.Tensor) -> torch.Tensor:
    """(N, 2C, ...) like x_t (N, C, ...): the mean part and v, a ValueError naming it otherwise."""
    check_float_tensor(model_output, "model_output")
    expected = (x_t.shape[0], 2 * x_t.shape[1]) + tuple(x_t.shape[2:])
    if tuple(model_output.shape) != expected:
        raise ValueError(f"model_output must have shape {expected} (2 x the {x_t.shape[1]} channels "
                         f"of x_t: the mean part, then v) for a learned variance, got "
                         f"{tuple(model_output.shape)}")
    check_same_device(model_output, "model_output", x_t, "x_t")
    check_same_dtype(model_output, "model_output", x_t, "x_t")
    return model_output


def _coefficients(coefficients, batch: int, device: torch.device):
    """(the (N, 10) float64 rows on `device`, whether any step draws z: None when unreadable)."""
    if not isinstance(coefficients, torch.Tensor) or coefficients.device.type == "cpu":
        c = check_coefficients(coefficients, batch, torch.device("cpu"), LEARNED_VARIANCE_WIDTH)
        return c.to(device), bool((c[:, _HAS_NOISE] != 0).any())
    c = check_coefficients(coefficients, batch, device, LEARNED_VARIANCE_WIDTH)
    readable = sync_checks_enabled() and not torch.cuda.is_current_stream_capturing()
    return c, (bool((c[:, _HAS_NOISE] != 0).any()) if readable else None)


def learned_variance_step(x_t: torch.Tensor, model_output: torch.Tensor, coefficients, *,
                          clip: tuple[float, float] | None = None, noise: torch.Tensor | None = None,
                          seed: int | None = None, samples=None, stream: int = 0,
                          out: torch.Tensor | None = None, backend: str = "auto",
                          classifier_grad: torch.Tensor | None = None,
                          classifier_coefficients=None) -> torch.Tensor:
    """x_prev from x_t (N, C, ...) and the model's (N, 2C, ...) output: one ancestral step with
    the per-element learned variance (Improved DDPM Eq. 15).

    x_t, noise, out: (N, C, ...) of one dtype (float32/bfloat16/float16; float64 on the torch
        backend) on one device; model_output (N, 2C, ...) of that dtype and device (its first C
        channels the eps/x0/v prediction, the last C the variance output v). NCHW-contiguous or
        channels_last are read in place (others are copied once to x_t's layout);
    coefficients: (10,) or (N, 10) float64 rows of reference.learned_variance_coefficients (a
        tensor on any device, a NumPy array or a sequence);
    clip: (lo, hi) clips x0_hat; noise / seed, samples, stream: z from `noise` or drawn in-kernel
        (counter (j, 0, samples[n], stream)); needed only where c9 (has_noise) != 0;
    out: optional output (may alias x_t); returned;
    classifier_grad: (N, C, ...) like x_t, grad_x log p(y | x_t, t), with classifier_coefficients
        (3,) or (N, 3) float (a0, a1, a2) already times the per-sample scale (the ddpm plan's
        rows are (0, 0, s has_noise), reference.classifier_guidance): x0_hat += a0 g, eps_hat +=
        a1 g before the clip, x_prev += a2 Sigma g before the noise, Sigma = exp(log sigma^2) of
        Eq. 15 per element (the gradient read as float32, math in float64).
    Host-resident coefficients are checked before launch; CUDA ones are not read back: a sample
    with has_noise != 0 and no noise source gets NaN (DDPM_KERNELS_SYNC_CHECKS=1 checks them).
    """
    x_t = check_float_tensor(x_t, "x_t")
    if x_t.dim() < 2:
        raise ValueError(f"x_t must be (N, C, ...) with a channel axis, got shape {tuple(x_t.shape)}")
    batch = x_t.shape[0]
    _check_model_output(model_output, x_t)
    clip = check_clip(clip)
    classifier_grad, classifier_coefficients = check_classifier_guidance(
        classifier_grad, classifier_coefficients, x_t)
    coefficients, host_has_noise = _coefficients(coefficients, batch, x_t.device)
    seed, samples_t, stream_v = check_step_noise_and_out(
        x_t, noise, seed, samples, stream, out, host_has_noise,
        "noise or seed is required where has_noise != 0 (a step into t > 0)")
    name = resolve_backend(backend, x_t.device, x_t.dtype)
    if x_t.numel() == 0:
        return torch.empty_like(x_t) if out is None else out
    if name == "torch":
        if seed is not None and samples_t is None:
            samples_t = torch.arange(batch, dtype=torch.int64, device=x_t.device)
        result = torch_ops.learned_variance_step(x_t, model_output, coefficients, clip, noise, seed,
                                                 samples_t, stream_v, host_has_noise, classifier_grad,
                                                 classifier_coefficients)
        return result if out is None else out.copy_(result)
    if name == "triton":
        from .triton.learned_variance_step import learned_variance_step as fused
    else:
        from .cupy.learned_variance_step import learned_variance_step as fused
    with device_guard(x_t.device):
        return fused(x_t, model_output, coefficients, clip, noise, seed, samples_t, stream_v, out,
                     classifier_grad, classifier_coefficients)
