"""Memory layouts the fused kernels read without copies: NCHW-contiguous and channels_last.

A tensor (N, C, *spatial) is "dense" in one of two orders:
    "contiguous"     memory order (N, C, *spatial)  (C order)
    "channels_last"  memory order (N, *spatial, C)  (torch.channels_last / channels_last_3d)
Elementwise kernels walk memory linearly and, where they need the logical (C-order) element
index (the noise stream is indexed by it), map memory positions back to it.
"""

from __future__ import annotations

import torch

__all__ = ["dense_layout", "same_layout_or_copy", "empty_like_layout"]


def _expected_strides(shape: tuple[int, ...], order: tuple[int, ...]) -> list[int]:
    strides = [0] * len(shape)
    step = 1
    for d in reversed(order):
        strides[d] = step
        step *= shape[d]
    return strides


def _matches(x: torch.Tensor, order: tuple[int, ...]) -> bool:
    expected = _expected_strides(tuple(x.shape), order)
    # dimensions of size 1 may carry any stride
    return all(size == 1 or s == e for s, e, size in zip(x.stride(), expected, x.shape))


def dense_layout(x: torch.Tensor) -> str | None:
    """"contiguous", "channels_last" or None (any other striding)."""
    if x.is_contiguous():
        return "contiguous"
    if x.dim() >= 3:
        order = (0,) + tuple(range(2, x.dim())) + (1,)
        if _matches(x, order):
            return "channels_last"
    return None


def same_layout_or_copy(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x in `layout` (no copy when it already is; otherwise one copy, documented by the callers)."""
    if dense_layout(x) == layout:
        return x
    if layout == "contiguous":
        return x.contiguous()
    order = (0,) + tuple(range(2, x.dim())) + (1,)
    return x.permute(order).contiguous().permute(_inverse(order))


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(order)
    for i, d in enumerate(order):
        inverse[d] = i
    return tuple(inverse)


def empty_like_layout(x: torch.Tensor, layout: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor of x's shape in `layout`."""
    dtype = x.dtype if dtype is None else dtype
    if layout == "contiguous":
        return torch.empty(x.shape, dtype=dtype, device=x.device)
    order = (0,) + tuple(range(2, x.dim())) + (1,)
    permuted_shape = [x.shape[d] for d in order]
    return torch.empty(permuted_shape, dtype=dtype, device=x.device).permute(_inverse(order))


def channels_and_spatial(x: torch.Tensor) -> tuple[int, int]:
    """(C, prod(spatial)) of a (N, C, *spatial) tensor; (numel per sample, 1) below 3 dims."""
    if x.dim() < 3:
        per_sample = 1
        for d in x.shape[1:]:
            per_sample *= d
        return per_sample, 1
    spatial = 1
    for d in x.shape[2:]:
        spatial *= d
    return x.shape[1], spatial
