"""The sampler quality table: every sampler at its number of model evaluations, one model per data.

    python -m benchmarks.sampler_quality --model digits=RUN_DIR --model mnist=RUN_DIR \\
        [--n 500] [--guidance 1.0] [--samplers ddpm:1000,ddim:50,...] \\
        [--out benchmarks/results/sampler-quality]

For each model (a run directory or checkpoint file, class-conditional, trained on `digits` or
`mnist`) and each (sampler, steps) of the list (default: DDPM 1000/250/100, DDIM 100/50/20/10,
DPM-Solver++ 20/10), draws n samples from the EMA weights, classes 0..9 in turn, with one seed,
and scores them with `ddpm.evaluate.sample_quality` (FD in the in-project feature net's space
beside its floor, precision and recall (k = 3), class hit rate). The number of model evaluations
per sample is steps (x 2 with classifier-free guidance, w != 1: the conditional and the
unconditional output are one batched call of twice the rows). Wall time is the sampling alone.
Writes OUT.json (every row, the settings, the machine), OUT.md (the tables) and OUT.png
(FD against the number of evaluations, one panel per model, the floor dashed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ddpm
from ddpm.runs import load_model

__all__ = ["DEFAULT_SAMPLERS", "parse_samplers", "evaluations_per_sample", "run_model", "main"]

DEFAULT_SAMPLERS = (("ddpm", 1000), ("ddpm", 250), ("ddpm", 100), ("ddim", 100), ("ddim", 50),
                    ("ddim", 20), ("ddim", 10), ("dpm_solver++", 20), ("dpm_solver++", 10))
DATA_NAMES = ("digits", "mnist")


def parse_samplers(text: str) -> tuple[tuple[str, int], ...]:
    """'ddpm:1000,ddim:50' -> (('ddpm', 1000), ('ddim', 50)); a bad entry is one clear error."""
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in ddpm.SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--samplers: {item!r} is not SAMPLER:STEPS with SAMPLER in "
                             f"{tuple(ddpm.SAMPLERS)} and STEPS >= 1")
        out.append((name, int(steps)))
    return tuple(out)


def evaluations_per_sample(steps: int, guidance: float) -> int:
    """Model evaluations per sample: one per step, two with classifier-free guidance (w != 1)."""
    return steps * (1 if guidance == 1.0 else 2)


def _resolve_checkpoint(path: Path, flag: str = "--model") -> Path:
    """A checkpoint directory as given, or the newest complete one of a run directory."""
    if (path / "COMPLETE.json").is_file():
        return path
    if path.is_dir():
        found = ddpm.latest_checkpoint(path)
        if found is None:
            raise ValueError(f"{flag}: no checkpoint under {path}")
        return Path(found)
    raise ValueError(f"{flag}: no such checkpoint or run directory {path}")


def run_model(data: str, checkpoint: Path, samplers, *, n: int, guidance: float, seed: int,
              batch_size: int, echo=print) -> dict:
    """Sample and score one model with every sampler; returns {'checkpoint', 'step', 'rows'}."""
    from ddpm.evaluate import sample_quality

    model, schedule, ckpt = load_model(checkpoint, ema=True, device=torch.device("cpu"))
    num_classes = ckpt.unet_config.num_classes
    if num_classes is None:
        raise ValueError(f"--model {data}: {checkpoint} is unconditional; the table needs class hit rates")
    cfg = ckpt.unet_config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    labels = torch.arange(n) % num_classes
    rows = []
    for sampler, steps in samplers:
        start = time.perf_counter()
        parts = [ddpm.sample(model, (len(idx), *shape), schedule, sampler=sampler, num_steps=steps,
                             seed=seed, samples=idx, y=labels[idx], guidance_scale=guidance)
                 for idx in torch.arange(n).split(batch_size)]
        wall = time.perf_counter() - start
        images = torch.cat(parts).clamp(-1.0, 1.0)
        quality = sample_quality(images, data=data, labels=labels.numpy(), seed=seed)
        row = {"sampler": sampler, "steps": steps, "evaluations": evaluations_per_sample(steps, guidance),
               "wall_s": round(wall, 2), **{k: _plain(v) for k, v in quality.items()}}
        rows.append(row)
        echo(f"{data} {sampler:>13} {steps:>5} steps: FD {row['fd']:.3f} (floor {row['fd_floor']:.3f}) "
             f"P {row['precision']:.3f} R {row['recall']:.3f} hit {row['hit_rate']:.3f} {wall:.1f} s")
    return {"checkpoint": str(checkpoint), "step": ckpt.step, "rows": rows}


def _plain(value):
    """JSON-able numbers (NumPy scalars and 0-d tensors to floats); dicts and lists kept."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _markdown(report: dict) -> str:
    lines = [f"# Sampler quality table\n", f"command: `{report['command']}`  ",
             f"machine: {report['machine']}; commit `{report['commit']}`; load average at start "
             f"{report['load_start']}, at end {report['load_end']} (wall times are under that load)\n",
             f"n samples per row (classes 0..9 in turn; n per model below), guidance w = {report['guidance']}, "
             f"seed {report['seed']}; FD in the in-project feature net's space (not FID); floor: the same "
             f"figure between two disjoint real halves of n images each.\n"]
    for data, result in report["models"].items():
        lines += [f"## {data} (checkpoint {result['checkpoint']}, step {result['step']}, "
                  f"n = {result.get('n', report['n'])})\n",
                  "| sampler | steps | model evals / sample | FD | FD floor | precision | recall | hit rate | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["rows"]:
            lines.append(f"| {r['sampler']} | {r['steps']} | {r['evaluations']} | {r['fd']:.3f} | "
                         f"{r['fd_floor']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['hit_rate']:.3f} | {r['wall_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, (data, result) in zip(axes[0], models.items()):
        for sampler in dict.fromkeys(r["sampler"] for r in result["rows"]):
            rows = sorted((r for r in result["rows"] if r["sampler"] == sampler), key=lambda r: r["evaluations"])
            ax.plot([r["evaluations"] for r in rows], [r["fd"] for r in rows], "o-", label=sampler)
        floor = np.mean([r["fd_floor"] for r in result["rows"]])
        ax.axhline(floor, color="gray", ls="--", label=f"floor (real vs real, n={result.get('n', report['n'])})")
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per sample")
        ax.set_ylabel(f"FD-{data}")
        ax.set_title(f"{data}: FD vs evaluations (w = {report['guidance']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def combine(reports: list[dict]) -> dict:
    """One report from several runs of this script (e.g. the slow DDPM rows run apart): each
    model's rows in run order, every run's command kept; n and guidance must agree."""
    first = reports[0]
    for r in reports[1:]:
        if (r["guidance"], r["seed"]) != (first["guidance"], first["seed"]):
            raise ValueError("--combine: the runs differ in guidance or seed")
    out = {**first, "command": " ; ".join(r["command"] for r in reports), "models": {},
           "load_start": [r["load_start"] for r in reports], "load_end": [r["load_end"] for r in reports]}
    for r in reports:
        for data, result in r["models"].items():
            result = {"n": r["n"], **result}
            if data in out["models"] and (out["models"][data]["checkpoint"], out["models"][data]["n"]) != \
                    (result["checkpoint"], result["n"]):
                raise ValueError(f"--combine: two checkpoints or sample counts for {data}")
            out["models"].setdefault(data, {**result, "rows": []})["rows"].extend(result["rows"])
    return out


def _machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread(s)), Python {platform.python_version()}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampler_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="DATA=PATH",
                        help=f"DATA in {DATA_NAMES}, PATH a run directory or checkpoint (repeatable)")
    parser.add_argument("--n", type=int, default=500, help="samples per sampler, >= 2")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance w, >= 0")
    parser.add_argument("--samplers", default=None, help="SAMPLER:STEPS,... (default: the full list)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", default="benchmarks/results/sampler-quality", help="path stem of .json/.md/.png")
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--combine":  # --combine A.json B.json ... --out STEM
        *inputs, flag, stem = argv[1:] if len(argv) >= 4 else ("", "", "")
        if flag != "--out" or not inputs:
            print("error: usage: --combine A.json [B.json ...] --out STEM", file=sys.stderr)
            return 2
        report = combine([json.loads(Path(p).read_text()) for p in inputs])
        return _write(report, Path(stem))
    args = parser.parse_args(argv)
    try:
        samplers = DEFAULT_SAMPLERS if args.samplers is None else parse_samplers(args.samplers)
        if args.n < 2:
            raise ValueError(f"--n must be >= 2, got {args.n}")
        if not args.guidance >= 0.0:
            raise ValueError(f"--guidance must be >= 0, got {args.guidance}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        models = {}
        for item in args.model:
            data, _, path = item.partition("=")
            if data not in DATA_NAMES or not path:
                raise ValueError(f"--model must be DATA=PATH with DATA in {DATA_NAMES}, got {item!r}")
            models[data] = _resolve_checkpoint(Path(path))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": "python -m benchmarks.sampler_quality " + " ".join(argv),
              "machine": _machine(), "commit": _commit(), "load_start": os.getloadavg(),
              "n": args.n, "guidance": args.guidance, "seed": args.seed, "models": {}}
    for data, checkpoint in models.items():
        report["models"][data] = run_model(data, checkpoint, samplers, n=args.n, guidance=args.guidance,
                                           seed=args.seed, batch_size=args.batch_size)
    report["load_end"] = os.getloadavg()
    return _write(report, out)


def _write(report: dict, out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(_markdown(report))
    _plot(report, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
