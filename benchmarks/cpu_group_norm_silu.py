"""CPU rows of `group_norm_silu` (issue 17): the compiled kernel against the pure-torch path and
against what diffusers runs (F.group_norm then F.silu, ATen's fused kernels), float32 NCHW.

    python -m benchmarks.cpu_group_norm_silu [--repeat 21] [--md M] [--json J]

Implementations, timed interleaved (one call of each in turn), medians:
  ours              kernels.group_norm_silu, backend torch: kernels/cpu/group_norm_silu.cpp where
                    it builds (the notes say whether it did)
  ours-pure-torch   the same call with DDPM_KERNELS_CPU_NATIVE=0 (ATen's GroupNorm on centred
                    input, the reference's backward in torch ops)
  torch-eager       F.silu(F.group_norm(x + shift)) as diffusers' ResnetBlock2D runs it
Shapes: the digits8 UNet's two GroupNorm sizes at batch 64 (with the time-embedding shift of a
ResBlock's norm2) and one of the CIFAR-10 preset at batch 8. Forward rows run under no_grad;
backward rows time torch.autograd.grad of x, weight, bias (and shift) for a fixed dy.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import kernels
from kernels.cpu import group_norm_silu as cpu_group_norm_silu

from .harness import Report, Row
from .suite_cpu_noise import _cpu_note, _pure_torch, interleaved

SHAPES = [((64, 32, 8, 8), 8), ((64, 64, 4, 4), 8), ((8, 128, 32, 32), 32)]
QUICK_SHAPES = [((4, 8, 4, 4), 4)]


def _note() -> str:
    lib = cpu_group_norm_silu.library()
    if lib is None:
        return "compiled group_norm_silu UNAVAILABLE: ours is the pure-torch path"
    avx2 = cpu_group_norm_silu._use_avx2(lib)
    return f"compiled group_norm_silu, {'AVX2' if avx2 else 'plain C++'}"


def _rows_for(report: Report, shape, groups: int, repeat: int) -> None:
    gen = torch.Generator().manual_seed(0)
    n, c = shape[:2]
    x = torch.randn(shape, generator=gen).requires_grad_()
    w = (torch.randn(c, generator=gen) + 1).requires_grad_()
    b = torch.randn(c, generator=gen).requires_grad_()
    shift = torch.randn(n, c, generator=gen).requires_grad_()
    dy = torch.randn(shape, generator=gen)
    leaves = (x, w, b, shift)

    def ours():
        return kernels.group_norm_silu(x, w, b, groups, 1e-6, shift=shift, backend="torch")

    def eager():
        return F.silu(F.group_norm(x + shift[:, :, None, None], groups, w, b, 1e-6))

    forwards = {"ours": ours, "ours-pure-torch": _pure_torch(ours), "torch-eager": eager}
    params = dict(shape="x".join(map(str, shape)), dtype="fp32", groups=groups, shift="yes",
                  threads=torch.get_num_threads())
    cpu: dict[str, float] = {}
    with torch.no_grad():
        times = interleaved(forwards, repeat, cpu_times=cpu)
    report.add(Row("cpu", "group_norm_silu-forward", dict(params), times=times, items=n,
                   notes=f"{_note()}; median of {repeat}; {_cpu_note(cpu)}"))

    def backward_of(forward):
        def call():
            torch.autograd.grad(forward(), leaves, dy)
        return call

    cpu = {}
    times = interleaved({"ours": backward_of(ours), "ours-pure-torch": _pure_torch(backward_of(ours)),
                         "torch-eager": backward_of(eager)}, repeat, cpu_times=cpu)
    report.add(Row("cpu", "group_norm_silu-forward+backward", dict(params), times=times, items=n,
                   notes=f"{_note()}; median of {repeat}; {_cpu_note(cpu)}"))


def run_group_norm_rows(report: Report, quick: bool, repeat: int | None = None) -> None:
    cpu_group_norm_silu.library()  # build (once) outside every timing
    for shape, groups in (QUICK_SHAPES if quick else SHAPES):
        _rows_for(report, shape, groups, repeat or (3 if quick else 21))


def main(argv=None) -> int:
    import argparse
    import shlex
    import sys

    from .harness import environment

    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_group_norm_silu")
    p.add_argument("--repeat", type=int, default=21)
    p.add_argument("--threads", type=int, default=int(os.environ.get("DDPM_BENCH_THREADS", "2")))
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.cpu_group_norm_silu " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = Report(env=environment("cpu"), command=command, autosave=args.json)
    report.env["load_average_start"] = os.getloadavg()
    run_group_norm_rows(report, quick=False, repeat=args.repeat)
    report.finish(args.json, args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
