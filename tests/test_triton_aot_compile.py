"""Every Triton kernel compiles ahead of time for Hopper (sm_90) and Ampere (sm_80), without a GPU.

The CPU suite runs the Triton kernels in the interpreter, which accepts code that the compiler
rejects (a Python float argument typed fp32, constexpr misuse, loop-carried type changes). Here
`python -m kernels.triton.aot --ci` compiles each kernel with Triton's own compiler and bundled
ptxas for the argument types and constexpr values the launchers really pass (it runs the real
launchers on small CPU tensors and turns each launch into a compile), in a fresh kernel cache,
in one subprocess (the kernels must be decorated in compiled mode, the test process has
TRITON_INTERPRET=1). It fails on any compile error, and guards the ptxas figures against the
regressions fixed in issue 19 (64-bit divisions per element, 194-255 registers, spills); the
exact figures are in benchmarks/results/triton-aot-sm90.md. About a minute on one core.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _nvidia_backend_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        from triton.backends import backends
    except Exception as exc:  # noqa: BLE001
        return f"triton.backends cannot be imported: {exc}"
    if "nvidia" not in backends:
        return "triton's NVIDIA backend is absent (no ptxas/compiler for CUDA targets)"
    return None


REASON = _nvidia_backend_reason()
ELEMENTWISE = ("_words_kernel", "_normal_kernel", "_q_sample_kernel", "_sampler_step_kernel",
               "_langevin_step_kernel")
LINE = re.compile(r"^sm_(\d+) (\w+)\s+warps=(\d+) regs=\s*(\d+) spill=(\d+)/(\d+) stack=(\d+) div64=(\d+)")


@pytest.fixture(scope="module")
def aot_output():
    if REASON:
        pytest.skip(REASON)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop("DDPM_KERNELS_NORMAL_FP64", None)
    result = subprocess.run([sys.executable, "-m", "kernels.triton.aot", "--ci", "--arch", "90",
                             "--arch", "80"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    return result


def test_every_triton_kernel_compiles_for_sm90_and_sm80(aot_output):
    out = aot_output.stdout + aot_output.stderr
    assert aot_output.returncode == 0, f"AOT compile failed:\n{out[-6000:]}"
    kernels_seen = {(m.group(1), m.group(2)) for m in map(LINE.match, out.splitlines()) if m}
    for arch in ("90", "80"):
        for name in ELEMENTWISE + ("_stats_kernel", "_forward_kernel", "_backward_partials_kernel",
                                   "_backward_dx_kernel", "_backward_modulation_kernel"):
            assert (arch, name) in kernels_seen, f"{name} was not compiled for sm_{arch}:\n{out[-3000:]}"


def test_compiled_kernels_keep_their_register_and_division_budget(aot_output):
    """Loose guards (ptxas versions differ): no per-element 64-bit division in the elementwise
    kernels (they were 8-16 per thread), at most 168 registers (was up to 255 with spills), at
    most 8 bytes of spill."""
    rows = [m for m in map(LINE.match, aot_output.stdout.splitlines()) if m]
    if not rows:
        pytest.skip("no ptxas figures in the output (this Triton does not print its ptxas log)")
    problems = []
    for m in rows:
        arch, name, _, regs, spill_st, spill_ld, _, div64 = m.groups()
        if name in ELEMENTWISE and int(div64):
            problems.append(f"sm_{arch} {name}: {div64} 64-bit divisions")
        if int(regs) > 168:
            problems.append(f"sm_{arch} {name}: {regs} registers")
        if max(int(spill_st), int(spill_ld)) > 8:
            problems.append(f"sm_{arch} {name}: spills {spill_st}/{spill_ld} bytes")
    assert not problems, "\n".join(problems)
