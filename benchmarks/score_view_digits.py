"""The score view on the digits: PC vs DDPM vs DDIM at equal numbers of model evaluations.

    python -m benchmarks.score_view_digits --vp RUN_DIR --ve RUN_DIR [--evals 100] [--per-class 20]

Two class-conditional digits8 UNets trained with the same settings by the CLI: a DDPM (VP, eps,
`python -m ddpm train`) and a VE score model (`--objective score`, DSM with lambda = sigma^2).
Each sampler gets `evals` model evaluations (a guided step is one batched call on [x; x]),
classifier-free guidance 2 as the demo, EMA weights, `per_class` samples per digit:

    DDPM ancestral, evals steps (respaced)     VP model
    DDIM (eta 0), evals steps                  VP model
    PC, VP: evals/2 levels x (ancestral + 1 Langevin corrector, snr)      VP model
    PC, VE: evals/2 levels x (reverse diffusion + 1 Langevin corrector)   VE model
    annealed Langevin, VE: evals/10 levels x 10 steps (+1 denoising)      VE model

Quality (samples clamped to [-1, 1], as saved pictures are): the class hit rate (ddpm.metrics: logistic regression on the real digits) and a
Frechet distance to the 1,797 real digits: `ddpm.evaluate.sample_quality` (FD in the feature
net's space) when it is importable, else the Frechet distance of the 64 pixel values
(scipy.linalg.sqrtm), said as such in the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import ddpm
import reference
from ddpm.data import load_dataset
from ddpm.metrics import hit_rate, train_digit_classifier
from ddpm.runs import load_model


def pixel_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of (N, D) arrays (Heusel et al. 2017)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root))


def quality(images: torch.Tensor, labels: torch.Tensor, real: np.ndarray, classifier) -> dict:
    try:
        from ddpm.evaluate import sample_quality
    except ImportError:
        sample_quality = None
    images = images.clamp(-1.0, 1.0)  # the data range, as pictures are saved (DDIM overshoots it)
    result = {"hit_rate": hit_rate(classifier, images, labels).overall}
    if sample_quality is not None:
        q = sample_quality(images, data="digits", labels=labels, seed=0)
        result.update(fd=float(q["fd"]), fd_floor=float(q["fd_floor"]),
                      fd_kind=f"{q.get('fd_name', 'FD')}, ddpm.evaluate.sample_quality")
    else:
        flat = images.reshape(images.shape[0], -1).double().clamp(-1, 1).numpy()
        result.update(fd=pixel_frechet(flat, real), fd_kind="pixels (scipy)")
    return result


def configurations(evals: int):
    """(name, which model, sampler, num_steps, options)."""
    return [
        (f"DDPM-{evals}", "vp", "ddpm", evals, {}),
        (f"DDIM-{evals}", "vp", "ddim", evals, {}),
        (f"PC VP ({evals // 2} levels x 2)", "vp", "pc", evals // 2, {"corrector_steps": 1}),
        (f"PC VE ({evals // 2} levels x 2)", "ve", "pc", evals // 2, {"corrector_steps": 1}),
        (f"annealed Langevin VE ({evals // 10} x 10 + 1)", "ve", "annealed_langevin", evals // 10,
         {"steps_per_level": 10, "step_size": 2e-5}),
    ]


def run(vp_dir: str, ve_dir: str, evals: int, per_class: int, guidance: float, seed: int, snr: float,
        log=print) -> dict:
    classifier = train_digit_classifier()
    data = load_dataset("digits", 8, 1)
    real = data.images.reshape(len(data.images), -1).double().numpy()
    labels = torch.arange(10).repeat_interleave(per_class)
    models = {k: load_model(d, ema=True, device=torch.device("cpu"))[:2] for k, d in (("vp", vp_dir), ("ve", ve_dir))}
    rows = []
    for name, which, sampler, steps, options in configurations(evals):
        model, schedule = models[which]
        if sampler == "pc":
            options = {**options, "snr": snr}
        plan = reference.sampling_plan(schedule, sampler, steps, **options)
        start = time.perf_counter()
        images = ddpm.sample(model, (len(labels), 1, 8, 8), schedule, sampler=sampler, num_steps=steps,
                             y=labels, guidance_scale=guidance, seed=seed, **options)
        row = {"name": name, "model": which, "sampler": sampler, "num_steps": steps, "options": options,
               "evals": plan.num_steps, "seconds": time.perf_counter() - start,
               **quality(images, labels, real, classifier)}
        rows.append(row)
        log(json.dumps(row))
    return {"rows": rows, "evals": evals, "per_class": per_class, "guidance": guidance, "seed": seed,
            "classifier_accuracy": classifier.held_out_accuracy,
            "schedules": {k: repr(v[1]) for k, v in models.items()}}


def format_markdown(result: dict, seconds: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    kind = result["rows"][0]["fd_kind"]
    lines = [f"### Digits: {result['evals']} model evaluations per sampler, guidance {result['guidance']}, "
             f"{result['per_class']} samples per class (seed {result['seed']})", "",
             f"| sampler | model | model evaluations | hit rate | Frechet distance ({kind}) | FD floor | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        floor = f"{r['fd_floor']:.2f}" if "fd_floor" in r else ""
        lines.append(f"| {r['name']} | {r['model'].upper()} | {r['evals']} | {r['hit_rate']:.3f} | "
                     f"{r['fd']:.2f} | {floor} | {r['seconds']:.1f} |")
    lines += ["", f"Schedules: {result['schedules']}. Classifier: {100 * result['classifier_accuracy']:.1f}% on "
              "held-out real digits.", "",
              f"Measured on {platform.node()} (CPU), commit {commit}, {seconds:.0f} s, load average "
              f"{open('/proc/loadavg').read().split()[0]} (shared machine)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.score_view_digits")
    parser.add_argument("--vp", required=True, help="run directory of the DDPM (VP) digits model")
    parser.add_argument("--ve", required=True, help="run directory of the VE score digits model")
    parser.add_argument("--evals", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--snr", type=float, default=0.16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/score-view-digits.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = run(args.vp, args.ve, args.evals, args.per_class, args.guidance, args.seed, args.snr)
    out = Path(args.out)
    out.write_text(format_markdown(result, time.perf_counter() - start))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
