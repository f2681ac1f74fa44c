"""DiT vs UNet at (nearly) equal parameter count and equal CPU training time (issue 15 evidence).

    python -m benchmarks.dit_vs_unet --arch unet --cpu-seconds 240 &      # one model per process,
    python -m benchmarks.dit_vs_unet --arch dit  --cpu-seconds 240 &      # both at once, same load
    wait; python -m benchmarks.dit_vs_unet --report                       # -> benchmarks/results/dit.md

Each process trains its model (class-conditional, digits8 UNet 702,753 parameters vs dit-digits
DiT 723,844) with the same TrainConfig until its own CPU time (time.process_time, one torch
thread) reaches the budget, so a loaded machine slows both alike without favouring either; then
draws 50 samples per class from the EMA weights (DDIM, 50 steps, guidance 2) and measures the
class hit rate with the in-project digit classifier (ddpm.metrics) and, when `ddpm.evaluate` is
present, the Frechet distance of `sample_quality`. Writes <out>/<data>-<arch>.json and a grid.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import ddpm
import reference
from ddpm.data import load_dataset
from ddpm.metrics import hit_rate, train_digit_classifier
from ddpm.models import build_model
from ddpm.runs import model_config
from ddpm.train import TrainConfig, Trainer
from ddpm.viz import save_grid

PRESETS = {("digits", "unet"): "digits8", ("digits", "dit"): "dit-digits",
           ("mnist", "unet"): "mnist_small", ("mnist", "dit"): "dit-mnist-small"}
DATA = {"digits": "digits", "mnist": str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")}
OUT = Path(__file__).resolve().parent / "results" / "dit"


def _fd(images: torch.Tensor, labels: torch.Tensor, data: str) -> dict:
    try:
        from ddpm.evaluate import sample_quality
    except ImportError:
        return {"fd": None, "fd_note": "ddpm.evaluate (issue 16) not on this branch: no FD"}
    # unclipped DDIM samples can leave [-1, 1], which sample_quality refuses: score them clamped
    q = sample_quality(images.clamp(-1, 1), data=data, labels=labels, seed=0)
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in q.items()
            if k in ("fd", "fd_floor", "precision", "recall", "hit_rate", "n")}


def run_one(data: str, arch: str, cpu_seconds: float, out: Path, per_class: int,
            wall_limit: float = float("inf")) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if data == "mnist":   # the first 9,000 of the t10k split; the last 1,000 stay held out for the FD
        from benchmarks.latent_diffusion import _mnist
        dataset = _mnist()[0]
    else:
        dataset = load_dataset(DATA[data], 8, 1)
    config = model_config(PRESETS[(data, arch)], dataset.num_classes)
    model = build_model(config)
    # digits: the settings of the first comparison; MNIST: those of the full-size MNIST run
    # (benchmarks/results/mnist-full-size.md), which reach digit shapes within ~1,000 steps
    batch, lr, warmup = (64, 5e-4, 100) if data == "digits" else (32, 1e-3, 200)
    train_config = TrainConfig(steps=10**9, batch_size=batch, lr=lr, warmup_steps=warmup, ema_decay=0.999,
                               label_dropout=0.1, seed=0)
    trainer = Trainer(model, reference.make_schedule("linear", 1000), train_config, dataset)
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    # the CPU budget, or a wall-clock limit on a machine too loaded to reach it (recorded)
    while time.process_time() - start_cpu < cpu_seconds and time.perf_counter() - start_wall < wall_limit:
        trainer.train_step()
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    ema = build_model(config).eval()
    trainer.ema.copy_to(ema)
    y = torch.arange(10).repeat_interleave(per_class)
    sample_start = time.process_time()
    images = ddpm.sample(ema, (len(y), 1, config.image_size, config.image_size), trainer.schedule,
                         sampler="ddim", num_steps=50, seed=1, y=y, guidance_scale=2.0)
    result = {"data": data, "arch": arch, "preset": PRESETS[(data, arch)], "config": config.to_dict(),
              "parameters": sum(p.numel() for p in model.parameters()), "steps": trainer.step,
              "batch_size": train_config.batch_size, "train_cpu_s": round(cpu, 1), "train_wall_s": round(wall, 1),
              "stopped_by": "cpu budget" if cpu >= cpu_seconds else "wall limit",
              "final_loss_mean_last_100": float(torch.tensor(trainer.history["loss"][-100:]).mean()),
              "sample_cpu_s": round(time.process_time() - sample_start, 1), "samples": len(y),
              "load_average_end": os.getloadavg()}
    if data == "digits":
        result["hit_rate"] = hit_rate(train_digit_classifier(), images, y).overall
    out.mkdir(parents=True, exist_ok=True)
    save_grid(out / f"{data}-{arch}.png", images[_grid_rows(per_class)], nrow=min(10, per_class))
    (out / f"{data}-{arch}.json").write_text(json.dumps(result, indent=2))   # kept if the FD fails
    torch.save({"images": images, "labels": y}, out / f"{data}-{arch}-samples.pt")
    result.update(_fd(images, y, data))
    (out / f"{data}-{arch}.json").write_text(json.dumps(result, indent=2))
    return result


def _grid_rows(per_class: int, columns: int = 10) -> torch.Tensor:
    """Indices of the first `columns` samples of every class: one row per class."""
    return (torch.arange(10)[:, None] * per_class + torch.arange(min(columns, per_class))[None, :]).reshape(-1)


def report(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = ["| data | model | parameters | steps (batch) | train CPU s | train wall s | stopped by | samples "
             "| hit rate | FD | FD floor |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hit = f"{r['hit_rate']:.3f}" if r.get("hit_rate") is not None else "-"
        fd = f"{r['fd']:.2f}" if r.get("fd") is not None else "not measured"
        floor = f"{r['fd_floor']:.2f}" if r.get("fd_floor") is not None else "-"
        lines.append(f"| {r['data']} | {r['preset']} | {r['parameters']:,} | {r['steps']} ({r.get('batch_size', 64)}) | {r['train_cpu_s']} | "
                     f"{r['train_wall_s']} | {r.get('stopped_by', '-')} | {r['samples']} | {hit} | {fd} | {floor} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dit_vs_unet", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("unet", "dit"))
    p.add_argument("--data", choices=tuple(DATA), default="digits")
    p.add_argument("--cpu-seconds", type=float, default=240.0)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--wall-limit", type=float, default=float("inf"),
                   help="also stop training after this many wall seconds (a heavily loaded machine)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report", action="store_true", help="print the table of the JSON files in --out")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.out))
        return 0
    if args.arch is None:
        p.error("--arch is required unless --report")
    print(json.dumps(run_one(args.data, args.arch, args.cpu_seconds, args.out, args.per_class,
                                    args.wall_limit), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
