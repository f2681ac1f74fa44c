"""Toy demo: train the MLP DDPM on a 2-D dataset in pure NumPy, sample it three ways, score it.

    python -m reference.demo                      # two moons, about a minute on 2 CPU cores
    python -m reference.demo --dataset 8gaussians --out gaussians.png
    python -m reference.demo --quick              # about 10 s, smaller everything

Trains `reference.MLP` with `reference.train` (Adam, warmup + cosine learning rate, EMA of the
weights), then draws samples from the EMA model with DDPM ancestral sampling over all T steps,
DDIM with 50 steps (eta = 0) and DPM-Solver++(2M) with 20 steps (trailing spacing). The quality
figure is the energy distance (`reference.metrics.energy_distance`) between the samples and
fresh data points, printed next to the same figure for two independent data draws of the same
size: the floor, what a perfect model would score. Writes a PNG of data vs samples (needs
matplotlib, the `demo` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np

from .metrics import energy_distance, sliced_wasserstein
from .mlp import MLP
from .optim import EMA, Adam
from .sampling import sample_ddim, sample_ddpm, sample_dpm_solver_pp
from .schedules import make_schedule
from .toy_data import DATASETS, make_dataset
from .train import train

__all__ = ["DEFAULTS", "QUICK", "run_demo", "main"]

# About a minute on 2 CPU cores; --quick: about 10 s (the test's size).
DEFAULTS = dict(dataset="moons", steps=16000, T=200, seed=0, num_samples=5000, batch_size=256,
                hidden_dim=64, num_layers=3, lr=6e-3, ema_decay=0.995, activation="silu",
                train_size=100_000)
QUICK = dict(DEFAULTS, steps=3000, T=100, num_samples=1000)


def _blas_single_thread():
    """Limit BLAS to one thread when threadpoolctl is present: the toy's matrices (<= 5000 x 64)
    are too small for threads to pay off, and oversubscribed cores make them much slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _warmup_cosine(lr: float, steps: int, warmup: int = 100):
    """lr(step) for 1-based steps: linear warmup, then cosine decay to 0 at `steps`."""
    def schedule(step: int) -> float:
        return lr * min(1.0, step / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    return schedule


def run_demo(dataset: str = DEFAULTS["dataset"], steps: int = DEFAULTS["steps"], T: int = DEFAULTS["T"],
             seed: int = DEFAULTS["seed"], num_samples: int = DEFAULTS["num_samples"],
             batch_size: int = DEFAULTS["batch_size"], hidden_dim: int = DEFAULTS["hidden_dim"],
             num_layers: int = DEFAULTS["num_layers"], lr: float = DEFAULTS["lr"],
             ema_decay: float = DEFAULTS["ema_decay"], activation: str = DEFAULTS["activation"],
             train_size: int = DEFAULTS["train_size"], log=print) -> dict:
    """Train, sample and score; returns the figures (no plotting).

    Returns {"floor", "rows": [{"sampler", "steps", "energy", "ratio", "sliced_w", "seconds"}],
    "train_seconds", "final_loss", "model", "data", "samples": {sampler: (num_samples, 2)}}.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {dataset!r}")
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 25:
        # beta_end = 0.02 * 1000 / T must stay well below 1
        raise ValueError(f"T must be an int >= 25 for the rescaled linear schedule, got {T!r}")
    log = log or (lambda *args, **kwargs: None)
    # The linear schedule rescaled by 1000 / T keeps DDPM's T = 1000 noise range for any T.
    schedule = make_schedule("linear", T, rescale=True)
    x_train, _ = make_dataset(dataset, train_size, seed=3 * seed)
    reference_draw, _ = make_dataset(dataset, num_samples, seed=3 * seed + 1)
    floor_draw, _ = make_dataset(dataset, num_samples, seed=3 * seed + 2)

    model = MLP(data_dim=2, hidden_dim=hidden_dim, num_layers=num_layers, activation=activation,
                num_timesteps=T, seed=seed)
    optimizer = Adam(model.params, lr=_warmup_cosine(lr, steps))
    ema = EMA(model.params, decay=ema_decay, warmup=True)
    log(f"training {model!r}\n  on {dataset} ({train_size} points), T={T}, {steps} steps of {batch_size}")
    start = time.perf_counter()
    every = max(1, steps // 5)

    def progress(step, record):
        if (step + 1) % every == 0:
            log(f"  step {step + 1:6d}  loss {record['loss']:.4f}  ({time.perf_counter() - start:.1f} s)")

    history = train(model, x_train, schedule, steps=steps, batch_size=batch_size, seed=seed,
                    optimizer=optimizer, ema=ema, callback=progress)
    train_seconds = time.perf_counter() - start
    ema_model = model.copy()
    ema.copy_to(ema_model.params)

    shape = (num_samples, 2)
    sample_seed = seed + 1
    ddim_steps, dpm_steps = min(50, T), min(20, T)
    samplers = [
        (f"DDPM-{T}", T, lambda: sample_ddpm(ema_model, shape, schedule, sample_seed)),
        (f"DDIM-{ddim_steps}", ddim_steps,
         lambda: sample_ddim(ema_model, shape, schedule, sample_seed, num_steps=ddim_steps)),
        # trailing spacing: the last step is a first-order jump from t = T/20 - 1 to 0 noise,
        # not a second-order step into t = 0 with a tiny step ratio (see the README's numbers)
        (f"DPM-Solver++-{dpm_steps}", dpm_steps,
         lambda: sample_dpm_solver_pp(ema_model, shape, schedule, sample_seed, num_steps=dpm_steps,
                                      spacing="trailing")),
    ]
    floor = energy_distance(floor_draw, reference_draw)
    rows, samples = [], {}
    for name, num_steps, draw in samplers:
        t0 = time.perf_counter()
        x = draw()
        seconds = time.perf_counter() - t0
        energy = energy_distance(x, reference_draw)
        rows.append(dict(sampler=name, steps=num_steps, energy=energy, ratio=energy / floor,
                         sliced_w=sliced_wasserstein(x, reference_draw), seconds=seconds))
        samples[name] = x
    return dict(floor=floor, floor_sliced_w=sliced_wasserstein(floor_draw, reference_draw), rows=rows,
                train_seconds=train_seconds, final_loss=float(np.mean(history["loss"][-100:])),
                model=ema_model, data=reference_draw, samples=samples)


def format_table(result: dict) -> str:
    """The quality table: energy distance and sliced W1 of each sampler vs the data floor."""
    lines = [f"{'':18s} {'steps':>5s} {'energy dist':>11s} {'x floor':>8s} {'sliced W1':>10s} {'seconds':>8s}",
             f"{'data vs data':18s} {'-':>5s} {result['floor']:11.4f} {1.0:7.2f}x "
             f"{result['floor_sliced_w']:10.4f} {'-':>8s}"]
    for row in result["rows"]:
        lines.append(f"{row['sampler']:18s} {row['steps']:5d} {row['energy']:11.4f} {row['ratio']:7.2f}x "
                     f"{row['sliced_w']:10.4f} {row['seconds']:8.1f}")
    return "\n".join(lines)


def save_figure(result: dict, path: str, title: str) -> None:
    """A PNG of the data next to each sampler's samples (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("data", result["data"], None)] + [
        (row["sampler"], result["samples"][row["sampler"]], row) for row in result["rows"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    lo = np.min([p[1].min(axis=0) for p in panels], axis=0) - 0.2
    hi = np.max([p[1].max(axis=0) for p in panels], axis=0) + 0.2
    for ax, (name, points, row) in zip(axes[0], panels):
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5, color="tab:blue" if row is None else "tab:orange")
        label = name if row is None else f"{name}\nenergy dist {row['energy']:.3f} ({row['ratio']:.2f}x floor)"
        ax.set_title(label, fontsize=10)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=DEFAULTS["dataset"], choices=tuple(DATASETS))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 16000; quick 3000)")
    parser.add_argument("--T", type=int, default=None, help="diffusion timesteps (default 200; quick 100)")
    parser.add_argument("--samples", type=int, default=None, help="points drawn per sampler (default 5000)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--out", default="toy_demo.png", help="PNG path ('' to skip the picture)")
    parser.add_argument("--quick", action="store_true", help="a smaller run of a few seconds")
    args = parser.parse_args(argv)
    if args.out:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: the demo's picture needs matplotlib: pip install -e \".[demo]\" "
                  "(or pass --out '' to skip it)", file=sys.stderr)
            return 2
    config = dict(QUICK if args.quick else DEFAULTS)
    config["dataset"], config["seed"] = args.dataset, args.seed
    for key, value in (("steps", args.steps), ("T", args.T), ("num_samples", args.samples)):
        if value is not None:
            config[key] = value
    start = time.perf_counter()
    with _blas_single_thread():
        result = run_demo(**config)
    print(f"\n{config['num_samples']} samples vs {config['num_samples']} fresh data points "
          f"(lower is better; the floor is two independent data draws):")
    print(format_table(result))
    total = time.perf_counter() - start
    print(f"\ntraining {result['train_seconds']:.1f} s, total {total:.1f} s")
    if args.out:
        out = Path(args.out)
        out = out if out.suffix else out.with_suffix(".png")  # what matplotlib would write anyway
        out.parent.mkdir(parents=True, exist_ok=True)
        save_figure(result, out, f"MLP DDPM on {config['dataset']}, {config['steps']} steps, "
                                 f"T={config['T']} (NumPy reference)")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
