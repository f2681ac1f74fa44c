"""Improved DDPM's few-step claim on the digits: learned vs fixed variance, hit rate and FD-digits.

    python -m ddpm train --data digits --config digits8 --out RUNS/simple --steps 1500 \\
        --batch-size 64 --lr 2e-3 --warmup 50 --ema-decay 0.999 --label-dropout 0.1 \\
        --schedule linear --timesteps 1000 --seed 0 --samples 0 --variance fixed_small --loss simple
    python -m ddpm train ... --out RUNS/hybrid ... --variance learned --loss hybrid
    python -m benchmarks.improved_ddpm_few_steps_digits --simple RUNS/simple --hybrid RUNS/hybrid \\
        --out benchmarks/results/improved-ddpm-few-steps-digits

Nichol & Dhariwal 2021 (Sec. 4, Fig. 8): a model trained with L_hybrid and learned variances
keeps its sample quality when DDPM ancestral sampling is respaced to few steps, while an
L_simple model with a fixed variance (sigma^2 = beta_tilde_t "fixed_small" or beta_t
"fixed_large") degrades. Two class-conditional digits8 UNets with the same data, seed, steps and
optimiser (the commands above: the demo's settings, 1,500 steps) are sampled with
`ddpm.sample(sampler="ddpm", num_steps=K, spacing="linspace")` (the paper's code visits evenly
spaced steps, both ends included) for K in 25, 50, 100, 1000 of T = 1000, conditional on the
class (guidance scale 1: no classifier-free guidance, so only the variance differs), the
predicted x0 clipped to [-1, 1] at every step as the paper's code does (clip_denoised) and the
final samples clamped to [-1, 1]:

    simple: fixed_small, fixed_large       hybrid: learned, and (ablation) its eps with fixed_small

Quality: `ddpm.evaluate.sample_quality(data="digits")`: the Frechet distance in the in-project
digits feature network's space (FD-digits, not FID) beside its floor (two disjoint halves of
real digits of the same size), precision/recall (k = 3) and the class hit rate by that network.
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
from ddpm.evaluate import sample_quality
from ddpm.run_dir import latest_checkpoint
from ddpm.runs import load_model
from ddpm.viz import save_grid

STEP_COUNTS = (25, 50, 100, 1000)
# (model, variance the sampler uses, row label)
ROWS = (("simple", "fixed_small", "simple, fixed_small (beta_tilde)"),
        ("simple", "fixed_large", "simple, fixed_large (beta)"),
        ("hybrid", "learned", "hybrid, learned"),
        ("hybrid", "fixed_small", "hybrid's eps, fixed_small (ablation)"))


def _prediction_half(model):
    """The hybrid model's first C output channels (its eps), for the fixed-variance ablation."""
    channels = model.config.in_channels

    def forward(x, t, y=None):
        return model(x, t, y)[:, :channels]
    return forward


def evaluate(models: dict, schedule, per_class: int, seeds: tuple[int, ...], out: Path,
             step_counts=STEP_COUNTS, rows_run=ROWS, log=print) -> list:
    y = torch.arange(10).repeat_interleave(per_class)
    rows = []
    for name, variance, label in rows_run:
        model = models[name]
        if name == "hybrid" and variance != "learned":
            model = _prediction_half(model)
        for K in step_counts:
            for seed in seeds:
                start = time.perf_counter()
                with torch.no_grad():
                    images = ddpm.sample(model, (len(y), 1, 8, 8), schedule, sampler="ddpm", num_steps=K,
                                         spacing="linspace", variance=variance, y=y, seed=seed,
                                         clip=(-1.0, 1.0)).clamp(-1.0, 1.0)
                seconds = time.perf_counter() - start
                np.savez_compressed(out / f"samples-{name}-{variance}-K{K}-seed{seed}.npz",
                                    images=images.numpy(), labels=y.numpy())
                quality = sample_quality(images, data="digits", labels=y, seed=seed)
                row = dict(model=name, variance=variance, label=label, K=K, seed=seed, sample_seconds=seconds,
                           **{k: quality[k] for k in ("fd", "fd_floor", "precision", "recall", "hit_rate", "n")})
                rows.append(row)
                log(f"{label:40s} K={K:4d} seed={seed} FD {row['fd']:.3f} (floor {row['fd_floor']:.3f}) "
                    f"hit {row['hit_rate']:.3f} P {row['precision']:.3f} R {row['recall']:.3f} {seconds:.0f}s")
                if seed == seeds[0] and K in (25, 1000):
                    save_grid(out / f"grid-{name}-{variance}-K{K}.png", images[::max(1, per_class // 10)], 10)
    return rows


def _mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def markdown_table(rows: list) -> str:
    lines = ["| model, variance | K | N | FD-digits (floor) | FD / floor | hit rate | precision | recall | sample s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, variance, label in ROWS:
        for K in sorted({r["K"] for r in rows}):
            group = [r for r in rows if r["label"] == label and r["K"] == K]
            if not group:
                continue
            fd, fd_sd = _mean_std([r["fd"] for r in group])
            floor, _ = _mean_std([r["fd_floor"] for r in group])
            hit, hit_sd = _mean_std([r["hit_rate"] for r in group])
            p, _ = _mean_std([r["precision"] for r in group])
            rc, _ = _mean_std([r["recall"] for r in group])
            s, _ = _mean_std([r["sample_seconds"] for r in group])
            ratio, _ = _mean_std([r["fd"] / r["fd_floor"] for r in group])
            spread = (lambda sd: f" ± {sd:.3f}") if len(group) > 1 else (lambda sd: "")  # over seeds
            lines.append(f"| {label} | {K} | {group[0]['n']} | {fd:.3f}{spread(fd_sd)} ({floor:.3f}) | {ratio:.2f} | "
                         f"{hit:.3f}{spread(hit_sd)} | "
                         f"{p:.3f} | {rc:.3f} | {s:.0f} |")
    return "\n".join(lines)


def plot(rows: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    step_counts = sorted({r["K"] for r in rows})
    for _, _, label in ROWS:
        ks = [K for K in step_counts if any(r["label"] == label and r["K"] == K for r in rows)]
        if not ks:
            continue
        # FD grows as N shrinks: divide by the floor of the same N so runs of other sizes compare
        ratios = [_mean_std([r["fd"] / r["fd_floor"] for r in rows if r["label"] == label and r["K"] == K])[0]
                  for K in ks]
        hits = [_mean_std([r["hit_rate"] for r in rows if r["label"] == label and r["K"] == K])[0] for K in ks]
        axes[0].plot(ks, ratios, marker="o", label=label)
        axes[1].plot(ks, hits, marker="o", label=label)
    axes[0].axhline(1.0, color="gray", linestyle="--", label="floor (real vs real)")
    for ax, title in zip(axes, ("FD-digits / its floor (lower is better)", "class hit rate")):
        ax.set_xscale("log")
        ax.set_xlabel("DDPM ancestral steps K (respaced, of T = 1000)")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def combine(parts: list[Path], out: Path) -> None:
    """One table and plot from the results.json of runs split over processes (e.g. by K)."""
    rows, metas = [], []
    for part in parts:
        data = json.loads((part / "results.json").read_text())
        rows += data["rows"]
        metas.append(data["meta"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(meta=metas, rows=rows), indent=1))
    (out / "table.md").write_text(markdown_table(rows) + "\n")
    plot(rows, out / "quality-vs-steps.png")
    print(markdown_table(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simple", type=Path, help="run dir of the L_simple model")
    parser.add_argument("--hybrid", type=Path, help="run dir of the L_hybrid model")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--step-counts", type=int, nargs="+", default=list(STEP_COUNTS))
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(len(ROWS))),
                        help="which of ROWS to run (indices; default all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="instead of sampling: merge these output dirs' results.json into --out")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/improved-ddpm-few-steps-digits"))
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)
    if args.simple is None or args.hybrid is None:
        parser.error("--simple and --hybrid are required (or --combine)")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    models, schedule = {}, None
    for name, run in (("simple", args.simple), ("hybrid", args.hybrid)):
        models[name], schedule, _ = load_model(latest_checkpoint(run), ema=True, device=torch.device("cpu"))
    start = time.perf_counter()
    rows = evaluate(models, schedule, args.per_class, tuple(args.seeds), args.out, tuple(args.step_counts),
                    tuple(ROWS[i] for i in args.rows))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = dict(command="python -m benchmarks.improved_ddpm_few_steps_digits " + " ".join(sys.argv[1:] if argv is None else argv),
                commit=commit, machine=f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
                load_average=os.getloadavg(), seconds=time.perf_counter() - start, per_class=args.per_class,
                seeds=args.seeds)
    (args.out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    (args.out / "table.md").write_text(markdown_table(rows) + "\n")
    plot(rows, args.out / "quality-vs-steps.png")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
