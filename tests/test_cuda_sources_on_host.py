"""The CuPy backend's CUDA C, executed on the CPU: a host build of the very kernel sources.

Machines without a GPU cannot run CuPy, so the CUDA C of kernels/cupy would otherwise only be
compiled, never executed, before it meets a GPU. Here each kernel source is compiled with g++
against a small shim (CUDA qualifiers removed, __umulhi / __fmul_rn / ... as their IEEE
definitions, the two fp16 `cvt` PTX instructions as _Float16 conversions, a block = 256
std::threads with __syncthreads as a std::barrier, __shared__ arrays static), and the real
kernels/cupy launchers run on CPU tensors through it (their `get_kernel`/`launch` replaced).
What this checks: indexing, layouts, the Philox/uniform/normal code, the update arithmetic and
its rounding, the Welford/tree reductions and the backward formulas. What it cannot check: GPU
math-library rounding, the memory model beyond the barrier, NVRTC itself (`nvcc -ptx` of the
same sources is exercised in test_cuda_sources_compile_with_nvcc when nvcc is installed).
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import reference
from kernels import config
from kernels.cupy import group_norm_silu as cupy_group_norm
from kernels.cupy import langevin_step as cupy_langevin_step
from kernels.cupy import learned_variance_step as cupy_learned_variance_step
from kernels.cupy import normal as cupy_normal
from kernels.cupy import philox as cupy_philox
from kernels.cupy import q_sample as cupy_q_sample
from kernels.cupy import sampler_step as cupy_sampler_step
from tests.helpers import assert_close

GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="g++ is not installed (needed for the host build)")

SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct dim3_t { unsigned int x = 0, y = 0, z = 0; };
static thread_local dim3_t threadIdx, blockIdx;
static dim3_t blockDim, gridDim;
static std::barrier<>* g_barrier = nullptr;
static inline void __syncthreads() { g_barrier->arrive_and_wait(); }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int i; std::memcpy(&i, &f, 4); return i; }
static inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
using std::min;
using std::max;
"""

LAUNCHER = r"""
template <typename T> static T from_slot(std::uint64_t s) { T v; std::memcpy(&v, &s, sizeof(T)); return v; }
template <typename... A, std::size_t... I>
static void invoke(void (*k)(A...), const std::uint64_t* s, std::index_sequence<I...>) {
    k(from_slot<A>(s[I])...);
}
template <typename... A>
static int run(void (*k)(A...), unsigned gx, unsigned gy, unsigned bx, const std::uint64_t* slots,
               int nslots) {
    if (nslots != (int)sizeof...(A)) return -1;
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
            std::barrier<> bar(bx);
            g_barrier = &bar;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < bx; ++t) {
                threads.emplace_back([=] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {x, y, 0};
                    invoke(k, slots, std::index_sequence_for<A...>{});
                });
            }
            for (auto& th : threads) th.join();
        }
    }
    return 0;
}
extern "C" int launch_kernel(const char* name, unsigned gx, unsigned gy, unsigned bx,
                             const std::uint64_t* slots, int nslots) {
    const std::string n(name);
    KERNEL_TABLE
    return -2;
}
"""

_FP16_ASM = {
    'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));':
        "{ _Float16 hv; std::memcpy(&hv, &h, 2); f = (float)hv; }",
    'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));':
        "{ _Float16 hv = (_Float16)v; std::memcpy(&h, &hv, 2); }",
}
_BUILD_DIR = Path(tempfile.mkdtemp(prefix="ddpm_cuda_host_"))
_LIBRARIES: dict[str, ctypes.CDLL] = {}


def host_library(source: str, macros: dict) -> ctypes.CDLL:
    for asm, replacement in _FP16_ASM.items():
        assert asm in source or "STORAGE_ID == 1" not in source, "fp16 PTX changed: update the shim"
        source = source.replace(asm, replacement)
    names = re.findall(r'extern "C" __global__ void (\w+)\(', source)
    table = "\n    ".join(f'if (n == "{k}") return run({k}, gx, gy, bx, slots, nslots);' for k in names)
    code = SHIM + source + LAUNCHER.replace("KERNEL_TABLE", table)
    flags = [f"-D{k}={int(v)}" for k, v in sorted(macros.items())]
    key = hashlib.sha256((code + " ".join(flags)).encode()).hexdigest()[:16]
    if key not in _LIBRARIES:
        src, lib = _BUILD_DIR / f"{key}.cpp", _BUILD_DIR / f"{key}.so"
        src.write_text(code)
        subprocess.run([GXX, "-std=c++20", "-O0", "-pthread", "-shared", "-fPIC", "-ffp-contract=off",
                        *flags, str(src), "-o", str(lib)], check=True, capture_output=True, text=True)
        library = ctypes.CDLL(str(lib))
        library.launch_kernel.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                                          ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
        _LIBRARIES[key] = library
    return _LIBRARIES[key]


class HostKernel:
    def __init__(self, source: str, name: str, macros: dict):
        self.library, self.name = host_library(source, macros), name

    def __call__(self, grid, block, args):
        slots = (ctypes.c_uint64 * max(len(args), 1))()
        for i, a in enumerate(args):
            raw = np.asarray(a).tobytes()
            assert len(raw) in (4, 8), f"argument {i} of {self.name} is not a 4/8-byte scalar"
            slots[i] = int(np.frombuffer(raw.ljust(8, b"\0"), np.uint64)[0])
        grid = tuple(grid) + (1,) * (2 - len(grid))
        rc = self.library.launch_kernel(self.name.encode(), grid[0], grid[1], block[0], slots, len(args))
        assert rc == 0, f"{self.name}: launch_kernel returned {rc} (argument count mismatch?)"


@pytest.fixture
def host_cupy(monkeypatch):
    """Route the kernels/cupy launchers to the host build (CPU tensors stand in for device ones)."""
    def get_kernel(source, name, **macros):
        return HostKernel(source, name, macros)

    def launch(kernel, grid, block, args, device, shared_mem=0):
        kernel(grid, block, args)

    for module in (cupy_philox, cupy_normal, cupy_q_sample, cupy_sampler_step, cupy_group_norm,
                   cupy_learned_variance_step, cupy_langevin_step):
        monkeypatch.setattr(module, "get_kernel", get_kernel)
        monkeypatch.setattr(module, "launch", launch)
        if hasattr(module, "grid_1d"):
            monkeypatch.setattr(module, "grid_1d", lambda total, block, device: 2)


SCHEDULE = reference.make_schedule("linear", 1000)
TABLES = (torch.tensor(SCHEDULE.sqrt_alpha_bars, dtype=torch.float32),
          torch.tensor(SCHEDULE.sqrt_one_minus_alpha_bars, dtype=torch.float32))


def test_host_words_uniforms_and_normals_match_reference(host_cupy):
    samples = torch.tensor([0, 9, 2**32 - 1])
    words, uniforms = cupy_philox.philox_words(2**40 + 1, samples, 2**31 + 3, 77)
    expected = reference.philox_words(2**40 + 1, samples.numpy(), 2**31 + 3, 77)
    np.testing.assert_array_equal(words.numpy(), expected.astype(np.int64))
    np.testing.assert_array_equal(uniforms[..., 1].numpy(), reference.uint_to_uniform_float(expected[..., 1]))
    z = cupy_normal.normal(5, samples, torch.tensor([1, 0, 2**32 - 1]), (4, 5), torch.float32)
    assert_close(z, reference.normal(5, samples.numpy(), [1, 0, 2**32 - 1], (4, 5)), atol=1e-5, rtol=0,
                 name="float32 Box-Muller")
    for dtype in (torch.bfloat16, torch.float16):
        half = cupy_normal.normal(5, samples, 3, (40,), dtype)
        assert torch.equal(half, cupy_normal.normal(5, samples, 3, (40,), torch.float32).to(dtype))


def test_host_float64_box_muller_matches_reference(host_cupy, monkeypatch):
    monkeypatch.setattr(config, "NORMAL_FP64", True)
    z = cupy_normal.normal(7, torch.tensor([0, 1]), 4, (500,), torch.float32)
    expected = reference.normal(7, [0, 1], 4, (500,))
    assert np.mean(z.numpy() == expected) > 0.999  # libm vs NumPy float64 log/cos: last-ulp ties
    assert_close(z, expected, atol=1e-6, rtol=0, name="float64 Box-Muller")


@pytest.mark.parametrize("channels_last", [False, True])
def test_host_q_sample_matches_reference(host_cupy, channels_last):
    x0 = torch.randn(3, 4, 5, 3)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    t = torch.tensor([0, 500, 999])
    eps = torch.randn(3, 4, 5, 3)
    x_t, _ = cupy_q_sample.q_sample(x0, t, *TABLES, eps, None, None, 0)
    np.testing.assert_array_equal(x_t.numpy(), reference.q_sample(x0.numpy(), t.numpy(), eps.numpy(), SCHEDULE))
    x_t, noise = cupy_q_sample.q_sample(x0, t, *TABLES, None, 11, torch.tensor([4, 2, 7]), 3)
    expected_noise = reference.normal(11, [4, 2, 7], 3, (4, 5, 3))
    assert x_t.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_close(noise, expected_noise, atol=1e-5, rtol=0, name="noise")
    assert_close(x_t, reference.q_sample(x0.numpy(), t.numpy(), noise.numpy(), SCHEDULE), atol=1e-6,
                 rtol=1e-6, name="x_t")
    for dtype in (torch.bfloat16, torch.float16):
        x_t, _ = cupy_q_sample.q_sample(x0.to(dtype), t, *TABLES, eps.to(dtype), None, None, 0)
        expected = reference.q_sample(x0.to(dtype).float().numpy(), t.numpy(), eps.to(dtype).float().numpy(), SCHEDULE)
        assert torch.equal(x_t, torch.from_numpy(expected).to(dtype))
    bad_t = torch.tensor([0, 1000, -1])
    x_t, _ = cupy_q_sample.q_sample(x0, bad_t, *TABLES, eps, None, None, 0)
    assert torch.isfinite(x_t[0]).all() and torch.isnan(x_t[1:]).all()


def test_host_sampler_step_matches_reference(host_cupy):
    x_t, out, uncond, z = (torch.randn(3, 2, 4, 5) for _ in range(4))
    c = reference.ddpm_coefficients(SCHEDULE, np.array([999, 7, 0]), "epsilon")
    coefficients = torch.tensor(c)
    got = cupy_sampler_step.sampler_step(x_t, out, coefficients, uncond, 3.5, (-1.0, 1.0), z, None,
                                         None, 0, None)
    cfg = reference.classifier_free_guidance(out.numpy(), uncond.numpy(), 3.5)
    expected = reference.sampler_step(x_t.numpy(), cfg, c, z.numpy(), (-1.0, 1.0))
    np.testing.assert_array_equal(got.numpy(), expected)
    shared = torch.tensor(c[1]).expand(3, 8)  # one row for every sample: row stride 0, no copy
    got = cupy_sampler_step.sampler_step(x_t, out, shared, None, 1.0, None, z, None, None, 0, None)
    expected = reference.sampler_step(x_t.numpy(), out.numpy(), c[1], z.numpy())
    np.testing.assert_array_equal(got.numpy(), expected)
    # in-kernel noise, channels_last, in place
    x_cl = x_t.contiguous(memory_format=torch.channels_last)
    out_cl = out.contiguous(memory_format=torch.channels_last)
    result = cupy_sampler_step.sampler_step(x_cl, out_cl, coefficients, None, 1.0, None, None, 9,
                                            torch.tensor([5, 6, 7]), 2, x_cl)
    assert result is x_cl
    noise = reference.normal(9, [5, 6, 7], 2, (2, 4, 5))
    expected = reference.sampler_step(x_t.numpy(), out.numpy(), c, noise)
    assert_close(result, expected, atol=1e-5, rtol=1e-6, name="in-kernel noise")
    # sigma != 0 without a noise source: NaN for those samples only
    got = cupy_sampler_step.sampler_step(x_t, out, coefficients, None, 1.0, None, None, None, None, 0, None)
    assert torch.isnan(got[:2]).all() and torch.isfinite(got[2]).all()
    got = cupy_sampler_step.sampler_step(x_t.to(torch.bfloat16), out.to(torch.bfloat16), coefficients,
                                         None, 1.0, None, z.to(torch.bfloat16), None, None, 0, None)
    expected = reference.sampler_step(x_t.to(torch.bfloat16).float().numpy(), out.to(torch.bfloat16).float().numpy(),
                                        c, z.to(torch.bfloat16).float().numpy())
    assert torch.equal(got, torch.from_numpy(expected).to(torch.bfloat16))


@pytest.mark.parametrize("channels_last", [False, True])
def test_host_learned_variance_step_matches_reference(host_cupy, channels_last):
    """The learned-variance step (Improved DDPM Eq. 15): both halves of the (N, 2C, ...) output
    read in either layout, given and in-kernel noise, a shared row, t = 0, bf16 storage."""
    layout = (lambda x: x.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda x: x)
    gen = torch.Generator().manual_seed(3)
    x_t, z = (layout(torch.randn(3, 2, 4, 5, generator=gen)) for _ in range(2))
    model_output = layout(torch.randn(3, 4, 4, 5, generator=gen) * 1.5)
    c = reference.learned_variance_coefficients(SCHEDULE, np.array([999, 7, 0]), "epsilon")
    got = cupy_learned_variance_step.learned_variance_step(x_t, model_output, torch.tensor(c), (-1.0, 1.0),
                                                           z, None, None, 0, None)
    expected = reference.learned_variance_step(x_t.numpy(), model_output.numpy(), c, z.numpy(), (-1.0, 1.0))
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_close(got, expected, atol=0.0, rtol=2**-23, name="given noise")  # libm exp: <= 1 float32 ulp
    shared = torch.tensor(c[1]).expand(3, 10)  # one row for every sample: row stride 0, no copy
    got = cupy_learned_variance_step.learned_variance_step(x_t, model_output, shared, None, z, None, None, 0, None)
    expected = reference.learned_variance_step(x_t.numpy(), model_output.numpy(), c[1], z.numpy())
    assert_close(got, expected, atol=0.0, rtol=2**-23, name="shared row")
    x_before = x_t.clone()
    result = cupy_learned_variance_step.learned_variance_step(x_t, model_output, torch.tensor(c), None, None, 9,
                                                              torch.tensor([5, 6, 7]), 2, x_t)  # in place
    assert result is x_t
    noise = reference.normal(9, [5, 6, 7], 2, (2, 4, 5))
    expected = reference.learned_variance_step(x_before.numpy(), model_output.numpy(), c, noise)
    assert_close(result, expected, atol=1e-5, rtol=1e-6, name="in-kernel noise")
    x_t = x_before
    got = cupy_learned_variance_step.learned_variance_step(x_t, model_output, torch.tensor(c), None, None, None,
                                                           None, 0, None)
    assert torch.isnan(got[:2]).all() and torch.isfinite(got[2]).all()  # has_noise, no source: NaN
    bf = [v.to(torch.bfloat16) for v in (x_t, model_output, z)]
    got = cupy_learned_variance_step.learned_variance_step(bf[0], bf[1], torch.tensor(c), None, bf[2], None,
                                                           None, 0, None)
    expected = reference.learned_variance_step(*(v.float().numpy() for v in bf[:2]), c, bf[2].float().numpy())
    assert_close(got, expected, atol=1e-5, rtol=1.6e-2, name="bf16")


@pytest.mark.parametrize("channels_last", [False, True])
def test_host_langevin_step_matches_reference(host_cupy, channels_last):
    """The score samplers' step: given noise bit for bit, a shared row, in-kernel noise in place,
    NaN without a noise source, bf16 storage."""
    layout = (lambda x: x.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda x: x)
    gen = torch.Generator().manual_seed(4)
    x, out, z = (layout(torch.randn(3, 2, 4, 5, generator=gen)) for _ in range(3))
    c = reference.sampling_plan(reference.ve_schedule(10.0, 0.01, 20), "pc", 3, corrector_steps=0).coefficients[:, :4]
    got = cupy_langevin_step.langevin_step(x, out, torch.tensor(c), z, None, None, 0, None)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    np.testing.assert_array_equal(got.numpy(), reference.langevin_step(x.numpy(), out.numpy(), c, z.numpy()))
    shared = torch.tensor(c[1]).expand(3, 4)  # row stride 0, no copy
    got = cupy_langevin_step.langevin_step(x, out, shared, z, None, None, 0, None)
    np.testing.assert_array_equal(got.numpy(), reference.langevin_step(x.numpy(), out.numpy(), c[1], z.numpy()))
    x_before = x.clone()
    result = cupy_langevin_step.langevin_step(x, out, torch.tensor(c), None, 9, torch.tensor([5, 6, 7]), 2, x)
    assert result is x
    noise = reference.normal(9, [5, 6, 7], 2, (2, 4, 5))
    assert_close(result, reference.langevin_step(x_before.numpy(), out.numpy(), c, noise), atol=1e-5, rtol=1e-6,
                 name="in-kernel noise")
    got = cupy_langevin_step.langevin_step(x_before, out, torch.tensor(c), None, None, None, 0, None)
    assert torch.isnan(got[:2]).all() and torch.isfinite(got[2]).all()  # noise_scale != 0, no source: NaN
    bf = [v.to(torch.bfloat16) for v in (x_before, out, z)]
    got = cupy_langevin_step.langevin_step(bf[0], bf[1], torch.tensor(c), bf[2], None, None, 0, None)
    expected = reference.langevin_step(bf[0].float().numpy(), bf[1].float().numpy(), c, bf[2].float().numpy())
    assert torch.equal(got, torch.from_numpy(expected.astype(np.float32)).to(torch.bfloat16))


def test_host_index_views_are_read_by_value(host_cupy):
    """t, samples and stream given as 1-D views (strided, expanded): the CUDA C reads t[n],
    samples[n], streams[n], so the launchers must pass them contiguous."""
    strided = torch.arange(6)[::2]               # 0, 2, 4
    expanded = torch.tensor([700]).expand(3)     # stride 0
    x0, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    got, _ = cupy_q_sample.q_sample(x0, expanded, *TABLES, eps, None, None, 0)
    want, _ = cupy_q_sample.q_sample(x0, expanded.contiguous(), *TABLES, eps, None, None, 0)
    assert not torch.isnan(got).any() and torch.equal(got, want)
    got, noise = cupy_q_sample.q_sample(x0, strided * 100, *TABLES, None, 11, strided, strided + 1)
    want, want_noise = cupy_q_sample.q_sample(x0, (strided * 100).contiguous(), *TABLES, None, 11,
                                              strided.contiguous(), (strided + 1).contiguous())
    assert torch.equal(noise, want_noise) and torch.equal(got, want)
    assert_close(noise, reference.normal(11, [0, 2, 4], [1, 3, 5], (4, 5)), atol=1e-5, rtol=0, name="noise")
    z = cupy_normal.normal(5, strided, strided, (7,), torch.float32)
    assert torch.equal(z, cupy_normal.normal(5, strided.contiguous(), strided.contiguous(), (7,), torch.float32))
    words, _ = cupy_philox.philox_words(3, strided, 1, 5)
    np.testing.assert_array_equal(words.numpy(), reference.philox_words(3, [0, 2, 4], 1, 5).astype(np.int64))
    x_t, out = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    coefficients = torch.tensor(reference.ddpm_coefficients(SCHEDULE, np.array([999, 7, 3])))
    got = cupy_sampler_step.sampler_step(x_t, out, coefficients, None, 1.0, None, None, 9, strided,
                                         strided, None)
    want = cupy_sampler_step.sampler_step(x_t, out, coefficients, None, 1.0, None, None, 9,
                                          strided.contiguous(), strided.contiguous(), None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_group_norm_silu_forward_and_backward_match_reference(host_cupy, channels_last, splits, dtype):
    gen = torch.Generator().manual_seed(splits)
    x = (torch.randn(2, 6, 5, 7, generator=gen) * 2 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    shift, dy = torch.randn(2, 6, generator=gen), torch.randn(2, 6, 5, 7, generator=gen).to(dtype)
    y, mean, rstd = cupy_group_norm.forward(x, weight, bias, shift, 3, 1e-5, True, splits=splits)
    dx, dw, db, dshift = cupy_group_norm.backward(dy, x, weight, bias, shift, mean, rstd, 3, True,
                                                  (True, True, True, True), splits=splits)
    x64 = x.double().numpy()
    y_ref, cache = reference.group_norm_silu(x64, weight.double().numpy(), bias.double().numpy(), 3,
                                             1e-5, True, shift=shift.double().numpy())
    dx_ref, dw_ref, db_ref = reference.group_norm_silu_backward(dy.double().numpy(), cache)
    atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-5, 1.6e-2)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_close(y, y_ref, atol=atol, rtol=rtol, name="y")
    assert_close(dx, dx_ref, atol=atol, rtol=rtol, name="dx")
    assert_close(dw, dw_ref, atol=1e-4, rtol=1e-5, name="dweight")
    assert_close(db, db_ref, atol=1e-4, rtol=1e-5, name="dbias")
    assert_close(dshift, dx_ref.sum(axis=(2, 3)), atol=1e-4, rtol=1e-5, name="dshift")
    h = x64 + shift.double().numpy()[:, :, None, None]
    assert_close(mean, h.reshape(2, 3, -1).mean(axis=2).reshape(-1), atol=1e-5, rtol=1e-6, name="mean")
    assert_close(rstd, cache.rstd.reshape(-1), atol=1e-5, rtol=1e-5, name="rstd")


@pytest.mark.parametrize("shape, groups", [((2, 48, 5, 3), 2), ((1, 600, 2, 3), 2)])
def test_host_group_norm_silu_backward_channels_last_walks(host_cupy, shape, groups):
    """The channels_last backward partials: Cg = 24 (10 lanes per channel, 16 idle threads) and
    Cg = 300 > the block (the channel-at-a-time fallback), against the reference."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    C = shape[1]
    weight, bias = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
    dy = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    y, mean, rstd = cupy_group_norm.forward(x, weight, bias, None, groups, 1e-5, True, splits=2)
    dx, dw, db, _ = cupy_group_norm.backward(dy, x, weight, bias, None, mean, rstd, groups, True,
                                             (True, True, True, False), splits=2)
    _, cache = reference.group_norm_silu(x.double().numpy(), weight.double().numpy(),
                                         bias.double().numpy(), groups, 1e-5, True)
    dx_ref, dw_ref, db_ref = reference.group_norm_silu_backward(dy.double().numpy(), cache)
    assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5, name="dx")
    assert_close(dw, dw_ref, atol=1e-4, rtol=1e-5, name="dweight")
    assert_close(db, db_ref, atol=1e-4, rtol=1e-5, name="dbias")


NVCC = shutil.which("nvcc")


SOURCES = {"philox": cupy_philox._WORDS_SOURCE, "normal": cupy_normal._SOURCE, "q_sample": cupy_q_sample._SOURCE,
           "sampler_step": cupy_sampler_step._SOURCE, "group_norm_silu": cupy_group_norm._SOURCE,
           "learned_variance_step": cupy_learned_variance_step._SOURCE,
           "langevin_step": cupy_langevin_step._SOURCE}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("name", list(SOURCES))
def test_cuda_sources_compile_with_nvcc(name, tmp_path):
    """Every storage dtype compiles to a cubin for sm_90 (through ptxas, as NVRTC + the driver
    will at run time), float32 and float64 Box-Muller, and for sm_80."""
    source = SOURCES[name]
    path = tmp_path / f"{name}.cu"
    path.write_text(source)
    builds = [("sm_90", storage, 0) for storage in (0, 1, 2)] + [("sm_90", 0, 1), ("sm_80", 2, 1)]
    for arch, storage, fp64 in builds:
        result = subprocess.run([NVCC, f"-arch={arch}", "-cubin", "-std=c++14", f"-DSTORAGE_ID={storage}",
                                 f"-DNORMAL_FP64={fp64}", str(path), "-o", str(tmp_path / f"{name}.cubin")],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{arch} STORAGE_ID={storage} NORMAL_FP64={fp64}:\n{result.stderr}"


def test_host_sampler_step_with_classifier_guidance_matches_reference(host_cupy):
    """The guidance term (gradient + per-sample rows, issue 12) in the CUDA C, bit for bit."""
    x_t, out, z, grad = (torch.randn(3, 2, 4, 5) for _ in range(4))
    for sampler in ("ddpm", "ddim"):
        plan = reference.sampling_plan(SCHEDULE, sampler, 10, eta=0.5 if sampler == "ddim" else 0.0)
        rows = reference.guidance_rows(plan, np.array([0.0, 1.0, 6.0]))[4]
        c = np.broadcast_to(plan.coefficients[4], (3, 8)).copy()
        got = cupy_sampler_step.sampler_step(x_t, out, torch.tensor(c), None, 1.0, (-1.0, 1.0), z, None,
                                             None, 0, None, grad, torch.tensor(rows))
        expected = reference.sampler_step(x_t.numpy(), out.numpy(), c, z.numpy(), (-1.0, 1.0),
                                          classifier_grad=grad.numpy(), classifier_coefficients=rows)
        np.testing.assert_array_equal(got.numpy(), expected)
    shared = torch.tensor(rows[2]).reshape(1, 3).expand(3, 3)  # one row for all: stride 0
    got = cupy_sampler_step.sampler_step(x_t, out, torch.tensor(c), None, 1.0, None, z, None, None, 0, None,
                                         grad, shared)
    expected = reference.sampler_step(x_t.numpy(), out.numpy(), c, z.numpy(), classifier_grad=grad.numpy(),
                                      classifier_coefficients=rows[2])
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("channels_last", [False, True])
def test_host_learned_variance_step_with_classifier_guidance_matches_reference(host_cupy, channels_last):
    """Alg. 1 with the learned variance in the CUDA C: mean += a2 exp(log sigma^2) g per element
    (libm exp: within a float32 ulp), a0/a1 before the clip, the step into x_0 unshifted."""
    layout = (lambda x: x.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda x: x)
    gen = torch.Generator().manual_seed(4)
    x_t, z, grad = (layout(torch.randn(3, 2, 4, 5, generator=gen)) for _ in range(3))
    model_output = layout(torch.randn(3, 4, 4, 5, generator=gen))
    plan = reference.sampling_plan(SCHEDULE, "ddpm", 10, variance="learned")
    for k in (0, 4, 9):
        rows = reference.guidance_rows(plan, np.array([0.0, 1.0, 6.0]))[k] + np.array([0.5, -0.25, 0.0])
        c = np.broadcast_to(plan.coefficients[k], (3, 10)).copy()
        got = cupy_learned_variance_step.learned_variance_step(
            x_t, model_output, torch.tensor(c), (-1.0, 1.0), z, None, None, 0, None, grad, torch.tensor(rows))
        expected = reference.learned_variance_step(x_t.numpy(), model_output.numpy(), c, z.numpy(), (-1.0, 1.0),
                                                   classifier_grad=grad.numpy(), classifier_coefficients=rows)
        assert_close(got, expected, atol=0.0, rtol=2**-23, name=f"guided learned step {k}")
