"""`python -m ddpm train | sample | demo`: the command line.

    python -m ddpm train --data digits --config digits8 --steps 2000 --out runs/digits
    python -m ddpm sample --checkpoint runs/digits --sampler ddim --steps 50 --n 64 \
        --class 3 --guidance 2 --out grid.png --gif reverse.gif --ema
    python -m ddpm demo                        # the README's main job (see ddpm.demo)
    torchrun --nproc_per_node 2 -m ddpm train ...   # DDP; gloo with --device cpu

`train` resumes from --out when it holds a checkpoint (same model and training settings; only
--steps may grow). Usage errors exit with status 2, bad data/checkpoints with status 1 and a
one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

import reference

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .data import load_dataset
from .distributed import (
    DistributedContext,
    all_gather_rows,
    init_distributed,
    sample_distributed,
    shutdown_distributed,
    split_counts,
)
from .samplers import DEFAULT_NUM_STEPS, SAMPLERS
from .train import NonFiniteLossError, TrainConfig, Trainer

__all__ = ["main", "build_parser", "model_config", "load_model", "draw", "CONFIG_PRESETS"]

log = logging.getLogger("ddpm")

CONFIG_PRESETS = ("digits8", "mnist", "cifar10", "tiny")


class UsageError(Exception):
    """A bad combination of arguments (exit status 2, like argparse's own errors)."""


# ----------------------------------------------------------------------------- shared helpers

def model_config(preset: str, num_classes: int | None) -> reference.UNetConfig:
    """The UNetConfig preset `preset` (digits8, mnist, cifar10, tiny) with `num_classes`."""
    if preset == "digits8":
        return reference.UNetConfig.digits8(num_classes=num_classes)
    if preset == "mnist":
        return reference.UNetConfig.mnist(num_classes=num_classes)
    if preset == "cifar10":
        return reference.UNetConfig.ddpm_cifar10(num_classes=num_classes)
    if preset == "tiny":
        return reference.UNetConfig.tiny(num_classes=num_classes)
    raise UsageError(f"--config must be one of {CONFIG_PRESETS}, got {preset!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu or cuda[:k], got {name!r}") from None


def load_model(checkpoint_path, *, ema: bool, device: torch.device):
    """(UNet in eval mode on device, its reference schedule, the Checkpoint) from a checkpoint."""
    from .unet import UNet

    ckpt = load_checkpoint(checkpoint_path, map_location="cpu", trainer_state=False)
    model = UNet(ckpt.unet_config)
    model.load_state_dict(ckpt.state_dict(ema=ema))
    return model.to(device).eval(), ckpt.schedule, ckpt


def draw(model, schedule, y: torch.Tensor | None, n: int, ctx: DistributedContext, *,
         sampler: str = "ddim", num_steps: int | None = 50, guidance_scale: float = 1.0,
         eta: float = 0.0, seed: int = 0, gif_frames: int = 0, clip=None):
    """n samples (N, C, H, W) on every rank, split over ranks by global index; with gif_frames
    > 0 also up to that many snapshots of x_t along the reverse process (list of tensors).

    clip=(lo, hi) clips the predicted x0 at every step. Off by default: with DDIM the step keeps
    the model's own eps (diffusers' convention), so clipping x0 makes x0 and eps disagree at
    the noisy steps; on the digits demo it costs ~25 points of hit rate (0.98 -> 0.71)."""
    cfg = model.config
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    frames: list[torch.Tensor] = []
    callback = None
    if gif_frames > 0:
        if num_steps is None:
            raise ValueError("draw: num_steps is required with gif_frames > 0")
        total = num_steps
        # at most gif_frames snapshots, evenly spread, always the last step
        m = min(gif_frames, total)
        keep = {total - 1} if m == 1 else {round(k * (total - 1) / (m - 1)) for k in range(m)}

        def callback(step, t, x):  # this rank's block of x_t after sampler step `step`
            if step in keep:
                frames.append(x.detach().clone())

    with torch.no_grad():
        images = sample_distributed(model, shape, schedule, ctx, y=y, sampler=sampler,
                                    num_steps=num_steps, guidance_scale=guidance_scale, eta=eta,
                                    seed=seed, clip=clip, callback=callback)
    counts = split_counts(n, ctx.world_size)
    if gif_frames > 0 and counts[ctx.rank] == 0:  # no samples here: empty blocks, same count
        frames = [images.new_zeros((0,) + shape[1:])] * len(keep)
    return images, [all_gather_rows(f, counts, ctx) for f in frames]


def _class_labels(spec: str | None, n: int, num_classes: int | None) -> tuple[torch.Tensor | None, int, int | None]:
    """--class: None, an int K, or "all" (n per class, one row per class) -> (y, total, nrow)."""
    if spec is None:
        return None, n, None
    if num_classes is None:
        raise UsageError(f"--class {spec}: the checkpoint's model is unconditional (num_classes=None)")
    if spec == "all":
        return torch.arange(num_classes).repeat_interleave(n), n * num_classes, n
    try:
        k = int(spec)
    except ValueError:
        raise UsageError(f"--class must be an integer class id or 'all', got {spec!r}") from None
    if not 0 <= k < num_classes:
        raise UsageError(f"--class {k} is out of range: the model has classes 0..{num_classes - 1}")
    return torch.full((n,), k, dtype=torch.int64), n, None


def _save_pictures(out_png, images, frames, nrow, gif_path=None) -> list[Path]:
    from .viz import save_gif, save_grid

    written = [save_grid(out_png, images.cpu(), nrow)]
    if gif_path is not None and frames:
        written.append(save_gif(gif_path, [f.cpu() for f in frames], nrow))
    return written


# ----------------------------------------------------------------------------- train

def _train_config_from_args(args, saved: dict | None) -> TrainConfig:
    explicit = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "warmup_steps": args.warmup, "lr_schedule": args.lr_schedule,
        "weight_decay": args.weight_decay, "grad_clip": args.grad_clip,
        "ema_decay": args.ema_decay, "prediction": args.prediction,
        "min_snr_gamma": args.min_snr_gamma, "label_dropout": args.label_dropout, "seed": args.seed,
    }
    if args.no_grad_clip:
        explicit["grad_clip"] = "none"
    given = {k: v for k, v in explicit.items() if v is not None}
    if given.get("grad_clip") == "none":
        given["grad_clip"] = None
    if saved is None:
        return TrainConfig(**given)
    changed = {k: (saved.get(k), v) for k, v in given.items() if k != "steps" and saved.get(k) != v}
    if changed:
        raise UsageError("cannot change training settings when resuming "
                         + ", ".join(f"--{k.replace('_', '-')}: saved {a!r}, given {b!r}"
                                     for k, (a, b) in changed.items())
                         + "; use a new --out to start another run")
    return TrainConfig.from_dict({**saved, **({"steps": given["steps"]} if "steps" in given else {})})


def cmd_train(args) -> int:
    from .unet import UNet
    from .viz import save_loss_curve

    device = resolve_device(args.device)
    ctx = init_distributed(device)
    try:
        out = Path(args.out)
        previous = latest_checkpoint(out)
        ckpt = load_checkpoint(previous, map_location="cpu") if previous is not None else None
        preset = args.config or ("checkpoint" if ckpt is not None else "digits8")
        shape_from = ckpt.unet_config if ckpt is not None and args.config is None else model_config(preset, None)
        data = load_dataset(args.data, shape_from.image_size, shape_from.in_channels,
                            hflip=None if args.hflip is None else args.hflip == "on")
        num_classes = None if args.unconditional else data.num_classes
        if ckpt is not None:
            if args.config is not None:
                ckpt.check_compatible(model_config(preset, num_classes))
            elif args.unconditional and ckpt.unet_config.num_classes is not None:
                raise UsageError(f"--unconditional: {ckpt.path} holds a class-conditional model")
            config = ckpt.unet_config
            schedule = ckpt.schedule
            if args.schedule is not None or args.timesteps is not None:
                requested = reference.make_schedule(args.schedule or ckpt.schedule.kind, args.timesteps or ckpt.schedule.T)
                if not (requested.T == schedule.T and (requested.betas == schedule.betas).all()):
                    raise UsageError(f"cannot change the schedule when resuming: saved {schedule!r}")
        else:
            config = model_config(preset, num_classes)
            schedule = reference.make_schedule(args.schedule or "linear", args.timesteps or 1000)
        train_config = _train_config_from_args(args, ckpt.config["training"] if ckpt else None)
        torch.manual_seed(train_config.seed)
        trainer = Trainer(UNet(config), schedule, train_config, data, ctx=ctx)
        if ckpt is not None:
            trainer.load(ckpt)
            if ctx.is_main:
                print(f"resuming {ckpt.path} at step {trainer.step}", flush=True)
        if ctx.is_main:
            n_params = sum(p.numel() for p in trainer.model.parameters())
            print(f"data: {data.describe()}\nmodel: {preset} UNet, {n_params:,} parameters, "
                  f"{'class-conditional' if config.num_classes else 'unconditional'}; {schedule!r}; "
                  f"device {ctx.device} x {ctx.world_size} process(es)", flush=True)
        start = time.perf_counter()
        trainer.fit(run_dir=out, checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
        elapsed = time.perf_counter() - start
        if ctx.is_main:
            try:
                save_loss_curve(out / "loss_curve.png", trainer.history)
            except RuntimeError as err:
                print(f"warning: {err}", file=sys.stderr)
        if args.samples > 0:
            model = UNet(config).to(ctx.device).eval()
            trainer.ema.copy_to(model)
            y, n, nrow = _class_labels("all" if config.num_classes else None, args.samples, config.num_classes)
            images, _ = draw(model, schedule, y, n, ctx, num_steps=min(args.sample_steps, schedule.T),
                             guidance_scale=args.guidance if y is not None else 1.0)
            if ctx.is_main:
                _save_pictures(out / "samples.png", images, [], nrow)
        if ctx.is_main:
            print(f"trained to step {trainer.step} in {elapsed:.1f} s; wrote {out}", flush=True)
        return 0
    finally:
        shutdown_distributed(ctx)


# ----------------------------------------------------------------------------- sample

def cmd_sample(args) -> int:
    device = resolve_device(args.device)
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    ctx = init_distributed(device)
    try:
        model, schedule, ckpt = load_model(args.checkpoint, ema=args.ema, device=ctx.device)
        num_classes = ckpt.unet_config.num_classes
        if args.guidance != 1.0 and num_classes is None:
            raise UsageError(f"--guidance {args.guidance} needs a class-conditional model; "
                             f"{ckpt.path} is unconditional")
        if args.guidance != 1.0 and args.class_id is None:
            raise UsageError("--guidance needs --class K (or --class all)")
        if args.steps is None:  # the sampler's own default, at most T
            args.steps = schedule.T if args.sampler == "ddpm" else min(DEFAULT_NUM_STEPS[args.sampler], schedule.T)
        if not 1 <= args.steps <= schedule.T:
            raise UsageError(f"--steps must lie in [1, T={schedule.T}], got {args.steps}")
        y, n, nrow = _class_labels(args.class_id, args.n, num_classes)
        images, frames = draw(model, schedule, y, n, ctx, sampler=args.sampler, num_steps=args.steps,
                              guidance_scale=args.guidance, eta=args.eta, seed=args.seed,
                              gif_frames=args.gif_frames if args.gif else 0,
                              clip=(-1.0, 1.0) if args.clip else None)
        if ctx.is_main:
            written = _save_pictures(args.out, images, frames, nrow or args.nrow, args.gif)
            print("wrote " + ", ".join(str(p) for p in written), flush=True)
        return 0
    finally:
        shutdown_distributed(ctx)


# ----------------------------------------------------------------------------- demo

def cmd_demo(args) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    overrides = {k: v for k, v in (("steps", args.steps), ("guidance_scale", args.guidance),
                                   ("seed", args.seed), ("batch_size", args.batch_size)) if v is not None}
    settings = settings.replace(**overrides)
    out = Path(args.out) if args.out else Path("runs") / ("demo-quick" if args.quick else "demo")
    result = run_demo(out, settings, device=resolve_device(args.device), progress=not args.no_progress)
    print(json.dumps({"hit_rate": round(result["hit_rate"], 4), "wall_time_s": round(result["wall_time_s"], 1)}))
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", description="Denoising diffusion models "
                                     "(Ho et al. 2020): train, sample, and the digits demo.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,demo}")

    tr = sub.add_parser("train", help="train (or resume) a model; writes checkpoints and pictures to --out")
    tr.add_argument("--data", default="digits", help="'digits' (default), an image folder, .npy/.npz, or IDX file/folder")
    tr.add_argument("--config", choices=CONFIG_PRESETS, default=None, help="UNet preset (default digits8)")
    tr.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    tr.add_argument("--steps", type=int, default=None, help="train until this step (default 10000)")
    tr.add_argument("--batch-size", type=int, default=None, help="global batch (split over processes)")
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--warmup", type=int, default=None, help="linear LR warmup steps")
    tr.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None)
    tr.add_argument("--weight-decay", type=float, default=None)
    tr.add_argument("--grad-clip", type=float, default=None, help="max gradient norm (default 1.0)")
    tr.add_argument("--no-grad-clip", action="store_true")
    tr.add_argument("--ema-decay", type=float, default=None)
    tr.add_argument("--prediction", choices=reference.PREDICTIONS, default=None)
    tr.add_argument("--min-snr-gamma", type=float, default=None)
    tr.add_argument("--label-dropout", type=float, default=None, help="null-class rate for guidance")
    tr.add_argument("--unconditional", action="store_true", help="ignore the data's labels")
    tr.add_argument("--hflip", choices=("on", "off"), default=None, help="random horizontal flips (default: per data)")
    tr.add_argument("--schedule", choices=reference.SCHEDULE_KINDS, default=None, help="beta schedule (default linear)")
    tr.add_argument("--timesteps", type=int, default=None, help="T (default 1000)")
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--checkpoint-every", type=int, default=1000)
    tr.add_argument("--samples", type=int, default=8, help="samples per class (or total) in samples.png; 0: none")
    tr.add_argument("--guidance", type=float, default=2.0, help="guidance of the final samples.png")
    tr.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the final samples.png")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    sa = sub.add_parser("sample", help="draw a grid (and a GIF of the reverse process) from a checkpoint")
    sa.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint directory")
    sa.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    sa.add_argument("--steps", type=int, default=None,
                    help="sampler steps (default: 50 for ddim, 20 for dpm_solver++, T for ddpm; at most T)")
    sa.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                    help="number of samples (per class with --class all); under torchrun spell it "
                         "--num-samples (torchrun's parser takes --n for its own --nnodes/--nproc...)")
    sa.add_argument("--class", dest="class_id", default=None, help="class id K, or 'all' for one row per class")
    sa.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale w")
    sa.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--ema", action="store_true", help="use the EMA weights")
    sa.add_argument("--clip", action="store_true", help="clip the predicted x0 to [-1, 1] at every step "
                    "(helps ddpm; hurts ddim, which keeps the model's eps)")
    sa.add_argument("--out", default="samples.png", help="PNG grid path")
    sa.add_argument("--nrow", type=int, default=None, help="images per row")
    sa.add_argument("--gif", default=None, help="also write the reverse process as a GIF here")
    sa.add_argument("--gif-frames", type=int, default=50)
    sa.add_argument("--device", default="auto")
    sa.set_defaults(func=cmd_sample)

    de = sub.add_parser("demo", help="train a class-conditional model on the embedded digits, draw one "
                        "row per class, report a classifier's hit rate")
    de.add_argument("--out", default=None, help="output directory (default runs/demo)")
    de.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")
    de.add_argument("--steps", type=int, default=None)
    de.add_argument("--batch-size", type=int, default=None)
    de.add_argument("--guidance", type=float, default=None)
    de.add_argument("--seed", type=int, default=None)
    de.add_argument("--device", default="auto")
    de.add_argument("--no-progress", action="store_true")
    de.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        parser.error(str(err))  # exits with status 2
    except (CheckpointError, NonFiniteLossError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
