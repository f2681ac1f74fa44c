"""Stage 2 of the fused group_norm_silu backward, shared by the Triton and CuPy backends.

Stage 1 (a kernel) leaves per-(n, group, chunk, channel) float32 sums of dz, dz x_hat and x_hat
(dz = dL/dz, z = w x_hat + b the pre-activation). Here they are summed over chunks (and samples)
with torch reductions on (N, C)-sized tensors: deterministic, no atomics.

    dbias[c]        = sum_{n, hw} dz
    dweight[c]      = sum_{n, hw} dz x_hat
    dx_hat          = w dz;  per group (n, g), over its M = Cg HW values:
    mean_dx_hat     = (1/M) sum dx_hat
    mean_dx_hat_x_hat = (1/M) sum dx_hat x_hat
    dx              = rstd (dx_hat - mean_dx_hat - x_hat mean_dx_hat_x_hat)     (stage 3, a kernel)
    dshift[n, c]    = sum_hw dx = rstd (w sum dz - HW mean_dx_hat - mean_dx_hat_x_hat sum x_hat)
"""

from __future__ import annotations

import torch

__all__ = ["backward_stage2"]


def backward_stage2(partial: torch.Tensor, weight, bias, shift, rstd: torch.Tensor, N: int, G: int,
                    Cg: int, HW: int, need_dweight: bool, need_dbias: bool, need_dshift: bool):
    """partial: (3, N G, S, Cg) float32 -> (mean_dx_hat (N G,), mean_dx_hat_x_hat (N G,),
    dweight (C,) | None, dbias (C,) | None, dshift (N, C) | None)."""
    C = G * Cg
    S = partial.shape[2]
    planes = 3 if (need_dshift and shift is not None) else 2  # plane 2 is written only for dshift
    sums = partial[:planes].reshape(planes, N, G, S, Cg).sum(dim=3)  # (planes, N, G, Cg)
    sum_dz, sum_dz_x_hat = sums[0], sums[1]
    sum_x_hat = sums[2] if planes == 3 else None
    w32 = weight.to(torch.float32).view(1, G, Cg) if weight is not None else None
    sum_dx_hat = sum_dz * w32 if w32 is not None else sum_dz
    sum_dx_hat_x_hat = sum_dz_x_hat * w32 if w32 is not None else sum_dz_x_hat
    M = Cg * HW
    mean_dx_hat = (sum_dx_hat.sum(dim=2) / M).reshape(N * G).contiguous()
    mean_dx_hat_x_hat = (sum_dx_hat_x_hat.sum(dim=2) / M).reshape(N * G).contiguous()
    dweight = dbias = dshift = None
    if need_dweight and weight is not None:
        dweight = sum_dz_x_hat.sum(dim=0).reshape(C).to(weight.dtype)
    if need_dbias and bias is not None:
        dbias = sum_dz.sum(dim=0).reshape(C).to(bias.dtype)
    if need_dshift and shift is not None:
        dshift = rstd.view(N, G, 1) * (sum_dx_hat - HW * mean_dx_hat.view(N, G, 1)
                                       - mean_dx_hat_x_hat.view(N, G, 1) * sum_x_hat)
        dshift = dshift.reshape(N, C).to(shift.dtype)
    return mean_dx_hat, mean_dx_hat_x_hat, dweight, dbias, dshift
