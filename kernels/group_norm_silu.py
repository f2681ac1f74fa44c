"""`kernels.group_norm_silu`: GroupNorm (+ SiLU) with autograd, and its nn.Module.

    h     = x + shift[n, c]                            (optional: the ResBlock's time-embedding add)
    x_hat = (h - mean_g) / sqrt(var_g + eps)           (Wu & He 2018, Eq. 1; biased variance)
    z     = weight[c] x_hat + bias[c]
    y     = z * sigmoid(z)  if activation else z       (SiLU, Elfwing et al. 2018)

Reference: reference.group_norm_silu / reference.group_norm_silu_backward (without shift: the
reference's x is our h). The fused backends (triton, cupy) run the forward as a deterministic
two-stage reduction (per-chunk Welford partials, combined in a fixed order) and a normalising
pass; the backward recomputes x_hat and the activation from x (only mean and rstd are saved)
and reduces the weight/bias gradients in two deterministic stages, never with atomics.
The torch backend writes the reference's formulas with torch ops: in float64 op by op with plain
autograd (double backward works), in float32/bfloat16/float16 as one autograd.Function with the
backward written out (kernels/group_norm_silu_torch.py: a few whole-tensor passes). On the CPU,
float32 (NCHW or channels_last) runs compiled C++ instead (kernels/cpu/group_norm_silu.cpp:
forward and backward each fused, float64 statistics) where a compiler is present.
"""

from __future__ import annotations

import torch
from torch import nn

from . import group_norm_silu_torch, torch_ops
from .cpu import group_norm_silu as cpu_group_norm_silu
from .dispatch import device_guard, resolve_backend
from .validate import (
    FAST_DTYPES,
    check_eps,
    check_float_tensor,
    check_groups,
    check_same_device,
)

__all__ = ["group_norm_silu", "GroupNormSiLU", "GroupNormSiLUFunction"]


def _fused_module(backend: str):
    if backend == "cpu":  # the torch backend's compiled CPU path (kernels/cpu/group_norm_silu.cpp)
        module = cpu_group_norm_silu
    elif backend == "triton":
        from .triton import group_norm_silu as module
    else:
        from .cupy import group_norm_silu as module
    return module


class GroupNormSiLUFunction(torch.autograd.Function):
    """Autograd for the fused kernels: saves x, weight, bias, shift and the (N, G) mean/rstd."""

    @staticmethod
    def forward(ctx, x, weight, bias, shift, groups: int, eps: float, activation: bool, backend: str):
        module = _fused_module(backend)
        with device_guard(x.device):
            y, mean, rstd = module.forward(x, weight, bias, shift, groups, eps, activation)
        ctx.save_for_backward(x, weight, bias, shift, mean, rstd)
        ctx.groups, ctx.activation, ctx.backend = groups, activation, backend
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, bias, shift, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        module = _fused_module(ctx.backend)
        with device_guard(x.device):
            dx, dweight, dbias, dshift = module.backward(dy, x, weight, bias, shift, mean, rstd,
                                                         ctx.groups, ctx.activation, needs)
        return dx, dweight, dbias, dshift, None, None, None, None


def _check_param(p, name: str, x: torch.Tensor, shape: tuple[int, ...], dtypes) -> None:
    if p is None:
        return
    check_float_tensor(p, name, dtypes=dtypes)
    if tuple(p.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(p.shape)}")
    check_same_device(p, name, x, "x")


def group_norm_silu(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    groups: int, eps: float = 1e-5, activation: bool = True, *,
                    shift: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """silu(group_norm(x + shift)) (or without the SiLU), differentiable in x, weight, bias, shift.

    x: (N, C, *spatial) float32/bfloat16/float16 (float64 on the torch backend), NCHW-contiguous
       or channels_last, read in place (other strides are copied once to contiguous);
    weight, bias: (C,) or None (no affine); shift: (N, C) or None, added to x before the norm;
    groups divides C; eps > 0. Statistics accumulate in float32 (float64 for float64 inputs).
    Returns y shaped, typed and laid out like x.
    """
    x = check_float_tensor(x, "x", min_ndim=2)
    C = x.shape[1]
    groups = check_groups(groups, C)
    eps = check_eps(eps)
    if not isinstance(activation, bool):
        raise TypeError(f"activation must be a bool, got {type(activation).__name__}")
    name = resolve_backend(backend, x.device, x.dtype)
    param_dtypes = FAST_DTYPES if name != "torch" else FAST_DTYPES + (torch.float64,)
    _check_param(weight, "weight", x, (C,), param_dtypes)
    _check_param(bias, "bias", x, (C,), param_dtypes)
    _check_param(shift, "shift", x, (x.shape[0], C), param_dtypes)
    if x.numel() == 0 or (name == "torch" and x.dtype == torch.float64):
        return torch_ops.group_norm_silu(x, weight, bias, groups, eps, activation, shift)
    if name == "torch":  # issue 17 (CPU speed): fused C++ for float32 on the CPU, where it
        # builds; else (half types, other strides, no compiler) the hand-written backward over
        # ATen's fused GroupNorm; under torch.compile, F.group_norm for inductor to fuse
        if torch.compiler.is_compiling():
            return group_norm_silu_torch.group_norm_silu_traced(x, weight, bias, groups, eps, activation, shift)
        if cpu_group_norm_silu.applies(x, weight, bias, shift):
            return GroupNormSiLUFunction.apply(x, weight, bias, shift, groups, eps, activation, "cpu")
        return group_norm_silu_torch.group_norm_silu(x, weight, bias, groups, eps, activation, shift)
    return GroupNormSiLUFunction.apply(x, weight, bias, shift, groups, eps, activation, name)


class GroupNormSiLU(nn.Module):
    """GroupNorm followed by SiLU as one op (DESIGN contract 3: every GroupNorm + SiLU is one op).

    Parameters `weight` (ones) and `bias` (zeros) of shape (C,) when affine, so state-dict names
    read `...norm1.weight` as in diffusers' UNet2DModel. forward(x, shift=None).
    """

    def __init__(self, num_channels: int, groups: int, eps: float = 1e-5, activation: bool = True,
                 affine: bool = True, *, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = num_channels
        self.groups = check_groups(groups, num_channels)
        self.eps = check_eps(eps)
        self.activation = bool(activation)
        self.affine = bool(affine)
        self.backend = backend
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        return group_norm_silu(x, self.weight, self.bias, self.groups, self.eps, self.activation,
                               shift=shift, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, groups={self.groups}, eps={self.eps}, "
                f"activation={self.activation}, affine={self.affine}, backend={self.backend!r}")
