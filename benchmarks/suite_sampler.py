"""Sampler suite: DDIM-50 images/s at batch 256 and batch-1 latency, DDPM CIFAR-10 UNet, 32x32.

Same weights everywhere (random, zero_init off so every layer does real work):
  fast       ddpm.FastSampler (CUDA graph of the whole loop, fused kernels, channels_last)
  eager      ddpm.sample (our eager loop, one fused update per step)
  diffusers  UNet2DModel + DDIMScheduler (leading spacing, set_alpha_to_one), the usual peer
each in fp32 and bf16 (pure bf16 weights/activations for all three).
"""

from __future__ import annotations

import torch

import reference
from ddpm import FastSampler, UNet, sample
from ddpm.diffusers_io import diffusers_config, to_diffusers

from .harness import Report, Row, bench

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _diffusers_sampler(model: UNet, dtype, device, num_steps: int, T: int):
    """A callable (n, seed) -> images running diffusers' UNet2DModel + DDIMScheduler, or None."""
    try:
        from diffusers import DDIMScheduler, UNet2DModel
    except ImportError:
        return None
    net = UNet2DModel(**diffusers_config(model.config))
    net.load_state_dict(to_diffusers(model))
    net = net.to(device=device, dtype=dtype).eval()
    scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                              beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing="leading")
    scheduler.set_timesteps(num_steps)
    shape = (model.config.in_channels, model.config.image_size, model.config.image_size)

    @torch.no_grad()
    def run(n: int):
        x = torch.randn((n,) + shape, device=device, dtype=dtype)
        for t in scheduler.timesteps:
            eps = net(x, t).sample
            x = scheduler.step(eps, t, x).prev_sample
        return x

    return run


def run(report: Report, *, device: str, quick: bool, dtypes, compile_peers: bool,
        check: bool = False) -> None:
    on_cuda = device.startswith("cuda")
    if quick or not on_cuda:
        config = reference.UNetConfig.tiny()
        batches, num_steps, T = [1, 4], 3, 50
        dtypes = ["fp32"]
        rep = dict(warmup=1, repeat=3)
        if not quick:
            report.skip("sampler at CIFAR-10 size", "needs a CUDA device; ran the tiny config on the CPU")
    else:
        config = reference.UNetConfig.ddpm_cifar10(dropout=0.0)
        batches, num_steps, T = [1, 256], 50, 1000
        rep = dict(warmup=1, repeat=3) if check else dict(warmup=2, repeat=10)
    schedule = reference.make_schedule("linear", T)
    torch.manual_seed(0)
    base = UNet(config, zero_init=False).to(device).eval()
    try:
        import diffusers  # noqa: F401
        have_diffusers = True
    except ImportError:
        have_diffusers = False
        report.skip("diffusers peer", "diffusers is not installed (pip install -e '.[diffusers]')")
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        model = UNet(config, zero_init=False).to(device=device, dtype=dtype).eval()
        model.load_state_dict(base.state_dict())
        fast = FastSampler(base, schedule, num_steps=num_steps, dtype=dtype, device=device)
        peer = _diffusers_sampler(base, dtype, device, num_steps, T) if have_diffusers else None
        for n in batches:
            shape = (n, config.in_channels, config.image_size, config.image_size)
            row = Row("sampler", f"DDIM-{num_steps} {'latency' if n == 1 else 'throughput'}",
                      dict(batch=n, dtype=dtype_name, image=f"{config.image_size}x{config.image_size}",
                           params=reference.count_parameters(config)), items=n)
            row.times["fast"] = bench(lambda n=n: fast(n, seed=0), device, **rep)
            row.times["eager"] = bench(
                lambda shape=shape: sample(model, shape, schedule, num_steps=num_steps, seed=0,
                                           dtype=dtype, device=device), device, **rep)
            if peer is not None:
                row.times["diffusers"] = bench(lambda n=n: peer(n), device, **rep)
            secs = row.times["fast"]
            row.notes = f"fast: {n / secs:.1f} images/s, {secs * 1e3:.1f} ms per call"
            report.add(row)
