"""The report of benchmarks.latent_diffusion: metrics of the saved samples, the markdown and JSON.

Quality: `ddpm.evaluate.sample_quality(data="mnist")` (Frechet distance in the in-project
feature net's space, its real-data floor, class hit rate) when that API is on this branch; else
only the hit rate of a logistic-regression classifier on raw pixels trained on the same 9,000
training images (scikit-learn), which is said in the report.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _load(work: Path, name: str):
    data = np.load(work / f"{name}_samples.npz")
    images = torch.from_numpy(data["images"]).float() / 127.5 - 1.0
    return images, torch.from_numpy(data["labels"]).long()


def _pixel_classifier_hit_rate(samples: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    from benchmarks.latent_diffusion import _mnist

    train, held = _mnist()
    clf = LogisticRegression(max_iter=200).fit(train.images.flatten(1).numpy(), train.labels.numpy())
    out = {"classifier": "logistic regression on pixels (scikit-learn), 9,000 train images",
           "classifier_held_out_accuracy": float(clf.score(held.images.flatten(1).numpy(), held.labels.numpy()))}
    for name, (images, labels) in samples.items():
        out[f"{name}_hit_rate"] = float(np.mean(clf.predict(images.flatten(1).numpy()) == labels.numpy()))
    return out


def _quality(samples: dict) -> dict:
    try:
        from ddpm.evaluate import sample_quality
    except ImportError:
        return _pixel_classifier_hit_rate(samples)
    out = {}
    for name, (images, labels) in samples.items():
        q = sample_quality(images.clamp(-1, 1), data="mnist", labels=labels, seed=0)
        out[name] = {k: q[k] for k in ("fd", "fd_floor", "hit_rate", "precision", "recall", "n", "fd_name") if k in q}
    return out


def quality_table(quality: dict) -> list[str]:
    """Markdown rows of the quality figures per model (the JSON keeps every key)."""
    keys = ("hit_rate", "fd", "fd_floor", "precision", "recall")
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, q in quality.items():
        if not isinstance(q, dict):
            continue
        cells = [f"{q[k]:.3f}" if isinstance(q.get(k), float) else str(q.get(k, "-")) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def report(work: Path, costs: dict) -> dict:
    latent, pixel = (json.loads((work / f"{n}_stats.json").read_text()) for n in ("latent", "pixel"))
    samples = {n: _load(work, n) for n in ("latent", "pixel")}
    quality = _quality(samples)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": 1,
               "load_average": os.getloadavg(), "commit": commit, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    result = {**latent, **pixel, "quality": quality, "step_costs": costs, "machine": machine}
    (RESULTS / "latent-diffusion.json").write_text(json.dumps(result, indent=2))
    ae, lat, pix = latent["autoencoder"], latent["latent_ddpm"], pixel["pixel_ddpm"]
    n_samples = len(samples["latent"][1])
    lines = [
        "# Latent diffusion on MNIST (issue 14)", "",
        f"Measured by `python -m benchmarks.latent_diffusion --phase latent`, then `--phase pixel` (or "
        f"`--phase pixel-from --from DIR`: the MNIST UNet run of `benchmarks.dit_vs_unet`, same settings) "
        f"and `--phase report`; report at commit {commit}, "
        f"{machine['date_utc']} UTC, CPU only (no GPU), one torch thread per process, the training "
        f"processes side by side on a shared 2-core machine under load (load average at report "
        f"{machine['load_average'][0]:.1f}); budgets are CPU seconds of each process (time.process_time), "
        "so the load slows the wall clock, not the comparison.", "",
        "Data: MNIST t10k from ../shared/data/mnist; first 9,000 images train the autoencoder and both "
        "DDPMs, the last 1,000 are held out.", "",
        "## Autoencoder (KL, 28x28 -> 4x7x7)", "",
        "| CPU s | steps | held-out PSNR | held-out MSE |", "|---|---|---|---|",
        f"| {ae['cpu_s']} | {ae['steps']} | {ae['psnr_held_out_db']:.2f} dB | {ae['mse_held_out']:.4f} |", "",
        "`latent-diffusion/reconstructions.png`: held-out images (top) and reconstructions (bottom).", "",
        "## Latent vs pixel DDPM at equal CPU training time", "",
        f"| model | params | CPU s | steps (batch 32) | loss (last {pix.get('loss_window', 50)}) | "
        f"sampling CPU s ({n_samples} samples, DDIM 50, w=2) |",
        "|---|---|---|---|---|---|",
        f"| latent (7x7x4, scaling {lat['scaling_factor']:.4f}) | {lat['parameters']:,} | {lat['cpu_s']} | {lat['steps']} | "
        f"{lat['final_loss_mean_50']:.4f} | {lat['sample_cpu_s']} + decode {lat['decode_cpu_s']} |",
        f"| pixel (28x28, mnist_small) | {pix['parameters']:,} | {pix['cpu_s']} | {pix['steps']} | {pix['final_loss_mean_50']:.4f} | "
        f"{pix['sample_cpu_s']} |", "",
        f"Quality ({n_samples} samples each, {n_samples // 10} per class; FD in the in-project feature net's "
        "space against held-out MNIST, not FID):", "",
        *quality_table(quality), "",
        "Grids: `latent-diffusion/latent_samples.png`, `latent-diffusion/pixel_samples.png` (one row per class).", "",
        "## Cost of one sampling step (guided: UNet on 128 rows, CPU s)", "",
        f"pixel {costs['pixel_step_cpu_s']:.3f}, latent {costs['latent_step_cpu_s']:.3f} "
        f"(ratio {costs['ratio_pixel_over_latent']:.1f}x); decoding 64 latents once: {costs['decode_64_cpu_s']:.3f}.", "",
        "## Caveats", "",
        f"The autoencoder's {ae['cpu_s']} CPU s are not counted in the latent DDPM's budget; one seed; "
        "both models are far from converged at these budgets, so this compares what each buys with "
        "the same few CPU minutes, not the two at convergence (nor on a GPU, not measured).", "",
    ]
    (RESULTS / "latent-diffusion.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result
