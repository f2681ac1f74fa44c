"""Bits/dim on held-out digits for Improved DDPM's objectives at equal training steps.

    python -m benchmarks.improved_ddpm_bpd --objective simple --steps 1500 --out DIR
    python -m benchmarks.improved_ddpm_bpd --objective hybrid ...
    python -m benchmarks.improved_ddpm_bpd --objective vlb ...      (importance-sampled t)
    python -m benchmarks.improved_ddpm_bpd --report DIR            (the table of every run in DIR)

Data: scikit-learn's 1,797 8x8 digits (values v = 0..16), put on the 8-bit grid (k = round(v *
255 / 16), x = k / 127.5 - 1) so the discretized decoder's bins are the data's values; a fixed
permutation (seed 0) holds out the last 297 images, the first 100 of which are evaluated. The
model is the digits8 UNet (ch 32, unconditional) with 1 output channel (simple) or 2 (hybrid,
vlb: learned variance). Bits/dim: ddpm.losses.bits_per_dim over every t of the EMA weights, float32, the
same noise seed for every model; the simple model is evaluated with both fixed variances.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import ddpm
import reference
from ddpm.data import ImageDataset
from ddpm.losses import bits_per_dim
from ddpm.train import TrainConfig, Trainer

OBJECTIVES = {  # objective -> (variance, loss, timestep_sampling, out_channels)
    "simple": ("fixed_small", "simple", "uniform", 1),
    "hybrid": ("learned", "hybrid", "uniform", 2),
    "vlb": ("learned", "vlb", "importance", 2),
    "vlb_uniform": ("learned", "vlb", "uniform", 2),
}
HELD_OUT = 297
EVAL_IMAGES = 100  # of the held-out 297: bits/dim runs the model T times on them


class _OutputsByStep(torch.nn.Module):
    """The model, called once per timestep: both fixed-variance evaluations of one model use the
    same x_t (same seed), so the second reads the first's outputs instead of running it again."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.outputs = model, model.config, {}

    def forward(self, x_t, t, y=None):
        key = int(t[0])
        if key not in self.outputs:
            self.outputs[key] = self.model(x_t, t, y)
        return self.outputs[key]


def digits_8bit() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) float32 (N, 1, 8, 8) on the 8-bit grid 2 k / 255 - 1."""
    from sklearn.datasets import load_digits

    values = load_digits().images  # 0..16
    k = np.round(values * 255.0 / 16.0)
    x = (k / 127.5 - 1.0)[:, None].astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x = torch.from_numpy(x[order])
    return x[:-HELD_OUT], x[-HELD_OUT:]


def train_and_evaluate(objective: str, steps: int, T: int, batch_size: int, lr: float, seed: int) -> dict:
    variance, loss, sampling, out_channels = OBJECTIVES[objective]
    train, held_out = digits_8bit()
    schedule = reference.make_schedule("cosine", T)
    torch.manual_seed(seed)
    model = ddpm.UNet(reference.UNetConfig.digits8(out_channels=out_channels))
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=50, ema_decay=0.995,
                         seed=seed, label_dropout=0.0, variance=variance, loss=loss, timestep_sampling=sampling)
    trainer = Trainer(model, schedule, config, ImageDataset(train, None, None, None, "digits-8bit"))
    start = time.perf_counter()
    trainer.fit(progress=False)
    train_seconds = time.perf_counter() - start
    ema_model = ddpm.UNet(model.config)
    ema_model.load_state_dict(trainer.ema.state_dict())
    ema_model.eval()
    cached = _OutputsByStep(ema_model)
    held_out = held_out[:EVAL_IMAGES]
    variances = ["fixed_small", "fixed_large"] if variance != "learned" else ["learned"]
    result = dict(objective=objective, variance=variance, loss=loss, timestep_sampling=sampling, steps=steps,
                  T=T, batch_size=batch_size, lr=lr, seed=seed, train_seconds=train_seconds,
                  final_loss_mean_last_100=float(np.mean(trainer.history["loss"][-100:])),
                  importance_warmed_up=None if trainer.importance is None else trainer.importance.warmed_up,
                  bpd={})
    for v in variances:
        start = time.perf_counter()
        total, terms = bits_per_dim(cached, held_out, schedule, seed=1, variance=v)
        terms = terms.double().numpy()
        result["bpd"][v] = dict(mean=float(total.mean()), sem=float(total.std() / np.sqrt(len(total))),
                                decoder_L0=float(terms[:, 0].mean()), prior_LT=float(terms[:, -1].mean()),
                                first_10pct=float(terms[:, 1:max(2, T // 10)].sum(1).mean()),
                                eval_seconds=time.perf_counter() - start)
    return result


def report(directory: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    lines = ["| objective | variance (eval) | steps | T | NLL bound, bits/dim (± s.e.) | L_0 | L_1..L_{T/10} | L_T | "
             "train s | last-100 loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for v, b in r["bpd"].items():
            lines.append(f"| {r['objective']} ({r['loss']}, t {r['timestep_sampling']}) | {v} | {r['steps']} | "
                         f"{r['T']} | {b['mean']:.3f} ± {b['sem']:.3f} | {b['decoder_L0']:.3f} | "
                         f"{b['first_10pct']:.3f} | {b['prior_LT']:.2e} | {r['train_seconds']:.0f} | "
                         f"{r['final_loss_mean_last_100']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=sorted(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/improved-ddpm-bpd"))
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.report is not None:
        print(report(args.report))
        return
    if args.objective is None:
        parser.error("--objective is required unless --report is given")
    torch.set_num_threads(args.threads)
    result = train_and_evaluate(args.objective, args.steps, args.T, args.batch_size, args.lr, args.seed)
    result["machine"] = f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, " \
                        f"{args.threads} thread(s), CPU shared with other jobs"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.objective}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
