"""Compiling and launching the CUDA C kernels from torch tensors, without copies or syncs.

Tensors are passed as raw device addresses (`unsigned long long` kernel parameters cast to typed
pointers inside the kernels), so no __cuda_array_interface__ / DLPack exchange (which may
synchronise) is involved; kernels run on torch's current CUDA stream of the tensors' device.
Storage dtypes are a compile-time macro, STORAGE_ID: 0 float32, 1 float16, 2 bfloat16; the
half types are converted with PTX `cvt` / bit operations, so no cuda_fp16.h / cuda_bf16.h header
is needed at run time (NVRTC include paths differ between CuPy wheels).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["STORAGE_CUH", "storage_id", "get_kernel", "launch", "address", "grid_1d"]

STORAGE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

STORAGE_CUH = r"""
#ifndef STORAGE_ID
#define STORAGE_ID 0
#endif
#if STORAGE_ID == 0
typedef float storage_t;
__device__ __forceinline__ float load_f32(const storage_t* p, long long i) { return p[i]; }
__device__ __forceinline__ void store_f32(storage_t* p, long long i, float v) { p[i] = v; }
#elif STORAGE_ID == 1
typedef unsigned short storage_t;  /* IEEE binary16 bits */
__device__ __forceinline__ float load_f32(const storage_t* p, long long i) {
    float f; unsigned short h = p[i];
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ void store_f32(storage_t* p, long long i, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i] = h;
}
#else
typedef unsigned short storage_t;  /* bfloat16 bits */
__device__ __forceinline__ float load_f32(const storage_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void store_f32(storage_t* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    unsigned short h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h = (unsigned short)((u >> 16) | 0x40u);            /* quiet NaN */
    } else {
        h = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  /* round to nearest even */
    }
    p[i] = h;
}
#endif
"""


def storage_id(dtype: torch.dtype) -> int:
    return STORAGE_IDS[dtype]


@functools.lru_cache(maxsize=None)
def _module(source: str, options: tuple[str, ...]):
    import cupy

    return cupy.RawModule(code=source, options=("--std=c++14",) + options)


def get_kernel(source: str, name: str, **macros: int):
    """The compiled kernel `name` of `source` with `-D` macros (cached per source and macros)."""
    options = tuple(f"-D{k}={int(v)}" for k, v in sorted(macros.items()))
    return _module(source, options).get_function(name)


def address(t: torch.Tensor | None) -> np.uint64:
    """The device address of t's first element (0 for None), as a kernel argument."""
    return np.uint64(0 if t is None else t.data_ptr())


def grid_1d(total: int, block: int, device: torch.device, waves: int = 8) -> int:
    """Blocks of a grid-stride loop: enough to fill the device, no more than the work."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    sms = torch.cuda.get_device_properties(index).multi_processor_count
    return max(1, min((total + block - 1) // block, sms * waves))


def launch(kernel, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, device: torch.device,
           shared_mem: int = 0) -> None:
    """Run `kernel` on torch's current stream of `device`."""
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index):
        with cupy.cuda.ExternalStream(stream.cuda_stream):
            kernel(grid, block, args, shared_mem=shared_mem)
