"""CPU speed options shared by the Trainer and FastSampler: bf16 detection, torch.compile, AdamW.

- bf16 autocast pays on CPUs with native bf16 matrix units (Intel AMX-BF16) or bf16 dot-product
  instructions (AVX512-BF16); elsewhere torch emulates bf16 in fp32 and it is slower than fp32.
  `cpu_bf16_support()` DETECTS them (the kernel's /proc/cpuinfo flags and torch's own CPU
  capability), it does not assume them.
- torch.compile on the CPU uses inductor's C++ code generation: it needs a C++ compiler, checked
  up front (`check_compiler`) so that a missing one is one clear line before any work starts.
- AdamW: the fused CPU kernel (`fused=True`, torch >= 2.4) does a parameter's whole update in one
  pass instead of ~10 whole-tensor ops per parameter (the default for-loop implementation on the
  CPU); `adamw_kernel_options(device)` picks it where it exists.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil

import torch

__all__ = ["cpu_bf16_support", "check_compiler", "adamw_kernel_options", "BF16_CPU_FLAGS"]

log = logging.getLogger("ddpm.cpu_speed")

# /proc/cpuinfo flags of native bf16 arithmetic: AMX tiles (Sapphire Rapids and later) and
# AVX512-BF16 dot products (Cooper Lake, Zen 4 and later).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def parse_bf16_support(flags: set[str], capability: str) -> tuple[bool, str]:
    """(supported, one line saying why) from the CPU flags and torch's CPU capability string."""
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    if found:
        return True, f"native bf16 on this CPU ({', '.join(found)}; torch capability {capability})"
    return False, (f"this CPU has no native bf16 (no {' / '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo; "
                   f"torch capability {capability}): bf16 would be emulated and slower than float32")


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively (AMX-BF16 or AVX512-BF16), and one line saying why.

    DDPM_CPU_BF16=1/0 overrides the detection (e.g. to test the bf16 path's numerics on any CPU,
    where torch emulates it)."""
    override = os.environ.get("DDPM_CPU_BF16")
    if override in ("0", "1"):
        return override == "1", f"DDPM_CPU_BF16={override} (detection overridden)"
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - very old torch: no capability query
        capability = "unknown"
    return parse_bf16_support(_cpuinfo_flags(), capability)


def check_compiler(what: str) -> None:
    """Raise RuntimeError (one line) unless a C++ compiler for inductor's CPU code is on PATH."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        raise RuntimeError(f"{what}: torch.compile on the CPU needs a C++ compiler (inductor's C++ "
                           f"backend); none found ({cxx}, c++, clang++); drop the compile option")


def adamw_kernel_options(device: torch.device) -> dict:
    """AdamW keyword arguments: fused=True on the CPU where torch has the fused CPU kernel."""
    if device.type != "cpu":
        return {}
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return {}
    return {"fused": True}
