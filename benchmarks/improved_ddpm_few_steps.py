"""Improved DDPM's few-step claim on the 2-D toy data: learned vs fixed variance.

    python -m benchmarks.improved_ddpm_few_steps [--dataset moons] [--steps 8000] [--out FILE.md]

Nichol & Dhariwal 2021 (Sec. 4, Fig. 8): a model trained with L_hybrid and learned variances
keeps its sample quality when DDPM ancestral sampling is respaced to few steps, while L_simple
models with a fixed variance (sigma^2 = beta_t "fixed_large" or beta_tilde_t "fixed_small")
degrade. Here two MLPs of one architecture are trained on the same data with the same seeds
and steps, in torch on the CPU:

    simple:  2 outputs (eps), L_simple                                  -> fixed_small, fixed_large
    hybrid:  4 outputs (eps, v), L_simple + 0.001 L_vlb (ddpm.losses)   -> learned (and, as an
             ablation, the same model's eps with either fixed variance)

and each is sampled with `ddpm.sample(sampler="ddpm", num_steps=K, spacing="linspace")` (the
paper's code visits evenly spaced steps, both ends included) for K in 25, 50, 100, 1000 of
T = 1000. Quality: the energy distance (`reference.energy_distance`) to a fresh data draw,
next to the floor (two independent data draws of the same size), over several sampling seeds.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import time

import numpy as np
import torch
from torch import nn

import ddpm
import reference
from ddpm.losses import VariationalTables, variational_loss

STEP_COUNTS = (25, 50, 100, 1000)


class ToyMLP(nn.Module):
    """x (N, 2), t (N,) -> (N, out_dim): sinusoidal t embedding, SiLU MLP (the toy demo's shape)."""

    def __init__(self, out_dim: int, hidden: int = 128, layers: int = 3, embed: int = 32):
        super().__init__()
        self.embed = embed
        dims = [2 + embed] + [hidden] * layers
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x, t):
        half = self.embed // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        angles = t.to(torch.float64)[:, None] * freqs[None]
        h = torch.cat([x, torch.sin(angles).to(x.dtype), torch.cos(angles).to(x.dtype)], dim=1)
        for layer in self.body:
            h = torch.nn.functional.silu(layer(h))
        return self.out(h)


def train(loss: str, x_train: np.ndarray, schedule, steps: int, batch: int, seed: int, log) -> nn.Module:
    """Adam (warmup + cosine), EMA 0.995; returns the EMA model. loss: "simple" or "hybrid"."""
    torch.manual_seed(seed)
    learned = loss == "hybrid"
    model = ToyMLP(4 if learned else 2)
    ema = ToyMLP(4 if learned else 2)
    ema.load_state_dict(model.state_dict())
    tables = VariationalTables(schedule, "epsilon")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.tensor(x_train, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0 = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        t = torch.randint(0, schedule.T, (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = tables.sqrt_alpha_bars[t, None] * x0 + tables.sqrt_one_minus_alpha_bars[t, None] * eps
        out = model(x_t, t)
        value, _ = variational_loss(out, x0, x_t, eps, t, tables, loss=loss,
                                    variance="learned" if learned else "fixed_small")
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.mul_(0.995).add_(p, alpha=0.005)
        if (step + 1) % max(1, steps // 4) == 0:
            log(f"  {loss}: step {step + 1}/{steps} loss {value.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return ema.eval()


class MeanPart(nn.Module):
    """The eps half of a learned-variance model (the ablation: its mean with a fixed variance)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t):
        return self.model(x, t)[:, :2]


def run(dataset: str, steps: int, batch: int, num_samples: int, seeds: int, log=print) -> dict:
    schedule = reference.make_schedule("linear", 1000)
    x_train, _ = reference.make_dataset(dataset, 100_000, seed=0)
    target, _ = reference.make_dataset(dataset, num_samples, seed=1)
    floor = reference.energy_distance(reference.make_dataset(dataset, num_samples, seed=2)[0], target)
    models = {name: train(name, x_train, schedule, steps, batch, seed=0, log=log) for name in ("simple", "hybrid")}
    configs = [("simple", "fixed_small", models["simple"]), ("simple", "fixed_large", models["simple"]),
               ("hybrid", "learned", models["hybrid"]),
               ("hybrid (mean part)", "fixed_small", MeanPart(models["hybrid"])),
               ("hybrid (mean part)", "fixed_large", MeanPart(models["hybrid"]))]
    rows = []
    v_by_t = learned_v(models["hybrid"], target, schedule)
    log("  hybrid model's v (mean over data at t): " + ", ".join(f"t={t}: {v:+.3f}" for t, v in v_by_t.items()))
    for name, variance, model in configs:
        for K in STEP_COUNTS:
            energies = []
            for seed in range(seeds):
                x = ddpm.sample(model, (num_samples, 2), schedule, sampler="ddpm", num_steps=K,
                                spacing="linspace", variance=variance, seed=100 + seed, dtype=torch.float32)
                energies.append(reference.energy_distance(x.double().numpy(), target))
            rows.append(dict(model=name, variance=variance, K=K, mean=float(np.mean(energies)),
                             std=float(np.std(energies)), ratio=float(np.mean(energies)) / floor))
            log(f"  {name:20s} {variance:12s} K={K:5d} energy {rows[-1]['mean']:.4f} ({rows[-1]['ratio']:.2f}x floor)")
    return dict(floor=floor, rows=rows, v_by_t=v_by_t)


@torch.no_grad()
def learned_v(model, x0: np.ndarray, schedule, ts=(0, 1, 10, 100, 500, 999)) -> dict:
    """The mean v the hybrid model outputs on q(x_t | x0) at a few t (v = -1: beta_tilde_t,
    +1: beta_t): whether the variance head learned anything away from its start."""
    x0 = torch.tensor(x0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    result = {}
    for t in ts:
        a, s = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
        x_t = a * x0 + s * torch.randn(x0.shape, generator=gen)
        v = model(x_t, torch.full((x0.shape[0],), t, dtype=torch.int64))[:, 2:]
        result[t] = float(v.mean())
    return result


def format_markdown(result: dict, args, seconds: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Improved DDPM: the few-step claim on 2-D toy data (learned vs fixed variance)",
        "",
        f"Command: `python -m benchmarks.improved_ddpm_few_steps --dataset {args.dataset} --steps {args.steps} "
        f"--batch {args.batch} --num-samples {args.num_samples} --seeds {args.seeds} --out {args.out}`",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"CPU only (2 cores shared with other workers); commit {commit} (+ this script); {seconds:.0f} s in all.",
        "",
        f"Data: `reference.make_dataset({args.dataset!r})`; T = 1000 linear schedule; DDPM ancestral sampling "
        "respaced to K steps (`spacing='linspace'`: evenly spaced, both ends, as improved-diffusion's "
        "`space_timesteps`); the learned variance interpolates the respaced betas (Improved DDPM Eq. 15). "
        f"Energy distance of {args.num_samples} samples to a fresh data draw, mean +- std over {args.seeds} "
        f"sampling seeds; floor (two independent data draws) = {result['floor']:.4f}.",
        "",
        "The hybrid model's v (mean over the data's x_t; -1 = beta_tilde_t, +1 = beta_t): "
        + ", ".join(f"t={t}: {v:+.3f}" for t, v in result["v_by_t"].items()) + ".",
        "",
        "| model (loss) | variance | K = 25 | K = 50 | K = 100 | K = 1000 |",
        "|---|---|---|---|---|---|",
    ]
    by_config: dict = {}
    for r in result["rows"]:
        by_config.setdefault((r["model"], r["variance"]), {})[r["K"]] = r
    for (name, variance), cells in by_config.items():
        row = " | ".join(f"{cells[K]['mean']:.4f} +- {cells[K]['std']:.4f} ({cells[K]['ratio']:.1f}x)"
                         for K in STEP_COUNTS)
        lines.append(f"| {name} | {variance} | {row} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="moons", choices=tuple(reference.DATASETS))
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--num-samples", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 2 shared cores: one thread thrashes least under other workers
    start = time.perf_counter()
    result = run(args.dataset, args.steps, args.batch, args.num_samples, args.seeds)
    text = format_markdown(result, args, time.perf_counter() - start)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
