"""CPU rows of issue 17: our training step and DDIM-50 against diffusers, same weights and dtype.

Interleaved in one process (each repeat times every variant once, in turn, so load drifts hit all
of them alike), median of `repeat` calls after warm-up, torch at 2 threads, float32:

  train step   ddpm.Trainer.train_step (default TrainConfig: Philox noise, AdamW, grad-norm clip,
               EMA) vs diffusers: UNet2DModel + DDPMScheduler.add_noise (torch.randn noise) + MSE
               + AdamW (torch's default, as a user writes it); digits8 (class-conditional) batch
               64 and the DDPM CIFAR-10 preset batch 8 (random images: time does not depend on
               the values).
  DDIM-50      64 digits from the same x_T: ddpm.sample vs UNet2DModel + DDIMScheduler; and
               ddpm.FastSampler's CPU mode (its own x_T from the noise stream, same work).

Variants, each against diffusers in the same setting: channels_last (model and state), compile
(torch.compile, inductor's C++; skipped with --no-compile, digits only: a CIFAR compile takes
minutes), bf16 autocast only where ddpm.cpu_speed.cpu_bf16_support() detects native bf16 (else
a skipped line saying why). Each variant's row also times diffusers as users run it by default
(NCHW, eager: "diffusers-eager") in the same interleaving.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F

import reference
from ddpm import FastSampler, UNet, sample
from ddpm.cpu_speed import cpu_bf16_support
from ddpm.data import ImageDataset, load_digits
from ddpm.diffusers_io import diffusers_config, to_diffusers
from ddpm.train import TrainConfig, Trainer

from .harness import Report, Row

THREADS = int(os.environ.get("DDPM_BENCH_THREADS", "2"))  # the setting; override for evidence runs
SUITE = "cpu-vs-diffusers"  # its own table: the first column is ours, the ratios are theirs / ours


def interleaved(fns: dict, *, warmup: int, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """(median wall seconds, median process CPU seconds) per call of each fn, timing one call of
    every fn per round. The CPU seconds are the steadier figure on a shared, loaded machine."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return ({name: statistics.median(v) for name, v in times.items()},
            {name: statistics.median(v) for name, v in cpu.items()})


def _cpu_note(cpu: dict[str, float]) -> str:
    first = next(iter(cpu))
    return "CPU time " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in cpu.items()) + \
        "".join(f"; {k} / {first} {cpu[k] / cpu[first]:.2f}x" for k in cpu if k != first)


def _dataset(config: reference.UNetConfig, n: int) -> ImageDataset:
    if config.in_channels == 1 and config.image_size == 8:
        return load_digits(8, 1)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, config.in_channels, config.image_size, config.image_size, generator=gen) * 2 - 1
    labels = None if config.num_classes is None else torch.arange(n) % config.num_classes
    return ImageDataset(images=images, labels=labels, num_classes=config.num_classes, class_names=None,
                        source="random")


def _diffusers_net(model: UNet, channels_last: bool):
    from diffusers import UNet2DModel

    net = UNet2DModel(**diffusers_config(model.config))
    net.load_state_dict(to_diffusers(model))
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _diffusers_train_step(model: UNet, dataset: ImageDataset, batch: int, *, channels_last=False,
                          compile=False, bf16=False):
    from diffusers import DDPMScheduler

    net = _diffusers_net(model, channels_last).train()
    forward = torch.compile(net) if compile else net
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = dataset.images[:batch].clone()
    y = None if dataset.labels is None or model.config.num_classes is None else dataset.labels[:batch].clone()
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
        x_t = scheduler.add_noise(x0, noise, t)
        with amp:
            out = forward(x_t, t, class_labels=y).sample
        loss = F.mse_loss(out.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _our_train_step(model: UNet, dataset: ImageDataset, batch: int, **options):
    copy = UNet(model.config, zero_init=False)
    copy.load_state_dict(model.state_dict())
    trainer = Trainer(copy, reference.make_schedule("linear", 1000),
                      TrainConfig(batch_size=batch, seed=0, **options), dataset)
    return trainer.train_step


def _variants(compile_ok: bool, bf16: bool) -> list[tuple[str, dict]]:
    out = [("", {}), ("channels_last", {"channels_last": True})]
    if compile_ok:
        out.append(("compile", {"compile": True}))
    if bf16:
        out.append(("bf16", {"bf16": True}))
    return out


def train_rows(report: Report, *, quick: bool, compile_peers: bool, only=None, repeat: int = 5) -> None:
    bf16, why = cpu_bf16_support()
    if not bf16:
        report.skip("cpu bf16 autocast rows", why)
    cases = [("tiny", reference.UNetConfig.tiny(), 4)] if quick else [
        ("digits8", reference.UNetConfig.digits8(num_classes=10), 64),
        ("cifar10", reference.UNetConfig.ddpm_cifar10(dropout=0.0), 8)]
    rounds = dict(warmup=1, repeat=2) if quick else dict(warmup=2, repeat=repeat)
    for name, config, batch in cases:
        if only is not None and f"train-{name}" not in only:
            continue
        torch.manual_seed(0)
        model = UNet(config, zero_init=False)
        dataset = _dataset(config, max(batch, 64))
        compile_ok = compile_peers and name != "cifar10"
        if compile_peers and not compile_ok:
            report.skip(f"train step {name} compile", "not run: inductor compiles the 35.7M-parameter "
                                                      "UNet's backward for minutes on 2 cores")
        for label, opts in _variants(compile_ok, bf16):
            ours_opts = dict(opts)
            if ours_opts.pop("bf16", False):
                ours_opts["mixed_precision"] = "bf16"
            fns = {"ours": _our_train_step(model, dataset, batch, **ours_opts),
                   "diffusers": _diffusers_train_step(model, dataset, batch, **opts)}
            if label:  # the peer as users run it by default, in the same interleaving
                fns["diffusers-eager"] = _diffusers_train_step(model, dataset, batch)
            times, cpu = interleaved(fns, **rounds)
            row = Row(SUITE, f"train step {name}" + (f" {label}" if label else ""),
                      dict(batch=batch, params=reference.count_parameters(config), dtype="bf16" if label == "bf16" else "fp32",
                           threads=torch.get_num_threads()), times=times, items=batch,
                      notes=_cpu_note(cpu))
            report.add(row)


def _diffusers_ddim(model: UNet, n: int, num_steps: int, *, channels_last=False, compile=False):
    from diffusers import DDIMScheduler

    net = _diffusers_net(model, channels_last).eval()
    forward = torch.compile(net) if compile else net
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                              beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing="leading")
    scheduler.set_timesteps(num_steps)
    return scheduler, forward


def ddim_rows(report: Report, *, quick: bool, compile_peers: bool, repeat: int = 5) -> None:
    config = reference.UNetConfig.tiny() if quick else reference.UNetConfig.digits8(num_classes=10)
    n, num_steps = (4, 3) if quick else (64, 50)
    rounds = dict(warmup=1, repeat=2) if quick else dict(warmup=1, repeat=repeat)
    schedule = reference.make_schedule("linear", 1000)
    torch.manual_seed(0)
    model = UNet(config, zero_init=False).eval()
    shape = (n, config.in_channels, config.image_size, config.image_size)
    y = None if config.num_classes is None else torch.arange(n) % config.num_classes
    x_T = torch.randn(shape)
    variants = [("", {})] + [("channels_last", {"channels_last": True})]
    if compile_peers:
        variants.append(("compile", {"compile": True}))
    def diffusers_loop(scheduler, net, start):
        @torch.no_grad()
        def run():
            x = start
            for t in scheduler.timesteps:
                x = scheduler.step(net(x, t, class_labels=y).sample, t, x).prev_sample
            return x
        return run

    plain_diffusers = diffusers_loop(*_diffusers_ddim(model, n, num_steps), x_T)
    for label, opts in variants:
        scheduler, net = _diffusers_ddim(model, n, num_steps, **opts)
        fast = FastSampler(model, schedule, num_steps=num_steps, dtype=torch.float32, **opts)
        start = x_T.to(memory_format=torch.channels_last) if opts.get("channels_last") else x_T
        theirs = diffusers_loop(scheduler, net, start)
        fns = {"ours": lambda fast=fast: fast(n, seed=0, y=y), "diffusers": theirs}
        if not label:
            fns["ours-eager"] = lambda: sample(model, shape, schedule, num_steps=num_steps, x_T=x_T, y=y)
        else:  # the peer as users run it by default (NCHW eager), in the same interleaving
            fns["diffusers-eager"] = plain_diffusers
        times, cpu = interleaved(fns, **rounds)
        row = Row(SUITE, f"DDIM-{num_steps} {config.image_size}x{config.image_size}" + (f" {label}" if label else ""),
                  dict(batch=n, params=reference.count_parameters(config), dtype="fp32",
                       threads=torch.get_num_threads()), times=times, items=n,
                  notes=_cpu_note(cpu))
        report.add(row)


def run(report: Report, *, quick: bool, compile_peers: bool) -> None:
    """The issue-17 rows, at torch THREADS threads (restored afterwards)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        report.skip("cpu rows vs diffusers", "diffusers is not installed (pip install -e '.[diffusers]')")
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        train_rows(report, quick=quick, compile_peers=compile_peers)
        ddim_rows(report, quick=quick, compile_peers=compile_peers)
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    """A subset of these rows alone (evidence runs on a loaded machine):
    python -m benchmarks.cpu_vs_diffusers --cases train-digits8 ddim --repeat 5 --json J --md M"""
    import argparse
    import shlex
    import sys

    from .harness import environment

    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_vs_diffusers")
    p.add_argument("--cases", nargs="+", choices=("train-digits8", "train-cifar10", "ddim"),
                   default=["train-digits8", "train-cifar10", "ddim"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    command = "python -m benchmarks.cpu_vs_diffusers " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    torch.set_num_threads(THREADS)
    report = Report(env=environment("cpu"), command=command, autosave=args.json)
    report.env["load_average_start"] = os.getloadavg()
    train = [c for c in args.cases if c.startswith("train-")]
    if train:
        train_rows(report, quick=False, compile_peers=not args.no_compile, only=train, repeat=args.repeat)
    if "ddim" in args.cases:
        ddim_rows(report, quick=False, compile_peers=not args.no_compile, repeat=args.repeat)
    report.finish(args.json, args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
