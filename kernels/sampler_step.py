"""`kernels.sampler_step`: one DDPM or DDIM update in one fused pass  (reference.sampler_step).

The rule, with per-sample float64 coefficients c (columns reference.STEP_COEFFICIENTS):

    out     = uncond + w (cond - uncond)       (classifier-free guidance, Ho & Salimans 2022)
    x0_hat  = c0 x_t + c1 out
    eps_hat = c2 x_t + c3 out
    x0_hat  = clip(x0_hat, lo, hi)             (optional)
    x_prev  = c4 x0_hat + c5 x_t + c6 eps_hat + c7 z    (noise term only where sigma = c7 != 0)

    optional classifier guidance (a gradient g and per-sample (a0, a1, a2), scale included):
    x0_hat += a0 g and eps_hat += a1 g before the clip, x_prev += a2 g before the noise term

c comes from reference.ddpm_coefficients (DDPM Alg. 2, Eqs. 6-7) or reference.ddim_coefficients
(DDIM Eq. 12). Every backend evaluates the rule in float64 registers from the stored inputs and
rounds once to x_t.dtype: with eps-prediction near t = T, c0 and c1 reach ~1/sqrt(alpha_bar)
(~160 for the linear schedule) and float32 evaluation would lose ~ulp(160 |x|) to cancellation.
"""

from __future__ import annotations

import torch

from . import torch_ops
from .dispatch import device_guard, resolve_backend
from .validate import (
    check_classifier_guidance,
    check_clip,
    check_coefficients,
    check_finite_number,
    check_float_tensor,
    check_like,
    check_step_noise_and_out,
    sync_checks_enabled,
)

__all__ = ["sampler_step"]


def sampler_step(x_t: torch.Tensor, model_output: torch.Tensor, coefficients, *,
                 model_output_uncond: torch.Tensor | None = None, guidance_scale: float = 1.0,
                 clip: tuple[float, float] | None = None, noise: torch.Tensor | None = None,
                 seed: int | None = None, samples=None, stream: int = 0,
                 out: torch.Tensor | None = None, backend: str = "auto",
                 classifier_grad: torch.Tensor | None = None, classifier_coefficients=None) -> torch.Tensor:
    """x_prev from x_t and the model output: one DDPM (Alg. 2) or DDIM (Eq. 12) step.

    x_t, model_output (the conditional output under guidance), model_output_uncond, noise, out:
        (N, ...) tensors of one dtype (float32/bfloat16/float16; float64 on the torch backend)
        on one device; NCHW-contiguous or channels_last are read in place (other strides are
        copied once to x_t's layout);
    coefficients: (8,) or (N, 8), a float tensor on any device or a NumPy array/sequence
        (float64 from reference.ddpm_coefficients / ddim_coefficients; moved to x_t's device);
    guidance_scale: w of out = uncond + w (cond - uncond); only with model_output_uncond;
    clip: (lo, hi) clips x0_hat;
    noise / seed: z from `noise`, or drawn in-kernel with counter (j, 0, samples[n], stream)
        (samples defaults to arange(N); the sampler's step k uses stream k + 1). Needed only
        where sigma != 0;
    out: optional output (may alias x_t, for an in-place update); returned.
    classifier_grad: (N, ...) like x_t, grad_x log p(y | x_t, t), with classifier_coefficients
        (3,) or (N, 3) float (a0, a1, a2) already times the per-sample scale: classifier guidance
        (reference.classifier_guidance): x0_hat += a0 g, eps_hat += a1 g before the clip,
        x_prev += a2 g before the noise term (the gradient read as float32, math in float64).
    Host-resident coefficients are checked (finite; a noise source where sigma != 0) before
    launch; CUDA coefficients are not read back: a sample whose sigma != 0 without a noise
    source gets NaN (set DDPM_KERNELS_SYNC_CHECKS=1 to check them on the host instead).
    """
    x_t = check_float_tensor(x_t, "x_t")
    batch = x_t.shape[0]
    check_like(model_output, "model_output", x_t)
    if model_output_uncond is not None:
        check_like(model_output_uncond, "model_output_uncond", x_t)
    guidance_scale = check_finite_number(guidance_scale, "guidance_scale")
    if model_output_uncond is None and guidance_scale != 1.0:
        raise ValueError(f"guidance_scale={guidance_scale} needs model_output_uncond (classifier-free "
                         f"guidance combines the conditional and unconditional outputs)")
    clip = check_clip(clip)
    classifier_grad, classifier_coefficients = check_classifier_guidance(
        classifier_grad, classifier_coefficients, x_t)
    if not isinstance(coefficients, torch.Tensor) or coefficients.device.type == "cpu":
        # host values: checked (finite, noise source where sigma != 0) before the one copy over
        coefficients = check_coefficients(coefficients, batch, torch.device("cpu"))
        host_sigma_nonzero = bool((coefficients[:, 7] != 0).any())
        coefficients = coefficients.to(x_t.device)
    else:
        coefficients = check_coefficients(coefficients, batch, x_t.device)
        readable = sync_checks_enabled() and not torch.cuda.is_current_stream_capturing()
        host_sigma_nonzero = bool((coefficients[:, 7] != 0).any()) if readable else None
    seed, samples_t, stream_v = check_step_noise_and_out(
        x_t, noise, seed, samples, stream, out, host_sigma_nonzero,
        "noise or seed is required when sigma != 0 (t > 0 for DDPM, eta > 0 for DDIM)")
    name = resolve_backend(backend, x_t.device, x_t.dtype)
    if x_t.numel() == 0:
        return torch.empty_like(x_t) if out is None else out
    if name == "torch":
        if seed is not None and samples_t is None:
            samples_t = torch.arange(batch, dtype=torch.int64, device=x_t.device)
        result = torch_ops.sampler_step(x_t, model_output, coefficients, model_output_uncond,
                                        guidance_scale, clip, noise, seed, samples_t, stream_v,
                                        host_sigma_nonzero, classifier_grad, classifier_coefficients)
        if out is None:
            return result
        return out.copy_(result)
    if name == "triton":
        from .triton.sampler_step import sampler_step as fused
    else:
        from .cupy.sampler_step import sampler_step as fused
    with device_guard(x_t.device):
        return fused(x_t, model_output, coefficients, model_output_uncond, guidance_scale, clip,
                     noise, seed, samples_t, stream_v, out, classifier_grad, classifier_coefficients)


