"""Evidence for latent diffusion on MNIST (issue 14): autoencoder PSNR, latent vs pixel DDPM at
equal CPU training time, and the cost of one sampling step.

    python -m benchmarks.latent_diffusion --phase latent   # autoencoder, then the latent DDPM
    python -m benchmarks.latent_diffusion --phase pixel    # the pixel DDPM (run beside it)
    python -m benchmarks.latent_diffusion --phase report   # step costs, metrics, the markdown

Data: MNIST's 10k test split from ../shared/data/mnist; the first 9,000 images train everything,
the last 1,000 are held out (the split of ddpm.feature_net / ddpm.evaluate). Budgets are CPU
seconds of this process (time.process_time, one torch thread), so a loaded machine slows the
wall clock but not the comparison. Pixel DDPM: the mnist_small UNet (280,881 parameters); latent
DDPM: reference.latent_unet_config(4, 7). Both DDPMs: class-conditional, label dropout 0.1, batch 32,
AdamW lr 1e-3 with 200 warmup steps, EMA 0.999, linear T=1000; samples: DDIM 50 steps,
guidance 2, 20 per class, the same noise-stream seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import ddpm
import reference
from ddpm.autoencoder_train import AutoencoderTrainer
from ddpm.data import ImageDataset, load_dataset
from ddpm.latent import latent_dataset
from ddpm.runs import draw
from ddpm.runs_latent import psnr
from ddpm.distributed import single_process
from ddpm.viz import save_grid

RESULTS = Path(__file__).resolve().parent / "results"
PER_CLASS = 20  # samples per class (--per-class)
TRAIN, HELD_OUT = 9000, 1000


def _mnist():
    from tests.helpers import mnist_dir  # the one place that knows where the shared data lives

    folder = mnist_dir()
    if folder is None:
        raise SystemExit("MNIST not found (../shared/data/mnist)")
    data = load_dataset(folder, 28, 1)
    split = lambda sl, tag: ImageDataset(data.images[sl].contiguous(), data.labels[sl].contiguous(), 10,  # noqa: E731
                                         data.class_names, f"MNIST t10k {tag}", False)
    return split(slice(0, TRAIN), "[:9000]"), split(slice(TRAIN, TRAIN + HELD_OUT), "[9000:]")


def _train_for(trainer, cpu_seconds: float, log_every: int = 50) -> dict:
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    while time.process_time() - start_cpu < cpu_seconds:
        result = trainer.train_step()
        if trainer.step % log_every == 0:
            print(f"step {trainer.step} loss {result.loss:.4f} cpu {time.process_time() - start_cpu:.0f}s", flush=True)
    return {"steps": trainer.step, "cpu_s": round(time.process_time() - start_cpu, 1),
            "wall_s": round(time.perf_counter() - start_wall, 1), "final_loss_mean_50": float(np.mean(trainer.history["loss"][-50:]))}


def _ddpm_config(steps: int) -> ddpm.TrainConfig:
    # the settings of the full-size MNIST run (benchmarks/results/mnist-full-size.md)
    return ddpm.TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=200, ema_decay=0.999,
                            label_dropout=0.1, seed=0)


def _sample(trainer, schedule) -> tuple[torch.Tensor, torch.Tensor, float]:
    model = ddpm.runs.ema_model(trainer)
    y = torch.arange(10).repeat_interleave(PER_CLASS)
    start = time.process_time()
    # the sampling of benchmarks.dit_vs_unet (DDIM 50, w = 2, seed 1), so its MNIST UNet can be the pixel row
    out, _ = draw(model, schedule, y, len(y), single_process(), sampler="ddim", num_steps=50, guidance_scale=2.0, seed=1)
    return out, y, time.process_time() - start


def phase_latent(work: Path, budget: float, ae_budget: float) -> None:
    train, held = _mnist()
    torch.manual_seed(0)
    ae = ddpm.AutoencoderKL(reference.AutoencoderConfig())
    cfg = ddpm.TrainConfig(steps=10**6, batch_size=64, lr=1e-3, warmup_steps=100, ema_decay=0.999, seed=0)
    trainer = AutoencoderTrainer(ae, cfg, train, kl_weight=1e-6)
    ae_stats = _train_for(trainer, ae_budget)
    trainer.save(work / "ae")
    model = trainer.ema_model()
    with torch.no_grad():
        x_hat = torch.cat([model(held.images[i:i + 250])[0] for i in range(0, HELD_OUT, 250)])
    ae_stats["psnr_held_out_db"] = round(psnr(x_hat, held.images), 3)
    ae_stats["mse_held_out"] = float((x_hat.clamp(-1, 1) - held.images).pow(2).mean())
    save_grid(RESULTS / "latent-diffusion" / "reconstructions.png", torch.cat([held.images[:16], x_hat[:16].clamp(-1, 1)]), 16)
    print("autoencoder", ae_stats, flush=True)

    latents, scaling = latent_dataset(model, train, own=True, cache=work / "latents.safetensors")
    scaled = ddpm.AutoencoderKL(model.config.replace(scaling_factor=scaling))
    scaled.load_state_dict(model.state_dict())
    scaled.save_diffusers(work / "autoencoder")
    schedule = reference.make_schedule("linear", 1000)
    torch.manual_seed(0)
    unet = ddpm.UNet(reference.latent_unet_config(4, 7, num_classes=10))
    ddpm_trainer = ddpm.Trainer(unet, schedule, _ddpm_config(10**6), latents)
    stats = _train_for(ddpm_trainer, budget)
    ddpm_trainer.save(work / "latent")
    z, y, sample_cpu = _sample(ddpm_trainer, schedule)
    start = time.process_time()
    images = scaled.decode_latents(z).clamp(-1, 1)
    stats.update(scaling_factor=scaling, sample_cpu_s=round(sample_cpu, 1),
                 decode_cpu_s=round(time.process_time() - start, 1),
                 parameters=sum(p.numel() for p in unet.parameters()))
    _save_samples(work, "latent", images, y, {"autoencoder": ae_stats, "latent_ddpm": stats})


def phase_pixel(work: Path, budget: float) -> None:
    train, _ = _mnist()
    schedule = reference.make_schedule("linear", 1000)
    torch.manual_seed(0)
    unet = ddpm.UNet(reference.UNetConfig.mnist_small(num_classes=10))  # 280,881 parameters
    trainer = ddpm.Trainer(unet, schedule, _ddpm_config(10**6), train)
    stats = _train_for(trainer, budget)
    trainer.save(work / "pixel")
    images, y, sample_cpu = _sample(trainer, schedule)
    stats.update(sample_cpu_s=round(sample_cpu, 1), parameters=sum(p.numel() for p in unet.parameters()))
    _save_samples(work, "pixel", images, y, {"pixel_ddpm": stats})


def phase_pixel_from(work: Path, run: Path) -> None:
    """The pixel row from `python -m benchmarks.dit_vs_unet --arch unet --data mnist` (RUN = its --out):
    the same data, UNet (mnist_small), training settings, CPU budget and sampling as phase_pixel,
    so one training run serves the DiT and the latent comparisons."""
    stats = json.loads((run / "mnist-unet.json").read_text())
    saved = torch.load(run / "mnist-unet-samples.pt")
    pixel = {"steps": stats["steps"], "cpu_s": stats["train_cpu_s"], "wall_s": stats["train_wall_s"],
             "final_loss_mean_50": stats["final_loss_mean_last_100"], "loss_window": 100,
             "sample_cpu_s": stats["sample_cpu_s"], "parameters": stats["parameters"], "source": str(run)}
    _save_samples(work, "pixel", saved["images"], saved["labels"], {"pixel_ddpm": pixel})


def _save_samples(work: Path, name: str, images, y, stats) -> None:
    images = images.clamp(-1, 1)
    np.savez_compressed(work / f"{name}_samples.npz", images=((images + 1) * 127.5).round().byte().numpy(), labels=y.numpy())
    save_grid(RESULTS / "latent-diffusion" / f"{name}_samples.png", images.reshape(10, -1, 1, 28, 28)[:, :10].reshape(-1, 1, 28, 28),
              min(10, images.shape[0] // 10))
    (work / f"{name}_stats.json").write_text(json.dumps(stats, indent=2))
    print(name, stats, flush=True)


def step_costs(repeats: int = 2) -> dict:
    """CPU seconds of one guided DDIM step (UNet forward on 2 x 64 rows) per space, and one decode of 64."""
    out = {}
    for name, cfg in (("pixel", reference.UNetConfig.mnist_small(num_classes=10)),
                      ("latent", reference.latent_unet_config(4, 7, num_classes=10))):
        model = ddpm.UNet(cfg).eval()
        x = torch.randn(128, cfg.in_channels, cfg.image_size, cfg.image_size)
        t, y = torch.full((128,), 500), torch.arange(128) % 11
        with torch.no_grad():
            model(x, t, y)
            start = time.process_time()
            for _ in range(repeats):
                model(x, t, y)
        out[f"{name}_step_cpu_s"] = (time.process_time() - start) / repeats
    ae = ddpm.AutoencoderKL(reference.AutoencoderConfig()).eval()
    z = torch.randn(64, 4, 7, 7)
    with torch.no_grad():
        ae.decode(z)
        start = time.process_time()
        for _ in range(repeats):
            ae.decode(z)
    out["decode_64_cpu_s"] = (time.process_time() - start) / repeats
    out["ratio_pixel_over_latent"] = out["pixel_step_cpu_s"] / out["latent_step_cpu_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=("latent", "pixel", "pixel-from", "report"), required=True)
    parser.add_argument("--from", dest="pixel_run", type=Path, default=None,
                        help="pixel-from: the --out folder of benchmarks.dit_vs_unet --arch unet --data mnist")
    parser.add_argument("--work", default="/tmp/latent-diffusion-evidence")
    parser.add_argument("--budget", type=float, default=360.0, help="CPU seconds of DDPM training")
    parser.add_argument("--ae-budget", type=float, default=240.0, help="CPU seconds of autoencoder training")
    parser.add_argument("--per-class", type=int, default=PER_CLASS, help="samples per class")
    args = parser.parse_args()
    globals()["PER_CLASS"] = args.per_class
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latent-diffusion").mkdir(parents=True, exist_ok=True)
    if args.phase == "latent":
        phase_latent(work, args.budget, args.ae_budget)
    elif args.phase == "pixel":
        phase_pixel(work, args.budget)
    elif args.phase == "pixel-from":
        if args.pixel_run is None:
            parser.error("--phase pixel-from needs --from DIR")
        phase_pixel_from(work, args.pixel_run)
    else:
        from benchmarks.latent_diffusion_report import report
        report(work, step_costs())


if __name__ == "__main__":
    main()
