"""`python -m ddpm train | sample | demo`: the command line. It parses arguments and calls
ddpm.runs (train, sample) and ddpm.demo; what a run does is decided there.

    python -m ddpm train --data digits --config digits8 --steps 2000 --out runs/digits
    python -m ddpm sample --checkpoint runs/digits --sampler ddim --steps 50 --n 64 \
        --class 3 --guidance 2 --out grid.png --gif reverse.gif --ema
    python -m ddpm demo                        # the README's main job (see ddpm.demo)
    torchrun --nproc_per_node 2 -m ddpm train ...   # DDP; gloo with --device cpu

`train` resumes from --out when it holds a checkpoint (same model and training settings; only
--steps may grow: ddpm.runs.check_resume). Usage errors exit with status 2; bad data,
checkpoints and refused resumes with status 1 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

import reference

from .checkpoint import CheckpointError
from .demo import DemoSettings, run_demo
from .runs import CONFIG_PRESETS, UsageError, sample_run, train_run
from .samplers import SAMPLERS
from .train import NonFiniteLossError

__all__ = ["main", "build_parser"]

log = logging.getLogger("ddpm")


def resolve_device(name: str) -> torch.device:
    """--device: auto (CUDA when available), cpu or cuda[:k]."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu or cuda[:k], got {name!r}") from None


def _training_args(args) -> dict:
    """The TrainConfig fields given on the command line (left out: saved or default)."""
    given = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "warmup_steps": args.warmup, "lr_schedule": args.lr_schedule,
        "weight_decay": args.weight_decay, "grad_clip": args.grad_clip,
        "ema_decay": args.ema_decay, "prediction": args.prediction,
        "min_snr_gamma": args.min_snr_gamma, "label_dropout": args.label_dropout, "seed": args.seed,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.no_grad_clip:  # None is "not given" above, so the explicit "no clipping" comes last
        given["grad_clip"] = None
    return given


def cmd_train(args) -> int:
    train_run(args.out, data=args.data, preset=args.config, unconditional=args.unconditional,
              hflip=None if args.hflip is None else args.hflip == "on", schedule=args.schedule,
              timesteps=args.timesteps, training=_training_args(args),
              checkpoint_every=args.checkpoint_every, samples=args.samples, guidance=args.guidance,
              sample_steps=args.sample_steps, device=resolve_device(args.device),
              progress=not args.no_progress)
    return 0


def cmd_sample(args) -> int:
    sample_run(args.checkpoint, args.out, sampler=args.sampler, steps=args.steps, n=args.n,
               class_id=args.class_id, guidance=args.guidance, eta=args.eta, seed=args.seed,
               ema=args.ema, clip=args.clip, nrow=args.nrow, gif=args.gif, gif_frames=args.gif_frames,
               device=resolve_device(args.device))
    return 0


def cmd_demo(args) -> int:
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
    _add_train(sub)
    _add_sample(sub)
    _add_demo(sub)
    return parser


def _add_train(sub) -> None:
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


def _add_sample(sub) -> None:
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


def _add_demo(sub) -> None:
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
