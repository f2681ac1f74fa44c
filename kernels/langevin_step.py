"""`kernels.langevin_step`: one Langevin / predictor / corrector update in one fused pass
(reference.langevin_step).

The rule, with per-sample float64 coefficients c (columns reference.LANGEVIN_STEP_COEFFICIENTS:
x_scale, score_scale, step, noise_scale):

    score  = c1 out                              (-1/sigma_t for a VE score model, -1/sqrt(1 - alpha_bar_t) VP)
    x_next = (c0 x + c2 score) + c3 z            (z only where c3 != 0)

Langevin dynamics x + eps score + sqrt(2 eps) z (Song & Ermon 2019, Eq. 4) is c = (1, c1, eps,
sqrt(2 eps)); the predictors and the final denoising step of the score samplers are other rows
(reference/langevin_step.py). The corrector's snr step (Song et al. 2021, Alg. 4/5) needs the
norms of the score and of z per sample: `ddpm.Sampler` draws z once (kernels.normal), forms the
(N, 4) rows with those norms and passes z as `noise`. Every backend evaluates the rule in float64
from the stored inputs and rounds once to x.dtype (float64 -> float32 -> storage).
"""

from __future__ import annotations

import torch

from . import torch_ops
from .dispatch import device_guard, resolve_backend
from .validate import check_coefficients, check_float_tensor, check_like, check_step_noise_and_out, sync_checks_enabled

__all__ = ["langevin_step", "LANGEVIN_STEP_WIDTH"]

LANGEVIN_STEP_WIDTH = 4  # len(reference.LANGEVIN_STEP_COEFFICIENTS)
_NOISE_SCALE = 3


def _coefficients(coefficients, batch: int, device: torch.device):
    """(the (N, 4) float64 rows on `device`, whether any sample draws z: None when unreadable)."""
    if not isinstance(coefficients, torch.Tensor) or coefficients.device.type == "cpu":
        c = check_coefficients(coefficients, batch, torch.device("cpu"), LANGEVIN_STEP_WIDTH)
        return c.to(device), bool((c[:, _NOISE_SCALE] != 0).any())
    c = check_coefficients(coefficients, batch, device, LANGEVIN_STEP_WIDTH)
    readable = sync_checks_enabled() and not torch.cuda.is_current_stream_capturing()
    return c, (bool((c[:, _NOISE_SCALE] != 0).any()) if readable else None)


def langevin_step(x: torch.Tensor, model_output: torch.Tensor, coefficients, *,
                  noise: torch.Tensor | None = None, seed: int | None = None, samples=None,
                  stream: int = 0, out: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """x_next = (c0 x + c2 (c1 model_output)) + c3 z: one Langevin-type step (module docstring).

    x, model_output, noise, out: (N, ...) tensors of one dtype (float32/bfloat16/float16;
        float64 on the torch backend) on one device; NCHW-contiguous or channels_last are read
        in place (others are copied once to x's layout);
    coefficients: (4,) or (N, 4) float64 rows (reference.LANGEVIN_STEP_COEFFICIENTS), a tensor on
        any device, a NumPy array or a sequence;
    noise / seed: z from `noise` or drawn in-kernel with counter (j, 0, samples[n], stream)
        (samples default arange(N)); needed only where c3 (noise_scale) != 0;
    out: optional output (may alias x); returned.
    Host-resident coefficients are checked before launch; CUDA ones are not read back: a sample
    with c3 != 0 and no noise source gets NaN (DDPM_KERNELS_SYNC_CHECKS=1 checks them).
    """
    x = check_float_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must be (N, ...), got shape {tuple(x.shape)}")
    batch = x.shape[0]
    check_like(model_output, "model_output", x)
    coefficients, host_has_noise = _coefficients(coefficients, batch, x.device)
    seed, samples_t, stream_v = check_step_noise_and_out(
        x, noise, seed, samples, stream, out, host_has_noise,
        "noise or seed is required where noise_scale != 0 (a Langevin step draws z)")
    name = resolve_backend(backend, x.device, x.dtype)
    if x.numel() == 0:
        return torch.empty_like(x) if out is None else out
    if name == "torch":
        if seed is not None and samples_t is None:
            samples_t = torch.arange(batch, dtype=torch.int64, device=x.device)
        result = torch_ops.langevin_step(x, model_output, coefficients, noise, seed, samples_t,
                                         stream_v, host_has_noise)
        return result if out is None else out.copy_(result)
    if name == "triton":
        from .triton.langevin_step import langevin_step as fused
    else:
        from .cupy.langevin_step import langevin_step as fused
    with device_guard(x.device):
        return fused(x, model_output, coefficients, noise, seed, samples_t, stream_v, out)
