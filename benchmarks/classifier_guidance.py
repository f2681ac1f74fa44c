"""Evidence for classifier guidance (issue 12): hit rate and Frechet distance against the scale.

An unconditional denoiser plus a noise-aware classifier (`python -m ddpm train-classifier`),
sampled with DDIM at the demo's 50 steps towards each digit for every classifier scale s, beside a
class-conditional denoiser with classifier-free guidance at the same number of steps. Each
configuration draws `--per-class` samples of each of the 10 digits (the same seeds and sample
indices throughout) and is scored by `ddpm.evaluate.sample_quality` (FD-digits in the in-project
feature net's space, its floor between two real halves of the same size, precision / recall, and
the hit rate of the requested class). One grid per configuration (one row per digit), the table
and the raw JSON go to --out; the classifier's held-out accuracy against t is copied there.

    python -m benchmarks.classifier_guidance --denoiser runs/uncond --classifier runs/clf \
        --cfg-denoiser runs/demo --out benchmarks/results/classifier-guidance

--sampler ddpm (Algorithm 1: the mean shifted by s Sigma grad; with a learned-variance denoiser,
`--variance learned` at training, Sigma is the model's own per-element variance) and --clip (x0
clipped to [-1, 1] at every step) select the ancestral sampler instead of DDIM. --null-class
samples a class-conditional denoiser trained with label dropout through its null class (its
unconditional output; the classes go to the classifier only); --mean-part-only reads only the
prediction half of a learned-variance denoiser, so the same model samples with the fixed
variance beta_tilde (the Sigma of Algorithm 1 then being beta_tilde instead of the learned one).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

import dataclasses

import torch
from torch import nn

from ddpm.classifier_io import check_classifier_fits, load_classifier
from ddpm.distributed import single_process
from ddpm.evaluate import sample_quality
from ddpm.runs import draw, load_model
from ddpm.viz import save_grid

DEFAULT_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


class DenoiserView(nn.Module):
    """model(x, t) of a trained denoiser: through its null class (null_class=True: the
    unconditional output of a label-dropout model) and/or its prediction half only (mean_only:
    a learned-variance model read as a fixed-variance one). Carries the config ddpm.runs.draw
    reads (out_channels = in_channels when mean_only) and no null_class (unconditional)."""

    def __init__(self, model: nn.Module, null_class: bool, mean_only: bool):
        super().__init__()
        self.model, self.use_null, self.mean_only = model, null_class, mean_only
        cfg = model.config
        self.config = dataclasses.replace(cfg, out_channels=cfg.in_channels) if mean_only else cfg

    def forward(self, x, t):
        if self.use_null:
            out = self.model(x, t, torch.full_like(t, self.model.null_class))
        else:
            out = self.model(x, t)
        return out[:, : x.shape[1]] if self.mean_only else out


def _parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.classifier_guidance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--denoiser", required=True, help="unconditional denoiser run (python -m ddpm train --unconditional)")
    p.add_argument("--classifier", required=True, help="classifier run (python -m ddpm train-classifier)")
    p.add_argument("--cfg-denoiser", default=None, help="class-conditional run with label dropout (the demo's)")
    p.add_argument("--out", required=True, help="directory for grids, JSON and the table")
    p.add_argument("--scales", type=float, nargs="*", default=list(DEFAULT_SCALES))
    p.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=("ddim", "ddpm", "dpm_solver++"), default="ddim")
    p.add_argument("--clip", action="store_true", help="clip x0_hat to [-1, 1] at every step")
    p.add_argument("--grid-prefix", default="", help="prefix of the grid files (runs appended to one --out)")
    p.add_argument("--null-class", action="store_true", help="sample a conditional --denoiser through its null class")
    p.add_argument("--mean-part-only", action="store_true", help="a learned-variance --denoiser sampled with "
                   "the fixed variance beta_tilde (its prediction half only)")
    p.add_argument("--label", default="classifier guidance", help="the method column of the table")
    p.add_argument("--append", action="store_true", help="add to --out's results.json (e.g. the CFG rows "
                   "of a second call) instead of replacing it")
    return p.parse_args(argv)


def _score(name, images, y, out: Path, grid_rows: int, wall: float) -> dict:
    images = images.clamp(-1.0, 1.0)  # samples as pictures: the data range (DDIM does not clip x_0)
    q = sample_quality(images, data="digits", labels=y, seed=0)
    per_class = y.numel() // 10
    keep = torch.cat([images[c * per_class: c * per_class + grid_rows] for c in range(10)])
    save_grid(out / f"{name}.png", keep.cpu(), grid_rows)
    row = {k: q[k] for k in ("fd", "fd_floor", "fd_name", "precision", "recall", "hit_rate", "n")}
    return {**row, "config": name, "sample_s": wall, "grid": f"{name}.png"}


def markdown_table(results: list[dict]) -> str:
    """The results as a Markdown table (one row per configuration)."""
    lines = ["| method | scale | hit rate | FD-digits (floor) | precision | recall | n | grid |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['scale']:g} | {r['hit_rate']:.3f} | {r['fd']:.1f} ({r['fd_floor']:.1f}) "
                     f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['n']} | [{r['grid']}]({r['grid']}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    ctx = single_process(torch.device("cpu"))
    model, schedule, ckpt = load_model(args.denoiser, ema=True, device=ctx.device)
    classifier, classifier_ckpt = load_classifier(args.classifier, device=ctx.device)
    check_classifier_fits(classifier_ckpt, ckpt, "all", args.classifier)  # (before any view)
    if args.null_class or args.mean_part_only:
        model = DenoiserView(model, args.null_class, args.mean_part_only)
    cfg = model.config
    variance = "learned" if cfg.out_channels == 2 * cfg.in_channels else "fixed_small"  # as ddpm.runs samples
    y = torch.arange(10).repeat_interleave(args.per_class)
    n, rows = y.numel(), min(args.per_class, 10)
    results = []
    for s in args.scales:
        start = time.perf_counter()
        images, _ = draw(model, schedule, y if s > 0 else None, n, ctx, sampler=args.sampler, num_steps=args.steps,
                         seed=args.seed, clip=(-1.0, 1.0) if args.clip else None,
                         classifier=classifier if s > 0 else None, classifier_scale=s if s > 0 else 1.0)
        results.append({**_score(f"{args.grid_prefix}classifier-s{s:g}", images, y, out, rows, time.perf_counter() - start),
                        "method": args.label, "scale": s})
        print(json.dumps(results[-1]), flush=True)
    if args.cfg_denoiser:
        cond, cond_schedule, _ = load_model(args.cfg_denoiser, ema=True, device=ctx.device)
        for w in args.cfg_scales:
            start = time.perf_counter()
            images, _ = draw(cond, cond_schedule, y, n, ctx, sampler=args.sampler, num_steps=args.steps,
                             seed=args.seed, clip=(-1.0, 1.0) if args.clip else None, guidance_scale=w)
            results.append({**_score(f"cfg-w{w:g}", images, y, out, rows, time.perf_counter() - start),
                            "method": "classifier-free guidance", "scale": w})
            print(json.dumps(results[-1]), flush=True)
    for name in ("accuracy_vs_t.json", "accuracy_vs_t.png"):
        shutil.copy(Path(args.classifier) / name, out / name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"denoiser": str(args.denoiser), "classifier": str(args.classifier), "cfg_denoiser": args.cfg_denoiser,
            "steps": args.steps, "sampler": args.sampler, "clip": args.clip,
            "variance": variance, "null_class": args.null_class, "per_class": args.per_class, "seed": args.seed,
            "denoiser_step": ckpt.step, "classifier_step": classifier_ckpt.step, "commit": commit,
            "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
            "load_average": list(__import__("os").getloadavg())}
    if args.append and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text())
        results = previous["results"] + results
        earlier = previous["meta"].pop("earlier_calls", []) + previous.get("earlier_calls", [])
        meta = {**meta, "earlier_calls": earlier + [previous["meta"]]}  # every call's meta, oldest first
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (out / "table.md").write_text(markdown_table(results))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
