"""Shared setup of the kernels/ tests: which (backend, device) pairs run here, and tolerances.

Every kernels test is parametrised over BACKEND_DEVICES: the torch backend always runs; Triton
runs under TRITON_INTERPRET=1 on the CPU (set by conftest.py when there is no CUDA) and compiled
on CUDA; CuPy and the CUDA cases skip, saying why, where there is no CUDA device.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import kernels
from kernels.dispatch import triton_interpreted

HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None
INTERPRETED = triton_interpreted()

_NO_CUDA = "needs a CUDA device (none here)"


def _param(backend: str, device: str, skip_reason: str | None):
    marks = [pytest.mark.skip(reason=skip_reason)] if skip_reason else []
    if device == "cuda":
        marks.append(pytest.mark.cuda)
    return pytest.param(backend, device, id=f"{backend}-{device}", marks=marks)


BACKEND_DEVICES = [
    _param("torch", "cpu", None),
    _param("triton", "cpu", None if INTERPRETED else
           "Triton interpreter not enabled (TRITON_INTERPRET=1 is set only without CUDA)"),
    _param("torch", "cuda", None if HAS_CUDA else _NO_CUDA),
    _param("triton", "cuda", None if HAS_CUDA and not INTERPRETED else
           (_NO_CUDA if not HAS_CUDA else "Triton kernels were built for the interpreter")),
    _param("cupy", "cuda", None if HAS_CUDA and HAS_CUPY else
           (_NO_CUDA if not HAS_CUDA else "cupy is not installed")),
]
FUSED_BACKEND_DEVICES = [p for p in BACKEND_DEVICES if p.values[0] != "torch"]

# (atol, rtol) per dtype, in one place: float32 ~1e-5; half types as torch.testing's defaults.
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-5, 1.6e-2),
    torch.float16: (1e-5, 1e-3),
}
FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
NORMAL_ATOL = 1e-5  # float32 Box-Muller (GPU math libraries) vs the reference's float64-then-round


def dtypes_for(backend: str):
    return FAST_DTYPES + ((torch.float64,) if backend == "torch" else ())


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def as_numpy64(x: torch.Tensor):
    """The exact values of x (any float dtype) as a float64 NumPy array."""
    return x.detach().to("cpu", torch.float64).numpy()


__all__ = ["BACKEND_DEVICES", "FUSED_BACKEND_DEVICES", "TOLERANCES", "FAST_DTYPES", "NORMAL_ATOL",
           "HAS_CUDA", "HAS_CUPY", "INTERPRETED", "dtypes_for", "to_channels_last", "as_numpy64",
           "kernels"]
