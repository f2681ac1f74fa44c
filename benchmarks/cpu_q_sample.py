"""Evidence for issue 17 (part B): `q_sample` with its own Philox noise on the CPU against
`torch.randn` + diffusers `add_noise`, and `normal` against `torch.randn`.

    python -m benchmarks.cpu_q_sample [--threads 2 1] [--out benchmarks/results/cpu-q-sample]

Runs the `q_sample` and `normal` rows of `python -m benchmarks --suite cpu` (suite_cpu_noise.py:
interleaved, medians) at each torch thread count, plus the cold build time of the compiled
library (a fresh cache folder), and writes <out>.md and <out>.json with the command, machine,
commit and the `uptime` load average before and after (the machine may be shared: a timing
taken under load says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .harness import Report, environment
from .suite_cpu_noise import run_noise_rows


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cold_build_seconds() -> float | None:
    """Seconds to build the library into an empty cache, in a fresh process (CI's first use)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DDPM_CACHE=tmp)
        code = "import time; t = time.perf_counter(); from kernels.cpu import philox; " \
               "assert philox.library() is not None; print(time.perf_counter() - t)"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        return float(done.stdout.strip()) if done.returncode == 0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--out", default="benchmarks/results/cpu-q-sample")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = p.parse_args(argv)
    command = "python -m benchmarks.cpu_q_sample " + " ".join(argv if argv is not None else sys.argv[1:])
    before = _uptime()
    build_s = _cold_build_seconds()
    sections, reports = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        report = Report(env=environment("cpu"), command=command.strip())
        t0 = time.perf_counter()
        run_noise_rows(report, args.quick)
        reports[threads] = report.to_json()
        table = report.markdown().split("## cpu", 1)[1].strip()
        sections += [f"## torch threads = {threads} ({time.perf_counter() - t0:.0f} s)", "", table, ""]
    after = _uptime()
    env = environment("cpu")
    head = [f"# q_sample / normal on the CPU: ours (own Philox noise) vs torch.randn + diffusers add_noise", "",
            f"- command: `{command.strip()}`",
            f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs, torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}",
            f"- commit `{env['commit']}`, date {env['date']}, torch {env['torch']}, diffusers {env['diffusers']}",
            f"- load before: `{before}`", f"- load after: `{after}`",
            f"- cold build of the compiled library (fresh cache, new process): "
            f"{'failed' if build_s is None else f'{build_s:.1f} s'}",
            "- times are medians of interleaved calls (wall clock); `X / ours` > 1 means ours is faster", ""]
    md = "\n".join(head + sections)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command.strip(), "machine": _cpu_model(), "uptime_before": before, "uptime_after": after,
         "cold_build_s": build_s, "by_threads": reports}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
