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

__all__ = ["group_norm_silu", "group_norm_silu_traced"]


def _group_mean(h: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, 1, ...) mean of each (sample, group), broadcast to the group's channels, no gradient."""
    n, c = h.shape[:2]
    spatial = tuple(range(2, h.dim()))
    channel_mean = h.detach().mean(dim=spatial) if spatial else h.detach()        # (N, C)
    group_mean = channel_mean.view(n, groups, c // groups).mean(dim=2, keepdim=True)
    return group_mean.expand(n, groups, c // groups).reshape((n, c) + (1,) * len(spatial))


class _CentredGroupNorm(torch.autograd.Function):
    """GroupNorm of centred input: ATen's fused forward, the reference's backward written out.

    ATen's backward evaluates dx = rstd w dy - rstd mean_g(w dy) - ..., products of rstd taken
    before the cancelling subtraction: in a group of one value (x_hat = 0, dx = 0 exactly) or of
    nearly equal values (rstd ~ 1/sqrt(eps)) that leaves ulp(rstd |w dy|), ~1e-4 at eps = 1e-6.
    reference.group_norm_silu_backward subtracts first, dx = rstd (dx_hat - mean_g(dx_hat) -
    x_hat mean_g(dx_hat x_hat)), dx_hat = w dy, and so does this backward (float32 sums)."""

    @staticmethod
    def forward(ctx, h, weight, bias, groups: int, eps: float):
        n, c = h.shape[:2]
        y, mean, rstd = torch.ops.aten.native_group_norm(h, weight, bias, n, c, h.numel() // max(n * c, 1),
                                                         groups, eps)
        ctx.save_for_backward(h, weight, mean, rstd)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        h, weight, mean, rstd = ctx.saved_tensors
        groups, (n, c) = ctx.groups, h.shape[:2]
        per_channel = (n, c) + (1,) * (h.dim() - 2)
        spatial = tuple(range(2, h.dim()))

        def channel_sum(t):  # (N, C) sums over the spatial axes
            return t.sum(dim=spatial) if spatial else t

        def group_to_channels(g):  # (N, G) -> (N, C, 1, ...)
            return g.reshape(n, groups, 1).expand(n, groups, c // groups).reshape(per_channel)

        rstd_c = group_to_channels(rstd)
        # h's own group mean (the float32 centring leaves a residue of ~ulp(original mean), which
        # rstd ~ 1/sqrt(eps) would magnify), as the forward normalised with
        x_hat = (h - group_to_channels(mean)).mul_(rstd_c)
        dy_x_hat = channel_sum(dy * x_hat)                                  # (N, C)
        dy_sum = channel_sum(dy)                                            # (N, C)
        dweight = dy_x_hat.sum(dim=0) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = dy_sum.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            w = weight.reshape(1, c) if weight is not None else None
            count = (c // groups) * (h.numel() // max(n * c, 1))
            m1 = (dy_sum if w is None else dy_sum * w).reshape(n, groups, -1).sum(dim=2) / count
            m2 = (dy_x_hat if w is None else dy_x_hat * w).reshape(n, groups, -1).sum(dim=2) / count
            dx_hat = dy if w is None else dy * w.reshape((1, c) + per_channel[2:])
            dx = dx_hat.sub(group_to_channels(m1)).sub_(x_hat * group_to_channels(m2)).mul_(rstd_c)
        return dx, dweight, dbias, None, None


def group_norm_silu(x, weight, bias, groups: int, eps: float, activation: bool, shift):
    """silu(group_norm(x + shift)) as the reference computes it (inputs validated; any dtype but
    float64, which keeps the op-by-op form in kernels.torch_ops)."""
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    h = x.to(compute)
    if shift is not None:
        h = h + shift.to(compute).reshape(shift.shape + (1,) * (x.dim() - 2))
    h = h - _group_mean(h, groups)
    # ATen's native_group_norm, not F.group_norm: the latter refuses groups of one value (a
    # batch-norm style check), which the reference defines (x_hat = 0)
    y = _CentredGroupNorm.apply(h, None if weight is None else weight.to(compute),
                                None if bias is None else bias.to(compute), groups, eps)
    if activation:
        y = F.silu(y, inplace=not (torch.is_grad_enabled() and y.requires_grad))
    return y.to(x.dtype)


def group_norm_silu_traced(x, weight, bias, groups: int, eps: float, activation: bool, shift):
    """The form torch.compile traces: F.group_norm and F.silu with their plain autograd, which
    inductor lowers to its own fused reductions (the compiled C++ op or a custom autograd Function
    stay opaque to it; the centring above adds a pass: both measured slower, issue 17). Its forward
    is centred ((h - mean) rstd, a Welford variance); its backward is ATen's decomposition
    (dx = rstd w dy + c2 h + c3), which loses ~ulp(|mean|) where |mean| >> std: held to the
    reference at 1e-5 on zero-mean data and 3e-4 at mean 300, std 1 under inductor
    (tests/test_group_norm_silu_cpu_compiled.py)."""
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    h = x.to(compute)
    if shift is not None:
        h = h + shift.to(compute).reshape(shift.shape + (1,) * (x.dim() - 2))
    y = F.group_norm(h, groups, None if weight is None else weight.to(compute),
                     None if bias is None else bias.to(compute), eps)
    if activation:
        y = F.silu(y)
    return y.to(x.dtype)
