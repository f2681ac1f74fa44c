"""The torch backend's `group_norm_silu` for float32/bfloat16/float16: native kernels, centred input.

reference.group_norm_silu normalises the centred values, x_hat = (h - mean) rstd. torch's own
GroupNorm (F.group_norm, one fused ATen kernel forward and one backward) instead evaluates
h (rstd w) + (b - mean rstd w), which loses ulp(|h| rstd |w|) when a group's values are nearly
equal (rstd ~ 1/sqrt(eps)); that is why the op-by-op form in kernels.torch_ops exists. But that
form records ~35 small autograd ops per call, which dominated the CPU training step (issue 17).

Here the group mean is subtracted first, detached, and torch's fused GroupNorm runs on the centred values:

    h = x (+ shift);  m = mean_g(h) (no gradient);  y = silu(F.group_norm(h - m, G, w, b, eps))

GroupNorm is invariant to a per-group constant, so y is the reference's value, and the gradient
through m is exactly zero (d/dm of group_norm(h - m) = -sum_g dy/dh = 0): dropping it changes no
gradient. On centred input the fused kernel's mean is ~0 and its `b - mean rstd w` term is exact
to round-off, so the result has the reference's accuracy at one extra reduction and one
subtraction over plain F.group_norm (forward: mean, subtract, the fused kernel, SiLU; backward:
the two native backward kernels). Half types are computed in float32 and rounded once at the end.
Memory formats: NCHW and channels_last are both kept (the ATen kernels support both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["group_norm_silu"]


def _group_mean(h: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, 1, ...) mean of each (sample, group), broadcast to the group's channels, no gradient."""
    n, c = h.shape[:2]
    spatial = tuple(range(2, h.dim()))
    channel_mean = h.detach().mean(dim=spatial) if spatial else h.detach()        # (N, C)
    group_mean = channel_mean.view(n, groups, c // groups).mean(dim=2, keepdim=True)
    return group_mean.expand(n, groups, c // groups).reshape((n, c) + (1,) * len(spatial))


def group_norm_silu(x, weight, bias, groups: int, eps: float, activation: bool, shift):
    """silu(group_norm(x + shift)) as the reference computes it (inputs validated; any dtype but
    float64, which keeps the op-by-op form in kernels.torch_ops)."""
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    h = x.to(compute)
    if shift is not None:
        h = h + shift.to(compute).reshape(shift.shape + (1,) * (x.dim() - 2))
    h = h - _group_mean(h, groups)
    # torch.group_norm, not F.group_norm: the latter refuses groups of one value (a batch-norm
    # style check), which the reference defines (x_hat = 0)
    y = torch.group_norm(h, groups, None if weight is None else weight.to(compute),
                         None if bias is None else bias.to(compute), eps, False)
    if activation:
        y = F.silu(y, inplace=not (torch.is_grad_enabled() and y.requires_grad))
    return y.to(x.dtype)
