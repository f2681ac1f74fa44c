"""Ahead-of-time compilation of every Triton kernel for NVIDIA targets, without a GPU.

The Triton interpreter (the CPU test suite) hides real compile errors: compiled Triton types a
Python float argument as fp32, rejects constexpr misuse and loop-carried type changes that the
interpreter runs happily. This module compiles each kernel of kernels/triton/ with Triton's own
compiler and its bundled ptxas for a GPU target (sm_90 and sm_80 by default), for exactly the
argument types and constexpr values that the launchers pass: it runs the real launchers on small
CPU tensors with a stand-in Triton driver that reports the target, and turns each launch into a
compile (warmup) instead of a run. No GPU, no CUDA driver and no kernel cache are involved.

    python -m kernels.triton.aot [--arch 90 --arch 80] [--ci] [--select TEXT]

prints one line per compiled variant (registers, spill bytes and stack frame from Triton's own
`ptxas -v` log, 64-bit integer divisions counted in the PTX) and exits non-zero if any variant
fails to compile. `--ci` compiles the subset of tests/test_triton_aot_compile.py. The Triton kernels must be decorated in compiled mode, so the
process must not have TRITON_INTERPRET=1 (the tests run this in a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

ARCHES = (90, 80)


@dataclass
class Variant:
    """One compiled kernel specialisation: what was compiled and what ptxas said."""

    kernel: str
    label: str
    arch: int
    num_warps: int
    seconds: float = 0.0
    error: str | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    int64_divisions: int | None = None
    ptx: str | None = field(default=None, repr=False)


class _TargetDriver:
    """The part of a Triton driver that the JIT's compile path asks for, for a fixed target."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    @staticmethod
    def is_active():
        return True


def _check_mode() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("kernels.triton.aot needs compiled-mode kernels: unset TRITON_INTERPRET")


def _kernel_modules():
    from . import group_norm_silu, learned_variance_step, normal, philox, q_sample, sampler_step
    from . import langevin_step, layer_norm_modulate

    return (group_norm_silu, learned_variance_step, normal, philox, q_sample, sampler_step, langevin_step,
            layer_norm_modulate)


@contextlib.contextmanager
def _compile_instead_of_launch(arch: int, record):
    """Within: every `kernel[grid](...)` compiles for `arch` (no launch) and calls
    record(kernel, compiled, kwargs, seconds, error, ptxas_log)."""
    from triton import knobs
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    original_run = JITFunction.run
    previous = driver._active
    dump = knobs.nvidia.dump_ptxas_log

    def run(self, *args, grid, warmup, **kwargs):
        start = time.perf_counter()
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):  # Triton prints `ptxas -v` here
                compiled = original_run(self, *args, grid=grid, warmup=True, **kwargs)
            error = None
        except Exception as exc:  # noqa: BLE001 - a compile error is the finding
            compiled, error = None, f"{type(exc).__name__}: {exc}"
        record(self, compiled, kwargs, time.perf_counter() - start, error, log.getvalue())
        return compiled

    driver.set_active(_TargetDriver(arch))
    knobs.nvidia.dump_ptxas_log = True
    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = original_run
        knobs.nvidia.dump_ptxas_log = dump
        driver._active = previous
        for module in _kernel_modules():
            for value in vars(module).values():
                if isinstance(value, JITFunction):
                    value.device_caches.clear()  # nothing cached across targets (or runs)


# ----------------------------------------------------------------------------- the launches

def _flag_sets(full: bool):
    """(channels_last, samples, stream tensor, fp64) combinations of the in-kernel-noise launches:
    all 16 with `full`, else each flag alone, none and all (6)."""
    if full:
        return [(a, b, c, d) for a in (False, True) for b in (False, True) for c in (False, True)
                for d in (False, True)]
    return [(False,) * 4, (True, False, False, False), (False, True, False, False),
            (False, False, True, False), (False, False, False, True), (True,) * 4]


def _launches(full: bool = True):
    """(label, thunk) for the variants the launchers produce: each HAS_*/FP64/CHANNELS_LAST
    setting, the storage dtypes, int32/int64 timesteps, float32/float64 tables. `full=False` (the
    CI test) keeps every flag and dtype but not every combination of them."""
    from .. import config
    from . import group_norm_silu, learned_variance_step, normal, philox, q_sample, sampler_step
    from . import langevin_step

    cpu = torch.device("cpu")
    f32, f64 = torch.float32, torch.float64
    out = []

    def with_fp64(fp64, fn):
        def thunk():
            saved = config.NORMAL_FP64
            config.NORMAL_FP64 = fp64
            try:
                fn()
            finally:
                config.NORMAL_FP64 = saved
        return thunk

    def image(dtype, channels_last=False, shape=(3, 4, 5, 6)):
        x = torch.zeros(shape, dtype=dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    samples = torch.arange(3, dtype=torch.int64)
    streams = torch.arange(3, dtype=torch.int64)

    # philox_words (the integer side of the stream, for tests)
    out.append(("words", lambda: philox.philox_words(1, samples, 0, 7)))

    # normal: HAS_STREAM x FP64 x output dtype
    for dtype in (f32, torch.bfloat16, torch.float16, f64):
        for has_stream in (False, True):
            for fp64 in (False, True):
                if dtype != f32 and (has_stream or fp64):
                    continue
                if not full and (dtype == torch.float16 or (has_stream != fp64)):
                    continue
                label = f"normal {str(dtype)[6:]} stream={'tensor' if has_stream else 'int'} fp64={fp64}"
                out.append((label, with_fp64(fp64, lambda dtype=dtype, s=has_stream: normal.normal(
                    5, samples, streams if s else 2, (4, 5), dtype))))

    # q_sample
    tab32 = torch.ones(10, dtype=f32)
    tab64 = torch.ones(10, dtype=f64)
    for dtype in (f32, torch.bfloat16, torch.float16):
        for cl in (False, True):
            if not full and (dtype == torch.float16 or (dtype == torch.bfloat16) != cl):
                continue
            x = image(dtype, cl)
            t = torch.zeros(3, dtype=torch.int64)
            out.append((f"q_sample given-noise {str(dtype)[6:]} channels_last={cl}",
                        lambda x=x, t=t: q_sample.q_sample(x, t, tab32, tab32, torch.zeros_like(x),
                                                           None, None, 0)))
    out.append(("q_sample given-noise int32-t float64-tables",
                lambda: q_sample.q_sample(image(f32), torch.zeros(3, dtype=torch.int32), tab64, tab64,
                                          image(f32), None, None, 0)))
    for cl, has_samples, has_stream, fp64 in _flag_sets(full):
                    label = (f"q_sample draw float32 channels_last={cl} samples={has_samples} "
                             f"stream={'tensor' if has_stream else 'int'} fp64={fp64}")
                    out.append((label, with_fp64(fp64, lambda cl=cl, a=has_samples, s=has_stream:
                                q_sample.q_sample(image(f32, cl), torch.zeros(3, dtype=torch.int64),
                                                  tab32, tab32, None, 7, samples if a else None,
                                                  streams if s else 1))))
    out.append(("q_sample draw bfloat16", lambda: q_sample.q_sample(
        image(torch.bfloat16), torch.zeros(3, dtype=torch.int64), tab32, tab32, None, 7, None, 1)))

    # sampler_step: coefficients (N, 8) float64, shared row (stride 0) or per sample
    def coeffs(shared):
        return torch.zeros(1, 8, dtype=f64).expand(3, 8) if shared else torch.zeros(3, 8, dtype=f64)

    def step(dtype=f32, cl=False, uncond=False, clip=None, noise_mode=0, has_samples=False,
             has_stream=False, shared=False, out_=None):
        x = image(dtype, cl)
        sampler_step.sampler_step(x, torch.zeros_like(x), coeffs(shared),
                                  torch.zeros_like(x) if uncond else None, 2.0 if uncond else 1.0, clip,
                                  torch.zeros_like(x) if noise_mode == 1 else None,
                                  7 if noise_mode == 2 else None, samples if has_samples else None,
                                  streams if has_stream else 3, x if out_ else None)

    for dtype in (f32, torch.bfloat16, torch.float16):
        if full or dtype != torch.float16:
            out.append((f"sampler_step {str(dtype)[6:]} plain", lambda d=dtype: step(d)))
    out.append(("sampler_step float32 shared-coefficients", lambda: step(shared=True)))
    out.append(("sampler_step float32 cfg+clip", lambda: step(uncond=True, clip=(-1.0, 1.0))))
    out.append(("sampler_step float32 noise-tensor", lambda: step(noise_mode=1)))
    if full:
        out.append(("sampler_step float32 in-place", lambda: step(out_=True)))
    for cl, has_samples, has_stream, fp64 in _flag_sets(full):
                    label = (f"sampler_step draw float32 channels_last={cl} samples={has_samples} "
                             f"stream={'tensor' if has_stream else 'int'} fp64={fp64}")
                    out.append((label, with_fp64(fp64, lambda cl=cl, a=has_samples, s=has_stream: step(
                        cl=cl, noise_mode=2, has_samples=a, has_stream=s))))
    out.append(("sampler_step draw bfloat16 cfg+clip channels_last", lambda: step(
        torch.bfloat16, True, True, (-1.0, 1.0), 2)))

    # sampler_step with classifier guidance: a gradient and (N, 3) float64 rows (issue 12)
    def guided_step(dtype=f32, cl=False, clip=None, noise_mode=2, shared=False):
        x = image(dtype, cl)
        rows = torch.zeros(1, 3, dtype=f64).expand(3, 3) if shared else torch.zeros(3, 3, dtype=f64)
        sampler_step.sampler_step(x, torch.zeros_like(x), coeffs(False), None, 1.0, clip,
                                  torch.zeros_like(x) if noise_mode == 1 else None,
                                  7 if noise_mode == 2 else None, None, 3, None, torch.zeros_like(x), rows)

    out.append(("sampler_step float32 classifier-guidance", lambda: guided_step(noise_mode=1)))
    out.append(("sampler_step draw bfloat16 classifier-guidance+clip channels_last", lambda: guided_step(
        torch.bfloat16, True, (-1.0, 1.0), 2, True)))

    # learned_variance_step: coefficients (N, 10) float64, a (N, 2C, ...) model output
    def learned(dtype=f32, cl=False, clip=None, noise_mode=2, has_samples=False, has_stream=False,
                shared=False):
        x = image(dtype, cl)
        c = torch.zeros(1, 10, dtype=f64).expand(3, 10) if shared else torch.zeros(3, 10, dtype=f64)
        learned_variance_step.learned_variance_step(
            x, image(dtype, cl, (3, 8, 5, 6)), c, clip, torch.zeros_like(x) if noise_mode == 1 else None,
            7 if noise_mode == 2 else None, samples if has_samples else None,
            streams if has_stream else 3, None)

    for dtype in (f32, torch.bfloat16, torch.float16):
        if full or dtype != torch.float16:
            out.append((f"learned_variance_step draw {str(dtype)[6:]}", lambda d=dtype: learned(d)))
    out.append(("learned_variance_step float32 noise-tensor clip shared", lambda: learned(
        clip=(-1.0, 1.0), noise_mode=1, shared=True)))
    out.append(("learned_variance_step float32 no-noise", lambda: learned(noise_mode=0)))
    for cl, has_samples, has_stream, fp64 in _flag_sets(full):
        label = (f"learned_variance_step draw float32 channels_last={cl} samples={has_samples} "
                 f"stream={'tensor' if has_stream else 'int'} fp64={fp64}")
        out.append((label, with_fp64(fp64, lambda cl=cl, a=has_samples, s=has_stream: learned(
            cl=cl, has_samples=a, has_stream=s))))

    # learned_variance_step with classifier guidance (Alg. 1 with the learned Sigma, issue 12b)
    def guided_learned(dtype=f32, cl=False, clip=None, noise_mode=2, shared=False):
        x = image(dtype, cl)
        rows = torch.zeros(1, 3, dtype=f64).expand(3, 3) if shared else torch.zeros(3, 3, dtype=f64)
        learned_variance_step.learned_variance_step(
            x, image(dtype, cl, (3, 8, 5, 6)), torch.zeros(3, 10, dtype=f64), clip,
            torch.zeros_like(x) if noise_mode == 1 else None, 7 if noise_mode == 2 else None, None, 3,
            None, torch.zeros_like(x), rows)

    out.append(("learned_variance_step float32 classifier-guidance", lambda: guided_learned(noise_mode=1)))
    out.append(("learned_variance_step draw bfloat16 classifier-guidance+clip channels_last",
                lambda: guided_learned(torch.bfloat16, True, (-1.0, 1.0), 2, True)))

    # langevin_step: coefficients (N, 4) float64, shared row (stride 0) or per sample
    def langevin(dtype=f32, cl=False, noise_mode=2, has_samples=False, has_stream=False, shared=False):
        x = image(dtype, cl)
        c = torch.zeros(1, 4, dtype=f64).expand(3, 4) if shared else torch.zeros(3, 4, dtype=f64)
        langevin_step.langevin_step(x, torch.zeros_like(x), c,
                                    torch.zeros_like(x) if noise_mode == 1 else None,
                                    7 if noise_mode == 2 else None, samples if has_samples else None,
                                    streams if has_stream else 3, None)

    for dtype in (f32, torch.bfloat16, torch.float16):
        if full or dtype != torch.float16:
            out.append((f"langevin_step draw {str(dtype)[6:]}", lambda d=dtype: langevin(d)))
    out.append(("langevin_step float32 noise-tensor shared", lambda: langevin(noise_mode=1, shared=True)))
    out.append(("langevin_step float32 no-noise", lambda: langevin(noise_mode=0)))
    for cl, has_samples, has_stream, fp64 in _flag_sets(full):
        label = (f"langevin_step draw float32 channels_last={cl} samples={has_samples} "
                 f"stream={'tensor' if has_stream else 'int'} fp64={fp64}")
        out.append((label, with_fp64(fp64, lambda cl=cl, a=has_samples, s=has_stream: langevin(
            cl=cl, has_samples=a, has_stream=s))))

    # group_norm_silu: the GPU tile sizes of launch_config for typical UNet shapes; splits as a
    # device with 132 SMs would choose (BLOCK_S is a constexpr of the forward kernel)
    def norm(dtype, cl, shape, groups, weight=True, bias=True, shift=False, activation=True,
             backward=True, needs=(True, True, True, True), splits=None):
        x = image(dtype, cl, shape)
        C = shape[1]
        w = torch.ones(C, dtype=dtype) if weight else None
        b = torch.zeros(C, dtype=dtype) if bias else None
        sh = torch.zeros(shape[0], C, dtype=dtype) if shift else None
        config_ = {} if splits is None else {"splits": splits}
        y, mean, rstd = group_norm_silu.forward(x, w, b, sh, groups, 1e-6, activation, **config_)
        if backward:
            group_norm_silu.backward(torch.zeros_like(y), x, w, b, sh, mean, rstd, groups, activation,
                                     needs, **config_)

    for dtype in (f32, torch.bfloat16, torch.float16):
        for cl in (False, True):
            if not full and dtype != f32 and (dtype == torch.bfloat16) != cl:
                continue
            out.append((f"group_norm_silu {str(dtype)[6:]} channels_last={cl} (2,128,32,32) G=32",
                        lambda d=dtype, cl=cl: norm(d, cl, (2, 128, 32, 32), 32, splits=9)))
    out.append(("group_norm_silu float32 shift, no affine, no activation (2,64,16,16)",
                lambda: norm(f32, False, (2, 64, 16, 16), 32, weight=False, bias=False, shift=True,
                             activation=False, splits=9)))
    out.append(("group_norm_silu float32 shift channels_last (1,512,8,8) G=32 Cg=16",
                lambda: norm(f32, True, (1, 512, 8, 8), 32, shift=True, splits=17)))
    out.append(("group_norm_silu float32 weight only, 3-D (4,96,40) G=3 Cg=32",
                lambda: norm(f32, False, (4, 96, 40), 3, bias=False, splits=1)))
    out.append(("group_norm_silu float32 wide group (1,2048,4,4) G=8 Cg=256",
                lambda: norm(f32, False, (1, 2048, 4, 4), 8, splits=66)))

    # layer_norm_modulate (DiT): rows of D = 1152 (DiT-XL) and 384 (DiT-S), every storage dtype;
    # shift/scale float32 chunks of one (N, 6D) tensor as the DiT passes them
    from . import layer_norm_modulate

    def modulate(dtype, shape):
        x = torch.zeros(shape, dtype=dtype)
        mod = torch.zeros(shape[0], 6 * shape[2], dtype=f32)
        d = shape[2]
        y, mean, rstd = layer_norm_modulate.forward(x, mod[:, :d], mod[:, d:2 * d], 1e-6)
        layer_norm_modulate.backward(torch.zeros_like(y), x, mod[:, d:2 * d], mean, rstd)

    for dtype in (f32, torch.bfloat16, torch.float16):
        if full or dtype != torch.float16:
            out.append((f"layer_norm_modulate {str(dtype)[6:]} (2,256,1152)",
                        lambda d=dtype: modulate(d, (2, 256, 1152))))
    out.append(("layer_norm_modulate float32 (4,64,384)", lambda: modulate(f32, (4, 64, 384))))
    return out


# ----------------------------------------------------------------------------- ptxas figures

_INT64_DIV = re.compile(r"^\s*(?:@%p\d+\s+)?(?:div|rem)\.(?:s|u)64\b", re.MULTILINE)


def _figures(variant: Variant, compiled, log: str) -> None:
    """Registers, spills and stack from the `ptxas -v` log of Triton's own ptxas call (flags as
    Triton passes them, e.g. --regAllocOptLevel=2), and 64-bit integer divisions in the PTX."""
    ptx = compiled.asm.get("ptx", "")
    variant.ptx = ptx
    variant.int64_divisions = len(_INT64_DIV.findall(ptx))
    m = re.search(r"Used (\d+) registers", log)
    variant.registers = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        variant.stack, variant.spill_stores, variant.spill_loads = (int(v) for v in m.groups())


def compile_all(arches=ARCHES, *, full: bool = True, select: str | None = None) -> list[Variant]:
    """Compile the launch variants (all, or the CI subset) for each arch, in a fresh kernel
    cache (nothing is reused from earlier runs)."""
    from triton import knobs

    _check_mode()
    _kernel_modules()
    variants: list[Variant] = []
    saved_cache = knobs.cache.dir
    with tempfile.TemporaryDirectory(prefix="ddpm_triton_aot_") as cache:
        knobs.cache.dir = cache
        try:
            for arch in arches:
                for label, thunk in _launches(full):
                    if select and select not in label:
                        continue
                    seen: list[Variant] = []

                    def record(fn, compiled, kwargs, seconds, error, log, label=label, arch=arch,
                               seen=seen):
                        v = Variant(fn.__name__, label, arch, kwargs.get("num_warps", 4), seconds, error)
                        if compiled is not None:
                            _figures(v, compiled, log)
                        seen.append(v)

                    with _compile_instead_of_launch(arch, record):
                        try:
                            thunk()
                        except Exception as exc:  # noqa: BLE001 - the launcher itself failed
                            seen.append(Variant("(launcher)", label, arch, 0, 0.0,
                                                f"{type(exc).__name__}: {exc}"))
                    variants.extend(seen)
        finally:
            knobs.cache.dir = saved_cache
    return variants


def _format(v: Variant) -> str:
    if v.error:
        return f"sm_{v.arch} {v.kernel:28s} FAILED  {v.label}\n    {v.error.splitlines()[0][:300]}"
    figs = " (kernel cache hit: an identical variant above)"
    if v.registers is not None:
        figs = (f" regs={v.registers:3d} spill={v.spill_stores}/{v.spill_loads} stack={v.stack}"
                f" div64={v.int64_divisions}")
    return f"sm_{v.arch} {v.kernel:28s} warps={v.num_warps}{figs} {v.seconds:5.2f}s  {v.label}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.triton.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default 90 and 80)")
    parser.add_argument("--ci", action="store_true",
                        help="the CI subset: every flag and dtype, not every combination")
    parser.add_argument("--select", help="only launch labels containing this text")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    variants = compile_all(tuple(args.arch or ARCHES), full=not args.ci, select=args.select)
    for v in variants:
        print(_format(v), flush=True)
    failed = [v for v in variants if v.error]
    print(f"{len(variants)} variants, {len(failed)} failed, {time.perf_counter() - start:.1f}s")
    return 1 if failed or not variants else 0


if __name__ == "__main__":
    sys.exit(main())
