"""Backend resolution (DESIGN contract 4): "auto" | "triton" | "cupy" | "torch".

- "auto" picks triton for CUDA tensors of a dtype the fused kernels support (float32, bfloat16,
  float16) when triton is importable, and torch otherwise (CPU tensors, float64, no triton).
- The environment variable DDPM_KERNELS_BACKEND (auto|triton|cupy|torch) replaces "auto" for a
  whole run; an explicit backend argument always wins over it.
- Asking for a backend that cannot run raises a RuntimeError naming the backend and the reason:
  cupy not installed, no CUDA device / CPU tensors for cupy, triton on CPU tensors without
  TRITON_INTERPRET=1 (the Triton interpreter, used by the CPU test suite).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch

from .validate import FAST_DTYPES

BACKENDS = ("auto", "triton", "cupy", "torch")
BACKEND_ENV = "DDPM_KERNELS_BACKEND"

__all__ = ["BACKENDS", "BACKEND_ENV", "resolve_backend", "backend_unavailable_reason",
           "available_backends", "triton_interpreted", "device_guard"]


@functools.lru_cache(maxsize=None)
def _module_importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def triton_interpreted() -> bool:
    """True when Triton kernels are (or will be) built for the interpreter (TRITON_INTERPRET=1).

    Triton reads the variable when a kernel is decorated, i.e. when kernels.triton.* is first
    imported; once imported, the mode of the imported kernels is what counts.
    """
    from . import triton as triton_pkg  # cheap: the subpackage __init__ imports no kernel

    mode = triton_pkg.decorated_mode()
    if mode is not None:
        return mode
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run on tensors of `device`, else a sentence saying why not."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not _module_importable("triton"):
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            if triton_interpreted():
                return None
            return ("triton needs CUDA tensors (got CPU tensors); set TRITON_INTERPRET=1 before "
                    "importing kernels to run the Triton interpreter on the CPU")
        return f"triton does not support device type {device.type!r}"
    if backend == "cupy":
        if not _module_importable("cupy"):
            return "cupy is not installed (pip install cupy-cuda13x)"
        if device.type != "cuda":
            return f"cupy needs CUDA tensors, got tensors on {device}"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The concrete backend ("triton" | "cupy" | "torch") for tensors of `device`/`dtype`.

    Raises ValueError for an unknown name, RuntimeError when the backend cannot run, and
    TypeError when an explicitly chosen fused backend does not support `dtype` (float64).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(BACKEND_ENV, "auto") or "auto"
        if env not in BACKENDS:
            raise ValueError(f"environment variable {BACKEND_ENV} must be one of {BACKENDS}, got {env!r}")
        backend = env
    if backend == "auto":
        fast_dtype = dtype is None or dtype in FAST_DTYPES
        if device.type == "cuda" and fast_dtype and backend_unavailable_reason("triton", device) is None:
            return "triton"
        return "torch"
    # the dtype first: float64 on a fused backend is a TypeError on every machine (with or
    # without a GPU / the interpreter), not a RuntimeError that depends on where it runs
    if backend in ("triton", "cupy") and dtype is not None and dtype not in FAST_DTYPES:
        raise TypeError(f"the {backend} backend supports float32, bfloat16 and float16, got {dtype}; "
                        f"use backend='torch' for {dtype}")
    reason = backend_unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"kernels backend {backend!r} is not available: {reason}")
    return backend


def available_backends(device: torch.device | str = "cuda") -> list[str]:
    """The concrete backends that can run on tensors of `device` in this process."""
    device = torch.device(device)
    return [b for b in ("triton", "cupy", "torch") if backend_unavailable_reason(b, device) is None]


def device_guard(device: torch.device):
    """Make `device` current for a fused launch: Triton (and CUDA graphs) use the current device,
    so a tensor on cuda:1 while cuda:0 is current would otherwise run on the wrong GPU."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
