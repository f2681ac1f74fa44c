"""`kernels.normal`: the project's noise stream (DESIGN contract 2) on any backend.

Implements reference.normal: Philox4x32-10 on counter (j, 0, samples[n], stream), key (seed lo,
seed hi); Triton's uint_to_uniform_float; Box-Muller, first output. The torch backend matches the
reference bit-for-bit on the CPU (Box-Muller in float64, rounded once); the Triton and CuPy
kernels agree within 1e-5 (float32 Box-Muller, as tl.randn) with integer words and uniforms
bit-exact.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import torch_ops
from .dispatch import device_guard, resolve_backend
from .validate import TORCH_DTYPES, check_index_values, check_numel_per_sample, check_seed

__all__ = ["normal", "check_sample_shape"]


def check_sample_shape(shape, name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints, got {type(shape).__name__}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"{name} must be a tuple of ints, got {shape!r}")
    if any(d < 0 for d in shape):
        raise ValueError(f"{name} must be non-negative, got {shape}")
    return tuple(int(d) for d in shape)


def normal(seed: int, samples: torch.Tensor | Sequence[int], stream: int | torch.Tensor,
           shape: tuple[int, ...] | int, *, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """Standard normals of the noise stream: (N, *shape) for N = len(samples)  (reference.normal).

    seed: int in [0, 2**64); samples: (N,) integer sample indices in [0, 2**32) (tensor or
    sequence); stream: int or (N,) integers in [0, 2**32); element j (flat, C order) of row n
    uses counter (j, 0, samples[n], stream[n]). device: defaults to samples' device (CPU for
    sequences). dtype: float32 (the stream's own precision), or float64/bfloat16/float16 (cast).
    """
    seed = check_seed(seed)
    shape = check_sample_shape(shape)
    if device is None:
        device = samples.device if isinstance(samples, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if not isinstance(dtype, torch.dtype) or dtype not in TORCH_DTYPES:
        raise TypeError(f"dtype must be one of {TORCH_DTYPES}, got {dtype!r}")
    samples = check_index_values(samples, "samples", None, device, allow_scalar=False)
    stream = check_index_values(stream, "stream", samples.numel(), device, allow_scalar=True)
    numel = int(np.prod(shape, dtype=np.int64))
    check_numel_per_sample(numel, "shape")
    # the stream is drawn in float32 on every backend and stored in `dtype` (float64 included):
    # dispatch on the draw's dtype, not the storage's
    name = resolve_backend(backend, device, torch.float32)
    if samples.numel() == 0 or numel == 0:
        return torch.empty((samples.numel(),) + shape, dtype=dtype, device=device)
    if name == "torch":
        return torch_ops.normal(seed, samples, stream, shape, dtype)
    if name == "triton":
        from .triton.normal import normal as fused
    else:
        from .cupy.normal import normal as fused
    with device_guard(device):
        return fused(seed, samples, stream, shape, dtype)
