"""MNIST at full size: score a class-conditional 28x28 run and write its result page.

    python -m benchmarks.mnist_full_size --run RUN_DIR --train-started 2026-12-01T09:55:52Z \\
        --train-command "python -m ddpm train ..." [--per-class 100] [--sampler ddim --steps 50] \\
        [--guidance 3] [--out benchmarks/results/mnist-full-size]

Draws `per-class` samples of each digit from the run's newest checkpoint (EMA weights), scores
them with `ddpm.evaluate.sample_quality(data="mnist")` (class hit rate by the in-project
classifier, FD-mnist beside its floor, precision/recall) and writes OUT.md, OUT.json and OUT.png
(a grid, one row per digit 0..9, the first 10 samples of each). The training wall time is from
`--train-started` (when the run was launched) to the checkpoint file's modification time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ddpm
from ddpm.runs import load_model
from ddpm.viz import save_grid

from .sampler_quality import _commit, _machine, _plain, _resolve_checkpoint, evaluations_per_sample

__all__ = ["main"]


def _parse_time(text: str) -> float:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as err:
        raise ValueError(f"--train-started must be an ISO time like 2026-12-01T09:55:52Z, got {text!r}") from err


def _draw(model, schedule, cfg, *, per_class, sampler, steps, guidance, seed, batch_size):
    n = per_class * cfg.num_classes
    labels = torch.arange(n) % cfg.num_classes
    start = time.perf_counter()
    parts = [ddpm.sample(model, (len(idx), cfg.in_channels, cfg.image_size, cfg.image_size), schedule,
                         sampler=sampler, num_steps=steps, seed=seed, samples=idx, y=labels[idx],
                         guidance_scale=guidance)
             for idx in torch.arange(n).split(batch_size)]
    return torch.cat(parts).clamp(-1.0, 1.0), labels, time.perf_counter() - start


def _page(r: dict) -> str:
    q = r["quality"]
    hours = r["train_wall_s"] / 3600
    lines = [
        "# MNIST at full size (28x28, class-conditional) on a shared 2-core CPU\n",
        f"- data: the 10k MNIST test split at `../shared/data/mnist`; trained on indices 0..8999 "
        f"(the first 9,000 by file order), indices 9000..9999 held out (the split of "
        f"`reference.feature_nets`, so the in-project classifier and feature net never saw the "
        f"held-out 1,000 either)",
        f"- training command: `{r['train_command']}`",
        f"- checkpoint: step {r['step']} ({r['checkpoint']}); training wall time "
        f"{r['train_wall_s']:.0f} s ({hours:.2f} h) from launch to that checkpoint",
        f"- machine: {r['machine']}; commit `{r['commit']}`; the 2 cores were shared with other "
        f"jobs during training (load average ~{r['train_load']}), so the wall time is not a speed figure",
        f"- scoring command: `{r['command']}`",
        f"- samples: {r['n']} ({r['per_class']} per digit), {r['sampler']} {r['steps']} steps, "
        f"guidance w = {r['guidance']} ({r['evaluations']} model evaluations per sample), seed "
        f"{r['seed']}; sampling wall time {r['sample_wall_s']:.1f} s (load average at the end {r['load_end']})\n",
        "| figure | samples | floor (two disjoint real halves of the same size) |",
        "|---|---:|---:|",
        f"| class hit rate (in-project classifier) | {q['hit_rate']:.3f} | {q['hit_rate_floor']:.3f} "
        f"(its held-out accuracy: {q['feature_net_accuracy']}) |",
        f"| FD-mnist (in-project feature net, not FID) | {q['fd']:.3f} | {q['fd_floor']:.3f} "
        f"(ratio {q['fd'] / q['fd_floor']:.2f}x) |",
        f"| precision (k = 3) | {q['precision']:.3f} | {q['precision_floor']:.3f} |",
        f"| recall (k = 3) | {q['recall']:.3f} | {q['recall_floor']:.3f} |",
        f"| per-class hit rate | {', '.join(f'{k}: {v:.2f}' for k, v in enumerate(q['hit_rate_per_class']))} | |",
        "",
        f"Grid: `{Path(r['grid']).name}` (row k = digit k, the first 10 samples of each).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mnist_full_size", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the training run directory (or a checkpoint)")
    p.add_argument("--train-started", required=True, help="ISO time the training run was launched")
    p.add_argument("--train-command", required=True)
    p.add_argument("--train-load", default="?", help="load average seen during training (text)")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--sampler", default="ddim", choices=tuple(ddpm.SAMPLERS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default="benchmarks/results/mnist-full-size")
    args = p.parse_args(argv)
    try:
        started = _parse_time(args.train_started)
        run = Path(args.run)
        checkpoint = _resolve_checkpoint(run, "--run")
        if args.per_class < 1 or args.steps < 1 or not args.guidance >= 0:
            raise ValueError("--per-class and --steps must be >= 1 and --guidance >= 0")
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ddpm.evaluate import sample_quality

    model, schedule, ckpt = load_model(checkpoint, ema=True, device=torch.device("cpu"))
    cfg = ckpt.unet_config
    images, labels, sample_wall = _draw(model, schedule, cfg, per_class=args.per_class, sampler=args.sampler,
                                        steps=args.steps, guidance=args.guidance, seed=args.seed,
                                        batch_size=args.batch_size)
    quality = {k: _plain(v) for k, v in sample_quality(images, data="mnist", labels=labels.numpy(),
                                                       seed=args.seed).items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    order = torch.cat([torch.nonzero(labels == k).flatten()[:10] for k in range(cfg.num_classes)])
    grid = save_grid(out.with_suffix(".png"), images[order], 10)
    report = {"command": "python -m benchmarks.mnist_full_size " + " ".join(argv if argv is not None else sys.argv[1:]),
              "train_command": args.train_command, "train_load": args.train_load,
              "checkpoint": str(checkpoint), "step": ckpt.step,
              "train_wall_s": os.path.getmtime(checkpoint / "COMPLETE.json") - started, "machine": _machine(),
              "commit": _commit(), "n": int(labels.numel()), "per_class": args.per_class,
              "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
              "evaluations": evaluations_per_sample(args.steps, args.guidance),
              "sample_wall_s": sample_wall, "load_end": os.getloadavg(), "quality": quality,
              "grid": str(grid)}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(_page(report))
    print(_page(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
