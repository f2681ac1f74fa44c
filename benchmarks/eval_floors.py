"""Evidence for `ddpm.evaluate`: the feature nets' held-out accuracies and every figure's floor
for digits and MNIST, with real images (outside both halves) scored as if they were samples.

    python -m benchmarks.eval_floors --out benchmarks/results/eval-floors.json

For each (data, N): sample_quality of N real images that lie in neither the reference half A
nor the floor half B (so they are new to both), beside the floor. A metric that works puts
these real "samples" at their floor; pure noise is the other end. Feature nets come from the
cache ($DDPM_CACHE), trained on first use; their training time is the one of that first use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import warnings

import numpy as np
import torch

from ddpm.evaluate import sample_quality
from ddpm.feature_net import default_feature_net, reference_dataset
from reference.eval_metrics import real_halves

KEYS = ("fd", "precision", "recall", "density", "coverage", "inception_score", "hit_rate")
CASES = (("digits", 300), ("digits", 500), ("mnist", 1000), ("mnist", 3000))


def _fresh_real(data: str, n: int, seed: int):
    """n real images (and labels) outside the halves real_halves(len, n, seed) draws."""
    real = reference_dataset(data)
    a, b = real_halves(len(real), n, seed)
    rest = np.setdiff1d(np.arange(len(real)), np.concatenate([a, b]))
    if rest.size < n:
        raise SystemExit(f"{data}: only {rest.size} real images outside the halves, need {n}")
    pick = np.random.default_rng(seed + 1).choice(rest, n, replace=False)
    return real.images[pick], real.labels[pick]


def run(cases=CASES, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    nets = {}
    for data in sorted({d for d, _ in cases}):
        start = time.perf_counter()
        net = default_feature_net(data, echo=print)
        nets[data] = {**net.meta, "load_or_train_seconds": round(time.perf_counter() - start, 1)}
    rows = []
    for data, n in cases:
        images, labels = _fresh_real(data, n, seed)
        noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            start = time.perf_counter()
            real_q = sample_quality(images, data, labels=labels, seed=seed)
            seconds = time.perf_counter() - start
            noise_q = sample_quality(noise, data, labels=labels, seed=seed)
        rows.append({"data": data, "n": n, "seconds": round(seconds, 1), "real": real_q, "noise": noise_q})
        print(f"{data} n={n}: FD {real_q['fd']:.3f} (floor {real_q['fd_floor']:.3f}, noise {noise_q['fd']:.1f})")
    return {"feature_nets": nets, "rows": rows}


def markdown(report: dict) -> str:
    lines = ["| data | N | figure | real (new) | floor | uniform noise |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        real, noise = row["real"], row["noise"]
        for key in KEYS:
            name = real["fd_name"] if key == "fd" else key
            lines.append(f"| {row['data']} | {row['n']} | {name} | {real[key]:.4f} | {real[key + '_floor']:.4f} "
                         f"| {noise[key]:.4f} |")
        lines.append(f"| {row['data']} | {row['n']} | memorisation ratio | {real['memorisation']['ratio']:.3f} "
                     f"| 1 | {noise['memorisation']['ratio']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_floors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/eval-floors.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = run(seed=args.seed)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report["environment"] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                             "torch": torch.__version__, "commit": commit, "load_average": os.getloadavg(),
                             "torch_threads": 1}
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2, default=float)
    print(markdown(report))
    for data, meta in report["feature_nets"].items():
        print(f"{data}: held-out accuracy {meta['held_out_accuracy']:.4f} on {meta['held_out_size']} "
              f"(train {meta['train_size']}), train {meta['train_seconds']} s")


if __name__ == "__main__":
    main()
