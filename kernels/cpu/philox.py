"""The noise stream compiled for the CPU (philox.cpp beside this file; reference.noise defines it).

The torch backend's `normal` and `q_sample` call these on CPU tensors; each returns None when the
library is unavailable (no compiler, a failed build: one warning; DDPM_KERNELS_CPU_NATIVE=0:
silently), and the caller then runs its pure-torch Philox, which gives the same numbers.

DDPM_KERNELS_CPU_NATIVE=scalar keeps the library but skips its AVX2 code (the path of CPUs
without AVX2), so both instruction sets are testable on one machine.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from .build import load_typed_library, scalar_only

__all__ = ["library", "uses_avx2", "philox_words", "normal", "q_sample"]

SOURCE_PATH = Path(__file__).with_name("philox.cpp")
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]
LIBRARIES = ["torch_cpu"]  # SLEEF's float64 log/cos, exported by libtorch_cpu

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_SIGNATURES = {
    "ddpm_cpu_has_avx2": ([], ctypes.c_int),
    "ddpm_set_rounding_margin": ([ctypes.c_double], ctypes.c_double),
    "ddpm_philox_words": ([ctypes.c_uint64, _P, _P, _I64, _I64, _P, ctypes.c_int, ctypes.c_int], None),
    "ddpm_normal": ([ctypes.c_uint64, _P, _P, _I64, _I64, _P, ctypes.c_int, ctypes.c_int], None),
    "ddpm_q_sample": ([ctypes.c_uint64, _P, _P, _I64, _I64, _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int],
                      None),
}


def library() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None (see the module docstring)."""
    return load_typed_library("philox", SOURCE_PATH, FLAGS, LIBRARIES, _SIGNATURES)


def uses_avx2(lib: ctypes.CDLL) -> bool:
    """Whether calls take the AVX2 code: the CPU has it and DDPM_KERNELS_CPU_NATIVE != scalar."""
    return not scalar_only() and bool(lib.ddpm_cpu_has_avx2())


def _rows(samples: torch.Tensor, stream) -> tuple[torch.Tensor, torch.Tensor]:
    """samples and per-row streams as contiguous int64 CPU tensors (values already validated)."""
    if samples.dtype != torch.int64 or not samples.is_contiguous():
        samples = samples.to(torch.int64).contiguous()
    samples = samples.reshape(-1)
    if isinstance(stream, torch.Tensor):
        streams = stream.reshape(-1).to(torch.int64).expand(samples.numel()).contiguous()
    else:
        streams = torch.full_like(samples, int(stream))
    return samples, streams


def _cpu(samples: torch.Tensor) -> bool:
    return samples.device.type == "cpu"


def philox_words(seed: int, samples: torch.Tensor, stream, numel: int) -> torch.Tensor | None:
    """reference.philox_words as int64 (N, numel, 4) in [0, 2**32), or None (no library)."""
    lib = library() if _cpu(samples) else None
    if lib is None:
        return None
    samples, streams = _rows(samples, stream)
    out = torch.empty((samples.numel(), numel, 4), dtype=torch.int32)
    lib.ddpm_philox_words(seed, samples.data_ptr(), streams.data_ptr(), samples.numel(), numel,
                          out.data_ptr(), torch.get_num_threads(), int(uses_avx2(lib)))
    return out.to(torch.int64) & 0xFFFFFFFF  # the uint32 words, read back from int32 storage


def normal(seed: int, samples: torch.Tensor, stream, numel: int) -> torch.Tensor | None:
    """reference.normal as float32 (N, numel), or None (no library, or not CPU tensors)."""
    lib = library() if _cpu(samples) else None
    if lib is None:
        return None
    samples, streams = _rows(samples, stream)
    out = torch.empty((samples.numel(), numel), dtype=torch.float32)
    lib.ddpm_normal(seed, samples.data_ptr(), streams.data_ptr(), samples.numel(), numel,
                    out.data_ptr(), torch.get_num_threads(), int(uses_avx2(lib)))
    return out


def q_sample(x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor, seed: int, samples: torch.Tensor,
             stream) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x_t, eps) = (a x0 + s eps, eps) with eps drawn in the same pass, for float32 contiguous CPU
    x0 (N, ...) and float32 per-sample a, s (N,); None when that does not apply or no library."""
    if x0.device.type != "cpu" or x0.dtype != torch.float32 or not x0.is_contiguous():
        return None
    lib = library()
    if lib is None:
        return None
    samples, streams = _rows(samples, stream)
    rows = x0.shape[0]
    a = a.reshape(-1).to(torch.float32).contiguous()
    s = s.reshape(-1).to(torch.float32).contiguous()
    x_t, eps = torch.empty_like(x0), torch.empty_like(x0)
    lib.ddpm_q_sample(seed, samples.data_ptr(), streams.data_ptr(), rows, x0[0].numel() if rows else 0,
                      x0.data_ptr(), a.data_ptr(), s.data_ptr(), x_t.data_ptr(), eps.data_ptr(),
                      torch.get_num_threads(), int(uses_avx2(lib)))
    return x_t, eps
