"""`group_norm_silu` compiled for the CPU (group_norm_silu.cpp beside this file).

The torch backend runs float32 CPU tensors, NCHW-contiguous or 4-D channels_last, through these
two calls (forward and backward each one fused call, float64 statistics) inside the same
autograd Function as the Triton and CuPy kernels (kernels.group_norm_silu.GroupNormSiLUFunction,
backend "cpu"), where the pure-torch form records ~35 ATen ops per call (issue 17). `applies` says
when; otherwise (the library unavailable: no compiler or a failed build, one warning;
DDPM_KERNELS_CPU_NATIVE=0, silently) the caller keeps kernels/group_norm_silu_torch.py. Under
torch.compile the caller traces F.group_norm instead (group_norm_silu_traced), which inductor
fuses: a call into this library would be opaque to it (a torch.library custom op also costs
~0.2 ms of dispatch per call in eager, measured).

DDPM_KERNELS_CPU_NATIVE=scalar keeps the library but skips its AVX2 code, as for philox.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from . import build
from .build import NATIVE_ENV, load_typed_library, scalar_only

__all__ = ["library", "applies", "forward", "backward"]

SOURCE_PATH = Path(__file__).with_name("group_norm_silu.cpp")
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]
LIBRARIES: list[str] = []

_P, _I64 = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "ddpm_gns_has_avx2": ([], ctypes.c_int),
    "ddpm_group_norm_silu_forward": ([_P, _P, _P, _P, _I64, _I64, _I64, _I64, ctypes.c_double, ctypes.c_int,
                                      _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int], None),
    "ddpm_group_norm_silu_backward": ([_P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, ctypes.c_int,
                                       _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int], None),
}


def library() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None (see the module docstring)."""
    return load_typed_library("group_norm_silu", SOURCE_PATH, FLAGS, LIBRARIES, _SIGNATURES)


def _use_avx2(lib: ctypes.CDLL) -> int:
    return int(not scalar_only() and lib.ddpm_gns_has_avx2())


_RESOLVED: dict = {}  # DDPM_KERNELS_CPU_NATIVE's value -> (library or None, use_avx2)


def _native() -> tuple[ctypes.CDLL | None, int]:
    """(library, use_avx2) for the current DDPM_KERNELS_CPU_NATIVE, one environment read per call
    (this runs at every GroupNorm of a forward and a backward: the full lookup cost ~30 us)."""
    key = os.environ.get(NATIVE_ENV)
    hit = _RESOLVED.get(key)
    if hit is None or (hit[0] is not None and build._LOADED.get("group_norm_silu") is not hit[0]):
        lib = library()  # builds or loads on first use; build.clear_cache() makes it look again
        hit = (lib, 0 if lib is None else _use_avx2(lib))
        _RESOLVED[key] = hit
    return hit


def _channels_last(x: torch.Tensor) -> bool:
    """x is read as NHWC (4-D, channels_last-contiguous and not NCHW-contiguous as well)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def applies(x: torch.Tensor, weight, bias, shift) -> bool:
    """Whether the compiled path takes this call: float32 CPU x, NCHW-contiguous or 4-D
    channels_last, float32 parameters, the library available."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() < 2:
        return False
    if not (x.is_contiguous() or _channels_last(x)):
        return False
    if any(p is not None and p.dtype != torch.float32 for p in (weight, bias, shift)):
        return False
    return _native()[0] is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _dims(x: torch.Tensor) -> tuple[int, int, int]:
    n, c = x.shape[:2]
    return n, c, x.numel() // max(n * c, 1)


def forward(x, weight, bias, shift, groups: int, eps: float, activation: bool):
    """(y, mean, rstd): y like x, mean/rstd (N * groups,) float64 (only the backward reads them)."""
    lib, avx2 = _native()
    n, c, s = _dims(x)
    weight, bias, shift = (None if p is None else p.contiguous() for p in (weight, bias, shift))
    y = torch.empty_like(x)  # keeps x's memory format
    mean = torch.empty(n * groups, dtype=torch.float64)
    rstd = torch.empty(n * groups, dtype=torch.float64)
    lib.ddpm_group_norm_silu_forward(x.data_ptr(), _ptr(shift), _ptr(weight), _ptr(bias), n, c, s, groups,
                                     float(eps), int(activation), y.data_ptr(), mean.data_ptr(),
                                     rstd.data_ptr(), int(_channels_last(x)), torch.get_num_threads(), avx2)
    return y, mean, rstd


def backward(dy, x, weight, bias, shift, mean, rstd, groups: int, activation: bool, needs):
    """(dx, dweight, dbias, dshift), each None where `needs` (4 bools) says it is not wanted."""
    lib, avx2 = _native()
    n, c, s = _dims(x)
    weight, bias, shift = (None if p is None else p.contiguous() for p in (weight, bias, shift))
    channels_last = _channels_last(x)
    dy = dy.to(torch.float32).contiguous(memory_format=torch.channels_last if channels_last else
                                         torch.contiguous_format)
    need_dx, need_dweight, need_dbias, need_dshift = (bool(v) for v in needs)
    dx = torch.empty_like(x)  # x's memory format; also the dz scratch of the first pass
    dweight = torch.empty(c, dtype=torch.float32) if need_dweight and weight is not None else None
    dbias = torch.empty(c, dtype=torch.float32) if need_dbias and bias is not None else None
    dshift = torch.empty((n, c), dtype=torch.float32) if need_dshift and shift is not None else None
    partial = torch.empty((n, c, 2), dtype=torch.float64)
    lib.ddpm_group_norm_silu_backward(dy.data_ptr(), x.data_ptr(), _ptr(shift), _ptr(weight), _ptr(bias),
                                      mean.data_ptr(), rstd.data_ptr(), n, c, s, groups, int(activation),
                                      dx.data_ptr(), _ptr(dweight), _ptr(dbias), _ptr(dshift),
                                      partial.data_ptr(), int(channels_last), torch.get_num_threads(), avx2)
    return (dx if need_dx else None), dweight, dbias, dshift

