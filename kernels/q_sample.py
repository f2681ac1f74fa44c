"""`kernels.q_sample`: forward noising in one pass  (DDPM Eq. 4; reference.q_sample).

    x_t = sqrt_alpha_bar[t] * x0 + sqrt_one_minus_alpha_bar[t] * eps

per-sample t, eps given or drawn in-kernel from the noise stream (and then written out for the
loss). Fused backends compute in float32 (one rounding to x0.dtype at the end).
"""

from __future__ import annotations

import torch

from . import torch_ops
from .dispatch import device_guard, resolve_backend
from .validate import (
    check_float_tensor,
    check_index_values,
    check_numel_per_sample,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    check_seed,
    check_table,
    check_timesteps,
)

__all__ = ["q_sample"]


def q_sample(x0: torch.Tensor, t: torch.Tensor, sqrt_alpha_bar: torch.Tensor,
             sqrt_one_minus_alpha_bar: torch.Tensor, noise: torch.Tensor | None = None, *,
             seed: int | None = None, samples=None, stream: int = 0,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Noise a batch: returns (x_t, noise), both shaped and typed like x0.

    x0: (N, ...) float32/bfloat16/float16 (float64 on the torch backend), NCHW-contiguous or
        channels_last read in place (any other striding is copied once to contiguous);
    t: (N,) int64 (or an int for the whole batch) on x0's device, in [0, T);
    sqrt_alpha_bar, sqrt_one_minus_alpha_bar: (T,) float32/float64 on x0's device, cast from
        the reference schedule's tables (never recomputed here);
    noise: (N, ...) like x0, or None to draw eps in-kernel from the noise stream: element j of
        sample n uses counter (j, 0, samples[n], stream) with key `seed`; samples defaults to
        arange(N). The drawn eps (float32) is used as is and returned rounded to x0.dtype.
    Range checks of t: on the host for CPU tensors (or with DDPM_KERNELS_SYNC_CHECKS=1); for
    CUDA tensors the kernels guard in-kernel without synchronising: a sample whose t is out of
    range gets NaN in x_t.
    """
    x0 = check_float_tensor(x0, "x0")
    batch = x0.shape[0]
    check_table(sqrt_alpha_bar, "sqrt_alpha_bar", x0.device)
    check_table(sqrt_one_minus_alpha_bar, "sqrt_one_minus_alpha_bar", x0.device)
    T = sqrt_alpha_bar.numel()
    if sqrt_one_minus_alpha_bar.numel() != T:
        raise ValueError(f"sqrt_one_minus_alpha_bar must have the shape of sqrt_alpha_bar ({T},), "
                         f"got {tuple(sqrt_one_minus_alpha_bar.shape)}")
    t = check_timesteps(t, "t", batch, T, x0.device)
    if noise is not None:
        check_float_tensor(noise, "noise")
        check_same_shape(noise, "noise", x0, "x0")
        check_same_device(noise, "noise", x0, "x0")
        check_same_dtype(noise, "noise", x0, "x0")
        if seed is not None:
            raise ValueError("pass either noise or seed (in-kernel noise), not both")
        samples_t, stream_v = None, 0
    else:
        if seed is None:
            raise ValueError("seed is required when noise is None (eps is drawn in-kernel)")
        seed = check_seed(seed)
        check_numel_per_sample(x0[0].numel() if batch else 0, "x0")
        samples_t = None if samples is None else check_index_values(samples, "samples", batch, x0.device,
                                                                    allow_scalar=False)
        stream_v = check_index_values(stream, "stream", batch, x0.device, allow_scalar=True)
    name = resolve_backend(backend, x0.device, x0.dtype)
    if x0.numel() == 0:
        return torch.empty_like(x0), (torch.empty_like(x0) if noise is None else noise)
    if name == "torch":
        if noise is None and samples_t is None:
            samples_t = torch.arange(batch, dtype=torch.int64, device=x0.device)
        return torch_ops.q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, noise, seed,
                                  samples_t, stream_v)
    if name == "triton":
        from .triton.q_sample import q_sample as fused
    else:
        from .cupy.q_sample import q_sample as fused
    with device_guard(x0.device):
        return fused(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, noise, seed, samples_t, stream_v)
