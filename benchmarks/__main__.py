"""`python -m benchmarks`: our kernels, sampler and training step against their peers, one run.

    python -m benchmarks                       # every suite that can run on this machine
    python -m benchmarks --suite kernels --json out.json --md out.md
    python -m benchmarks --quick               # tiny sizes, a few repeats (the CI smoke run)

Prints Markdown tables; --json/--md write the report (device, versions, commit, date, command).
The JSON (and --json-dir DIR/<suite>.json) is rewritten as each suite finishes, so a run cut
short keeps the suites it finished; a suite that raises is reported and the others still run
(exit status 1).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .harness import Report, environment

SUITES = ("kernels", "sampler", "training", "cpu")


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", choices=SUITES,
                   help="suite(s) to run (repeatable); default: all")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", action="append", choices=("fp32", "bf16", "fp16"),
                   help="dtype(s) for kernel and sampler rows (default fp32 and bf16)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--json-dir", metavar="DIR", help="also write DIR/<suite>.json as each suite finishes")
    p.add_argument("--md", metavar="PATH", help="write the Markdown tables")
    p.add_argument("--chart", metavar="PATH", help="write the bandwidth chart (PNG, needs matplotlib)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers")
    p.add_argument("--check", action="store_true",
                   help="the device-check subset (benchmarks/gpu_check.sh): the full-size cases "
                        "the issue targets name, fewer shapes and repeats, to fit one short call")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    suites = args.suite or list(SUITES)
    dtypes = args.dtype or ["fp32", "bf16"]
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    report = Report(env=environment(device), command=command.strip(), autosave=args.json)
    opts = dict(device=device, quick=args.quick, dtypes=dtypes, compile_peers=not args.no_compile)
    if args.check:
        opts["check"] = True

    from . import suite_cpu, suite_kernels, suite_sampler, suite_training

    runners = {"kernels": suite_kernels.run, "sampler": suite_sampler.run,
               "training": suite_training.run, "cpu": suite_cpu.run}
    failed = []
    for name in suites:
        print(f"[benchmarks] suite {name} on {device} ...", file=sys.stderr, flush=True)
        try:
            runners[name](report, **opts)
        except Exception as exc:  # noqa: BLE001 - keep the other suites' results
            import traceback

            traceback.print_exc()
            failed.append(name)
            report.skip(f"suite {name}", f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        if args.json:
            report.write_json(args.json)
        if args.json_dir:
            from pathlib import Path

            suite_report = Report(env=report.env, command=report.command,
                                  rows=[r for r in report.rows if r.suite == name],
                                  skipped=list(report.skipped))
            suite_report.write_json(Path(args.json_dir) / f"{name}.json")
        print(f"[benchmarks] suite {name} done", file=sys.stderr, flush=True)
    md = report.markdown()
    print(md)
    if args.md:
        from pathlib import Path

        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(md + "\n")
    if args.chart:
        from .chart import bandwidth_chart

        written = bandwidth_chart(report.to_json(), args.chart)
        print(f"[benchmarks] chart: {written or 'no sweep rows, nothing drawn'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
