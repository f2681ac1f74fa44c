"""`kernels.layer_norm_modulate`: LayerNorm + DiT's adaLN modulation with autograd (Peebles & Xie 2023).

    x_hat = (x - mean_D(x)) / sqrt(var_D(x) + eps)       per token, no affine (biased variance)
    y     = x_hat * (1 + scale[n]) + shift[n]             shift, scale (N, D) from the condition

Reference: reference.layer_norm_modulate / reference.layer_norm_modulate_backward. The fused
backends (triton, cupy) run one program per token row for the forward (saving only mean and
rstd, float32 (N L,)) and, for the backward, one pass per row for dx (x_hat recomputed from x)
plus one program per (sample, feature tile) that sums dshift = sum_L dy and dscale =
sum_L dy x_hat over the tokens in a fixed order: deterministic, no atomics. The torch backend
writes the reference's formulas with torch ops and plain autograd (any device, float64 too).

The transformer's analogue of group_norm_silu: the DiT's every LayerNorm is this op.
"""

from __future__ import annotations

import torch

from . import torch_ops
from .dispatch import device_guard, resolve_backend
from .validate import TORCH_DTYPES, check_eps, check_float_tensor, check_same_device

__all__ = ["layer_norm_modulate", "LayerNormModulateFunction", "MAX_FEATURES"]

MAX_FEATURES = 16384   # one token row per program (fused backends): D <= 16384 floats in registers


def _fused_module(backend: str):
    if backend == "triton":
        from .triton import layer_norm_modulate as module
    else:
        from .cupy import layer_norm_modulate as module
    return module


class LayerNormModulateFunction(torch.autograd.Function):
    """Autograd for the fused kernels: saves x, scale (float32) and the (N L,) mean / rstd."""

    @staticmethod
    def forward(ctx, x, shift, scale, eps: float, backend: str):
        module = _fused_module(backend)
        shift32, scale32 = shift.float(), scale.float()   # (N, D): small; kernels read float32
        with device_guard(x.device):
            y, mean, rstd = module.forward(x, shift32, scale32, eps)
        ctx.save_for_backward(x, scale32, mean, rstd)
        ctx.backend, ctx.dtypes = backend, (shift.dtype, scale.dtype)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, scale32, mean, rstd = ctx.saved_tensors
        module = _fused_module(ctx.backend)
        with device_guard(x.device):
            dx, dshift, dscale = module.backward(dy.contiguous(), x, scale32, mean, rstd, ctx.needs_input_grad[:3])
        dshift = None if dshift is None else dshift.to(ctx.dtypes[0])
        dscale = None if dscale is None else dscale.to(ctx.dtypes[1])
        return dx, dshift, dscale, None, None


def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, *,
                        backend: str = "auto") -> torch.Tensor:
    """LayerNorm(x) (1 + scale) + shift, differentiable in x, shift and scale.

    x: (N, L, D) float32/bfloat16/float16 (float64 on the torch backend); the fused backends read
       it in place when its last dim is contiguous (any N, L strides) and copy it once otherwise;
    shift, scale: (N, D) of any float dtype and strides (e.g. chunks of one (N, 6D) tensor),
       read as float32; eps > 0. Statistics and arithmetic in float32 (float64 for float64).
    Returns y (N, L, D) contiguous, in x's dtype.
    """
    x = check_float_tensor(x, "x", min_ndim=3)
    if x.dim() != 3:
        raise ValueError(f"x must be (N, L, D) tokens, got shape {tuple(x.shape)}")
    n, _, d = x.shape
    for name, value in (("shift", shift), ("scale", scale)):
        check_float_tensor(value, name, dtypes=TORCH_DTYPES, min_ndim=2)
        if tuple(value.shape) != (n, d):
            raise ValueError(f"{name} must have shape (N, D) = {(n, d)}, got {tuple(value.shape)}")
        check_same_device(value, name, x, "x")
    eps = check_eps(eps)
    name = resolve_backend(backend, x.device, x.dtype)
    if name == "torch" or x.numel() == 0:
        return torch_ops.layer_norm_modulate(x, shift, scale, eps)
    if d > MAX_FEATURES:
        raise ValueError(f"x has D = {d} features; the fused {name} kernel holds one row per program, "
                         f"D <= {MAX_FEATURES} (use backend='torch')")
    return LayerNormModulateFunction.apply(x, shift, scale, eps, name)
