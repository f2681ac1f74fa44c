"""CPU rows of the noise stream (issue 17): `q_sample` drawing its own Philox noise against
`torch.randn` + diffusers `DDPMScheduler.add_noise`, and `normal` against `torch.randn`.

Every implementation of a row is timed interleaved (one call of each in turn, repeated), so a
machine whose load changes during the run slows all of them alike; the row keeps the medians.
Implementations:
  ours              kernels.q_sample / kernels.normal, backend torch, on CPU tensors: the compiled
                    noise stream (kernels/cpu) when it is available (the row's notes say which)
  ours-pure-torch   the same call with DDPM_KERNELS_CPU_NATIVE=0 (the fallback without a compiler)
  ours-noise-given  q_sample with the noise passed in (no drawing)
  randn+add_noise   torch.randn(x0.shape) + DDPMScheduler.add_noise (what diffusers users run)
  torch.randn       torch's own (non counter-based) generator
  numpy-reference   reference.normal (the definition, float64 NumPy Philox)
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import numpy as np
import torch

import kernels
import reference
from kernels.cpu import build as cpu_build
from kernels.cpu import philox as cpu_philox

from .harness import Report, Row

__all__ = ["run_noise_rows", "interleaved"]


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 2,
                cpu_times: dict[str, float] | None = None) -> dict[str, float]:
    """Median wall seconds per call of each fn, calling them in turn `repeat` times; with
    `cpu_times`, also the median process CPU seconds per call (all threads: the work done,
    which a loaded machine inflates less than the wall time)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    if cpu_times is not None:
        cpu_times.update({name: statistics.median(ts) for name, ts in cpu.items()})
    return {name: statistics.median(ts) for name, ts in times.items()}


def _cpu_note(cpu_times: dict[str, float]) -> str:
    return "CPU time per call: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in cpu_times.items())


def _pure_torch(fn: Callable[[], object]) -> Callable[[], object]:
    """fn with the compiled CPU library switched off (DDPM_KERNELS_CPU_NATIVE=0) for the call."""
    def call():
        old = os.environ.get(cpu_build.NATIVE_ENV)
        os.environ[cpu_build.NATIVE_ENV] = "0"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[cpu_build.NATIVE_ENV]
            else:
                os.environ[cpu_build.NATIVE_ENV] = old
    return call


def _native_note() -> str:
    lib = cpu_philox.library()
    if lib is None:
        return "compiled noise stream UNAVAILABLE: ours is the pure-torch fallback"
    return f"compiled noise stream, {'AVX2' if cpu_philox.uses_avx2(lib) else 'plain C++'}"


def _q_sample_row(report: Report, shape: tuple[int, ...], repeat: int, slow_repeat: int) -> None:
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        report.skip("cpu q_sample", "diffusers is not installed (the peer)")
        return

    schedule = reference.make_schedule("linear", 1000)
    sqrt_ab = torch.tensor(np.sqrt(schedule.alpha_bars), dtype=torch.float32)
    sqrt_1mab = torch.tensor(np.sqrt(1.0 - schedule.alpha_bars), dtype=torch.float32)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen)
    t = torch.randint(0, 1000, (shape[0],), generator=gen)
    samples = torch.arange(shape[0])
    given = torch.randn(shape, generator=gen)

    def ours():
        return kernels.q_sample(x0, t, sqrt_ab, sqrt_1mab, None, seed=7, samples=samples, stream=3,
                                backend="torch")

    def peer():
        return scheduler.add_noise(x0, torch.randn(x0.shape), t)

    fns = {"ours": ours, "randn+add_noise": peer,
           "ours-noise-given": lambda: kernels.q_sample(x0, t, sqrt_ab, sqrt_1mab, given, backend="torch")}
    row = Row("cpu", "q_sample", dict(shape="x".join(map(str, shape)), dtype="fp32",
                                      threads=torch.get_num_threads()), items=shape[0])
    cpu_times: dict[str, float] = {}
    row.times.update(interleaved(fns, repeat, cpu_times=cpu_times))
    # the fallback is ~40x slower: fewer calls, interleaved with ours again
    slow = interleaved({"ours": ours, "ours-pure-torch": _pure_torch(ours)}, slow_repeat, warmup=1)
    row.times["ours-pure-torch"] = slow["ours-pure-torch"]
    ratio = row.times["ours"] / row.times["randn+add_noise"]
    row.notes = (f"ours / randn+add_noise = {ratio:.2f}x (issue 17 goal: <= 1.5x); {_native_note()}; "
                 f"median of {repeat} ({slow_repeat} for pure-torch); {_cpu_note(cpu_times)}")
    report.add(row)


def _normal_row(report: Report, shape: tuple[int, ...], repeat: int, slow_repeat: int) -> None:
    samples = torch.arange(shape[0])

    def ours():
        return kernels.normal(7, samples, 3, shape[1:], backend="torch")

    row = Row("cpu", "normal", dict(shape="x".join(map(str, shape)), dtype="fp32",
                                    threads=torch.get_num_threads()), items=shape[0])
    cpu_times: dict[str, float] = {}
    row.times.update(interleaved({"ours": ours, "torch.randn": lambda: torch.randn(shape)}, repeat,
                                 cpu_times=cpu_times))
    slow = interleaved({"ours-pure-torch": _pure_torch(ours),
                        "numpy-reference": lambda: reference.normal(7, np.arange(shape[0]), 3, shape[1:])},
                       slow_repeat, warmup=1)
    row.times.update(slow)
    ratio = row.times["ours"] / row.times["torch.randn"]
    row.notes = (f"ours / torch.randn = {ratio:.2f}x; {_native_note()}; median of {repeat} "
                 f"({slow_repeat} for pure-torch/reference); {_cpu_note(cpu_times)}")
    report.add(row)


def run_noise_rows(report: Report, quick: bool) -> None:
    """The `q_sample` and `normal` rows at 128x3x32x32 (quick: 8x3x8x8)."""
    shape = (8, 3, 8, 8) if quick else (128, 3, 32, 32)
    repeat, slow_repeat = (5, 5) if quick else (41, 7)
    cpu_philox.library()  # build (once) outside every timing
    _q_sample_row(report, shape, repeat, slow_repeat)
    _normal_row(report, shape, repeat, slow_repeat)
