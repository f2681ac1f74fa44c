"""The NumPy UNet end to end: train it on 8x8 digits, sample it, time forward+backward per preset.

A correctness tool, not the fast path (that is `ddpm`): the same generic loop as the MLP
(`reference.train`, DDPM Alg. 1 with Adam from `reference.optim`) drives the UNet through the
model protocol, and the reference samplers draw from it.

    python -m reference.unet_train                    # digits8 UNet, 300 Adam steps, DDIM samples
    python -m reference.unet_train --timing           # forward+backward seconds per preset

The data is scikit-learn's bundled 1,797 8x8 digits (DESIGN "Data"; nothing is downloaded),
scaled from [0, 16] to [-1, 1]. scikit-learn is imported only when the digits are asked for.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .optim import Adam
from .sampling import sample_ddim
from .schedules import make_schedule
from .train import train
from .unet import UNet
from .unet_config import UNetConfig, count_parameters

__all__ = ["load_digits8", "train_digits", "forward_backward_seconds", "PRESETS"]

PRESETS = {
    "tiny": UNetConfig.tiny,
    "digits8": UNetConfig.digits8,
    "mnist28": lambda: UNetConfig.mnist(image_size=28),
    "mnist32": lambda: UNetConfig.mnist(image_size=32),
    "ddpm_cifar10": UNetConfig.ddpm_cifar10,
}


def load_digits8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 1, 8, 8) float64 in [-1, 1], labels (1797,) int64."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    images = digits.images.astype(np.float64)[:, None] / 16.0 * 2.0 - 1.0
    return images, digits.target.astype(np.int64)


def train_digits(config: UNetConfig | None = None, *, steps: int = 300, batch_size: int = 32,
                 lr: float = 2e-3, T: int = 1000, seed: int = 0, num_samples: int = 16,
                 sample_steps: int = 20, images: np.ndarray | None = None, callback=None) -> dict:
    """Train a UNet eps-model on 8x8 digits with Adam, then DDIM-sample it (eta = 0).

    Returns {"loss": [steps floats], "grad_norm": [...], "model": UNet, "samples": (num_samples,
    1, 8, 8) float64 (clipped to [-1, 1]), "seconds_per_step": float}.
    """
    config = UNetConfig.digits8() if config is None else config
    x0 = load_digits8()[0] if images is None else images
    schedule = make_schedule("linear", T)
    model = UNet(config, seed=seed)
    optimizer = Adam(model.params, lr=lr)
    start = time.perf_counter()
    history = train(model, x0, schedule, steps=steps, batch_size=batch_size, seed=seed,
                    optimizer=optimizer, callback=callback)
    seconds_per_step = (time.perf_counter() - start) / max(steps, 1)
    samples = None
    if num_samples:
        shape = (num_samples, config.in_channels, config.image_size, config.image_size)
        samples = sample_ddim(model, shape, schedule, seed, num_steps=sample_steps, clip=(-1.0, 1.0))
    return {"loss": history["loss"], "grad_norm": history["grad_norm"], "model": model,
            "samples": samples, "seconds_per_step": seconds_per_step}


def forward_backward_seconds(config: UNetConfig, batch_size: int = 1, repeats: int = 3,
                             seed: int = 0) -> tuple[float, float]:
    """(forward seconds, backward seconds) of one step on random inputs, best of `repeats`."""
    model = UNet(config, seed=seed, zero_init=False)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, config.in_channels, config.image_size, config.image_size))
    t = rng.integers(0, 1000, batch_size)
    y = None if config.num_classes is None else rng.integers(0, config.num_classes, batch_size)
    best_forward = best_backward = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.forward(x, t, y)
        middle = time.perf_counter()
        model.backward(np.ones_like(out))
        end = time.perf_counter()
        best_forward, best_backward = min(best_forward, middle - start), min(best_backward, end - middle)
    return best_forward, best_backward


def _ascii(images: np.ndarray) -> str:
    """(N, 1, 8, 8) in [-1, 1] -> rows of digits drawn with " .:-=+*#%@"."""
    ramp = " .:-=+*#%@"
    levels = np.clip(((images[:, 0] + 1) / 2 * (len(ramp) - 1)).round().astype(int), 0, len(ramp) - 1)
    lines = []
    for row in range(images.shape[2]):
        lines.append("  ".join("".join(ramp[v] for v in img[row]) for img in levels))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true", help="time forward+backward per preset instead")
    parser.add_argument("--timing-batch", type=int, default=1)
    args = parser.parse_args(argv)
    if args.timing:
        for name, make in PRESETS.items():
            config = make()
            forward, backward = forward_backward_seconds(config, args.timing_batch)
            print(f"{name:13s} {count_parameters(config):>11,} params  batch {args.timing_batch}: "
                  f"forward {forward:.3f} s  backward {backward:.3f} s  total {forward + backward:.3f} s")
        return

    def report(step, record):
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {record['loss']:.4f}  grad_norm {record['grad_norm']:.3f}", flush=True)

    result = train_digits(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          num_samples=8, callback=report)
    loss = np.asarray(result["loss"])
    print(f"mean loss: first 25 steps {loss[:25].mean():.4f}, last 25 steps {loss[-25:].mean():.4f}; "
          f"{result['seconds_per_step']:.3f} s/step")
    print(_ascii(result["samples"]))


if __name__ == "__main__":
    main()
