"""`python -m ddpm train | sample | demo`: the command line. It parses arguments and calls
ddpm.runs (train, sample) and ddpm.demo; what a run does is decided there.

    python -m ddpm train --data digits --config digits8 --steps 2000 --out runs/digits
    python -m ddpm sample --checkpoint runs/digits --sampler ddim --steps 50 --n 64 \
        --class 3 --guidance 2 --out grid.png --gif reverse.gif --ema
    python -m ddpm demo                        # the README's main job (see ddpm.demo)
    python -m ddpm train-classifier --data digits --out runs/clf --steps 2000   # classifier guidance
    python -m ddpm sample --checkpoint runs/digits --classifier runs/clf --classifier-scale 2 --class all
    torchrun --nproc_per_node 2 -m ddpm train ...   # DDP; gloo with --device cpu

`train` resumes from --out when it holds a checkpoint (same model, training settings and data;
only --steps may grow: ddpm.runs.check_resume). One rule for errors: a user error (a path, a
permission, a file format, an option value, a checkpoint that does not fit its settings) exits
with status 2 and one line naming the argument or file, before any training or sampling starts
(a failed save during training, e.g. a full disk, is also one line); a bug in the library shows
its traceback. Every option is checked where it is parsed, its range in `--help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch

import reference

from .checkpoint import CheckpointError
from .data import DataError
from .demo import DemoSettings, run_demo
from .runs import CONFIG_PRESETS, UsageError, sample_run, train_run
from .runs_eval import eval_run, train_features_run
from .runs_latent import AUTOENCODER_PRESETS, train_autoencoder_run, train_latent_run
from .runs_classifier import train_classifier_run
from .samplers import SAMPLERS
from .streaming import BAD_IMAGE_POLICIES, RESIZE_POLICIES
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


# ----------------------------------------------------------------------------- option types

def _integer(lo: int, hi: int | None = None):
    """An argparse type: an int in [lo, hi] (hi None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value
    return parse


def _real(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = True):
    """An argparse type: a finite float in the interval from lo to hi (open or closed ends)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        if not (math.isfinite(value) and above and below):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text!r}")
        return value
    return parse


def _class_spec(text: str) -> str:
    if text != "all" and not (text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be a class id K >= 0 or 'all', got {text!r}")
    return text


COUNT = _integer(1)          # steps, sizes: at least one
COUNT0 = _integer(0)         # may be zero (warmup, samples)
SEED = _integer(0, 2**64 - 1)  # the noise stream's key range (reference.check_seed)
POSITIVE = _real(0.0, lo_open=True)
NONNEG = _real(0.0)
RATE = _real(0.0, 1.0)       # [0, 1): decays and dropout rates
GUIDANCE = _real(0.0)        # w >= 0; a negative w (steering away from the class) is refused


def _training_args(args) -> dict:
    """The TrainConfig fields given on the command line (left out: saved or default)."""
    given = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "warmup_steps": args.warmup, "lr_schedule": args.lr_schedule,
        "weight_decay": args.weight_decay, "grad_clip": args.grad_clip,
        "ema_decay": args.ema_decay, "prediction": args.prediction,
        "min_snr_gamma": args.min_snr_gamma, "label_dropout": args.label_dropout, "seed": args.seed,
        "variance": args.variance, "loss": args.loss, "vlb_weight": args.vlb_weight,
        "timestep_sampling": args.timestep_sampling,
        # issue 17: CPU/GPU speed options (flags: given means True)
        "channels_last": True if getattr(args, "channels_last", False) else None,
        "compile": True if getattr(args, "compile", False) else None,
        "mixed_precision": getattr(args, "mixed_precision", None),
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.no_grad_clip:  # None is "not given" above, so the explicit "no clipping" comes last
        given["grad_clip"] = None
    return given


def cmd_train(args) -> int:
    if args.latent is not None and args.stream:  # the latent run encodes its data once (--latent-cache)
        raise UsageError("--stream applies to pixel-space training, not with --latent")
    if args.latent is not None:  # latent diffusion (ddpm.runs_latent)
        train_latent_run(args.out, latent=args.latent, latent_cache=args.latent_cache, data=args.data,
                         preset=args.config, unconditional=args.unconditional, schedule=args.schedule,
                         timesteps=args.timesteps, training=_training_args(args),
                         checkpoint_every=args.checkpoint_every, samples=args.samples, guidance=args.guidance,
                         sample_steps=args.sample_steps, device=resolve_device(args.device),
                         progress=not args.no_progress, allow_data_change=args.allow_data_change,
                         hflip=None if args.hflip is None else args.hflip == "on")
        return 0
    if args.latent_cache is not None:
        raise UsageError("--latent-cache needs --latent AE_CHECKPOINT")
    score = {"objective": args.objective,  # the score view (ddpm.runs_score)
             "levels": {"sigma_max": args.sigma_max, "sigma_min": args.sigma_min, "levels": args.levels}}
    train_run(args.out, data=args.data, preset=args.config, unconditional=args.unconditional,
              hflip=None if args.hflip is None else args.hflip == "on", schedule=args.schedule,
              timesteps=args.timesteps, training=_training_args(args),
              checkpoint_every=args.checkpoint_every, samples=args.samples, guidance=args.guidance,
              sample_steps=args.sample_steps, device=resolve_device(args.device),
              progress=not args.no_progress, allow_data_change=args.allow_data_change, **score,
              arch=args.arch, stream=_stream_args(args))
    return 0


def _stream_args(args) -> dict:
    """--stream and its flags (ddpm.runs_streaming.stream_options decides what they mean)."""
    return {"stream": args.stream, "workers": args.workers, "prefetch": args.prefetch, "resize": args.resize,
            "crop_scale": args.crop_scale, "cache": args.cache, "bad_images": args.bad_images}


def cmd_sample(args) -> int:
    sample_run(args.checkpoint, args.out, sampler=args.sampler, steps=args.steps, n=args.n,
               class_id=args.class_id, guidance=args.guidance, eta=args.eta, seed=args.seed,
               ema=args.ema, clip=args.clip, nrow=args.nrow, gif=args.gif, gif_frames=args.gif_frames,
               device=resolve_device(args.device), classifier=args.classifier,
               classifier_scale=args.classifier_scale, step_size=args.step_size,
               steps_per_level=args.steps_per_level, snr=args.snr, corrector_steps=args.corrector_steps,
               predictor=args.predictor, level=args.level, denoise=False if args.no_denoise else None,
               snr_norms=args.snr_norms)
    return 0


def cmd_train_classifier(args) -> int:
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup,
             "weight_decay": args.weight_decay, "grad_clip": args.grad_clip, "ema_decay": args.ema_decay,
             "seed": args.seed}
    train_classifier_run(args.out, data=args.data, preset=args.config, schedule=args.schedule,
                         timesteps=args.timesteps, training={k: v for k, v in given.items() if v is not None},
                         holdout=args.holdout, checkpoint_every=args.checkpoint_every,
                         from_denoiser=args.from_denoiser, device=resolve_device(args.device),
                         progress=not args.no_progress, allow_data_change=args.allow_data_change)
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

class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: what; see --help`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ddpm", description="Denoising diffusion models "
                     "(Ho et al. 2020): train, sample, and the digits demo.")
    sub = parser.add_subparsers(dest="command", required=True)  # usage lists every command
    _add_train(sub)
    _add_sample(sub)
    _add_demo(sub)
    _add_train_features(sub)
    _add_eval(sub)
    _add_train_autoencoder(sub)
    _add_train_classifier(sub)
    return parser


def _add_train(sub) -> None:
    tr = sub.add_parser("train", help="train (or resume) a model; writes checkpoints and pictures to --out")
    tr.add_argument("--data", default="digits", help="'digits' (default), an image folder, .npy/.npz, or IDX file/folder")
    tr.add_argument("--config", choices=CONFIG_PRESETS, default=None, help="UNet preset (default digits8)")
    tr.add_argument("--arch", choices=("unet", "dit"), default=None,
                    help="model family (default unet); dit's presets: dit-digits (default), dit-mnist, dit-xl-2, ...")
    tr.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    tr.add_argument("--steps", type=COUNT, default=None, help="train until this step, >= 1 (default 10000)")
    tr.add_argument("--batch-size", type=COUNT, default=None, help="global batch, >= 1 (split over processes)")
    tr.add_argument("--lr", type=POSITIVE, default=None, help="learning rate, > 0")
    tr.add_argument("--warmup", type=COUNT0, default=None, help="linear LR warmup steps, >= 0")
    tr.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None)
    tr.add_argument("--weight-decay", type=NONNEG, default=None, help=">= 0")
    tr.add_argument("--grad-clip", type=POSITIVE, default=None, help="max gradient norm, > 0 (default 1.0)")
    tr.add_argument("--no-grad-clip", action="store_true")
    tr.add_argument("--ema-decay", type=RATE, default=None, help="in [0, 1)")
    tr.add_argument("--channels-last", action="store_true", help="run the model in channels_last")
    tr.add_argument("--compile", action="store_true",
                    help="torch.compile the model (inductor; on the CPU needs a C++ compiler)")
    tr.add_argument("--mixed-precision", choices=("auto", "bf16", "no"), default=None,
                    help="bf16 autocast: auto = on CUDA; bf16 also on CPUs with native bf16 (detected)")
    tr.add_argument("--prediction", choices=reference.PREDICTIONS, default=None)
    tr.add_argument("--min-snr-gamma", type=POSITIVE, default=None, help="> 0")
    tr.add_argument("--variance", choices=reference.VARIANCE_KINDS, default=None,
                    help="learned: the UNet outputs 2 x channels, the second half v (Improved DDPM); "
                         "default fixed_small")
    tr.add_argument("--loss", choices=reference.LOSSES, default=None,
                    help="simple (default), hybrid (L_simple + vlb-weight L_vlb; --variance learned), vlb")
    tr.add_argument("--vlb-weight", type=NONNEG, default=None,
                    help="lambda of the hybrid loss, >= 0 (default 0.001)")
    tr.add_argument("--timestep-sampling", choices=("uniform", "importance"), default=None,
                    help="importance: t sampled by the L_t history (Improved DDPM Sec. 3.3; --loss vlb)")
    tr.add_argument("--label-dropout", type=RATE, default=None, help="null-class rate for guidance, in [0, 1)")
    tr.add_argument("--unconditional", action="store_true", help="ignore the data's labels")
    tr.add_argument("--hflip", choices=("on", "off"), default=None, help="random horizontal flips (default: per data)")
    tr.add_argument("--schedule", choices=reference.SCHEDULE_KINDS, default=None, help="beta schedule (default linear)")
    tr.add_argument("--timesteps", type=COUNT, default=None, help="T, >= 1 (default 1000)")
    tr.add_argument("--seed", type=SEED, default=None, help="in [0, 2^64)")
    tr.add_argument("--checkpoint-every", type=COUNT, default=1000, help="steps between checkpoints, >= 1")
    tr.add_argument("--samples", type=COUNT0, default=8, help="samples per class (or total) in samples.png, "
                    ">= 0; 0: none")
    tr.add_argument("--guidance", type=GUIDANCE, default=2.0, help="guidance of the final samples.png, >= 0")
    tr.add_argument("--sample-steps", type=COUNT, default=50, help="DDIM steps of the final samples.png, >= 1")
    tr.add_argument("--allow-data-change", action="store_true", help="resume the run in --out on data "
                    "other than it was trained on (refused otherwise)")
    tr.add_argument("--latent", default=None, metavar="AE_CHECKPOINT",
                    help="latent diffusion: train on the latents of this autoencoder (a train-autoencoder "
                         "run or a diffusers AutoencoderKL folder); default UNet: reference.latent_unet_config")
    tr.add_argument("--latent-cache", default=None, help="safetensors file of the encoded latents "
                    "(default RUN/latents.safetensors; reused when the weights and data match)")
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    tr.add_argument("--no-progress", action="store_true")
    # the score view (issue 13): a noise-conditional score model on VE levels, DSM with sigma^2
    tr.add_argument("--objective", choices=("diffusion", "score"), default=None,
                    help="score: a VE score model (NCSN) on geometric levels; default diffusion (DDPM)")
    tr.add_argument("--sigma-max", type=POSITIVE, default=None, help="largest VE level, > 0 (default 10)")
    tr.add_argument("--sigma-min", type=POSITIVE, default=None, help="smallest VE level, > 0 (default 0.01)")
    tr.add_argument("--levels", type=_integer(2), default=None, help="number of VE levels, >= 2 (default 100)")
    _add_stream(tr)
    tr.set_defaults(func=cmd_train)


def _add_stream(tr) -> None:
    """Streamed data (ddpm.streaming): decode per item in DataLoader workers."""
    tr.add_argument("--stream", action="store_true", help="read and decode the data per item through "
                    "DataLoader workers instead of loading it whole")
    tr.add_argument("--workers", type=COUNT0, default=None, help="DataLoader worker processes, >= 0 (default 2)")
    tr.add_argument("--prefetch", type=COUNT, default=None, help="batches each worker keeps ready, >= 1 (default 2)")
    tr.add_argument("--resize", choices=RESIZE_POLICIES, default=None,
                    help="none (default; one image size), center (centre crop + Lanczos), random (random crop + Lanczos)")
    tr.add_argument("--crop-scale", type=_real(0.0, 1.0, lo_open=True, hi_open=False), default=None,
                    help="smallest area fraction of a random crop, in (0, 1] (default 0.64)")
    tr.add_argument("--cache", action="store_true", help="decode once into RUN/data-cache/images.npy "
                    "(uint8, memory-mapped) and read that")
    tr.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES, default=None,
                    help="stop (default): an unreadable image ends the run; skip: report it and go on")


def _add_sample(sub) -> None:
    sa = sub.add_parser("sample", help="draw a grid (and a GIF of the reverse process) from a checkpoint")
    sa.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint directory")
    sa.add_argument("--sampler", choices=reference.ALL_SAMPLERS, default="ddim")  # + the score samplers
    sa.add_argument("--steps", type=COUNT, default=None,
                    help="sampler steps in [1, T] (default: 50 for ddim, 20 for dpm_solver++, T for ddpm)")
    sa.add_argument("--n", "--num-samples", dest="n", type=COUNT, default=64,
                    help="number of samples, >= 1 (per class with --class all); under torchrun spell it "
                         "--num-samples (torchrun's parser takes --n for its own --nnodes/--nproc...)")
    sa.add_argument("--class", dest="class_id", type=_class_spec, default=None,
                    help="class id K in [0, classes), or 'all' for one row per class")
    sa.add_argument("--guidance", type=GUIDANCE, default=1.0, help="classifier-free guidance scale w >= 0 "
                    "(0: unconditional, 1: conditional, > 1: guided)")
    sa.add_argument("--eta", type=_real(0.0, 1.0, hi_open=False), default=0.0,
                    help="DDIM eta in [0, 1] (0: deterministic)")
    sa.add_argument("--seed", type=SEED, default=0, help="in [0, 2^64)")
    sa.add_argument("--ema", action="store_true", help="use the EMA weights")
    sa.add_argument("--clip", action="store_true", help="clip the predicted x0 to [-1, 1] at every step "
                    "(helps ddpm; hurts ddim, which keeps the model's eps)")
    sa.add_argument("--out", default="samples.png", help="PNG grid path")
    sa.add_argument("--nrow", type=COUNT, default=None, help="images per row, >= 1")
    sa.add_argument("--gif", default=None, help="also write the reverse process as a GIF here")
    sa.add_argument("--gif-frames", type=COUNT, default=50, help="frames of the GIF, >= 1")
    sa.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    sa.add_argument("--classifier", default=None, help="classifier guidance with this noise-aware classifier "
                    "(a run or checkpoint of train-classifier; its EMA weights); needs --class")
    sa.add_argument("--classifier-scale", type=NONNEG, default=1.0, help="classifier guidance scale s >= 0 "
                    "(Dhariwal & Nichol 2021), with --classifier")
    # the score samplers (issue 13; reference.score_sampling_plan)
    sa.add_argument("--step-size", type=POSITIVE, default=None, help="Langevin eps, > 0 (default 2e-5)")
    sa.add_argument("--steps-per-level", type=COUNT, default=None, help="annealed Langevin T, >= 1 (default 100)")
    sa.add_argument("--snr", type=POSITIVE, default=None, help="pc corrector signal-to-noise ratio, > 0 (default 0.16)")
    sa.add_argument("--corrector-steps", type=COUNT0, default=None, help="pc corrector steps per level, >= 0 (default 1)")
    sa.add_argument("--predictor", choices=("reverse_diffusion", "ancestral"), default=None,
                    help="pc predictor (default reverse_diffusion for VE, ancestral for VP)")
    sa.add_argument("--level", type=COUNT0, default=None, help="langevin's noise level t, >= 0 (default 0)")
    sa.add_argument("--no-denoise", action="store_true", help="skip the final noise-free denoising step")
    sa.add_argument("--snr-norms", choices=("sample", "batch"), default=None,
                    help="pc corrector norms: per sample (default, batch invariant) or batch means (Song, diffusers)")
    sa.set_defaults(func=cmd_sample)


def _add_demo(sub) -> None:
    de = sub.add_parser("demo", help="train a class-conditional model on the embedded digits, draw one "
                        "row per class, report a classifier's hit rate")
    de.add_argument("--out", default=None, help="output directory (default runs/demo)")
    de.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")
    de.add_argument("--steps", type=COUNT, default=None, help=">= 1")
    de.add_argument("--batch-size", type=COUNT, default=None, help=">= 1")
    de.add_argument("--guidance", type=GUIDANCE, default=None, help=">= 0")
    de.add_argument("--seed", type=SEED, default=None, help="in [0, 2^64)")
    de.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    de.add_argument("--no-progress", action="store_true")
    de.set_defaults(func=cmd_demo)


def cmd_train_autoencoder(args) -> int:
    training = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                  ("warmup_steps", args.warmup), ("lr_schedule", args.lr_schedule),
                                  ("ema_decay", args.ema_decay), ("grad_clip", args.grad_clip),
                                  ("seed", args.seed)) if v is not None}
    train_autoencoder_run(args.out, data=args.data, preset=args.config,
                          hflip=None if args.hflip is None else args.hflip == "on", training=training,
                          kl_weight=args.kl_weight, checkpoint_every=args.checkpoint_every,
                          device=resolve_device(args.device), progress=not args.no_progress,
                          allow_data_change=args.allow_data_change)
    return 0


def _add_train_autoencoder(sub) -> None:
    ae = sub.add_parser("train-autoencoder", help="train (or resume) the KL autoencoder of latent diffusion")
    ae.add_argument("--data", default="digits", help="as train's --data")
    ae.add_argument("--config", choices=AUTOENCODER_PRESETS, default=None,
                    help="autoencoder preset (default: digits for --data digits, else mnist)")
    ae.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    ae.add_argument("--steps", type=COUNT, default=None, help=">= 1 (default 10000)")
    ae.add_argument("--batch-size", type=COUNT, default=None, help=">= 1")
    ae.add_argument("--lr", type=POSITIVE, default=None, help="> 0")
    ae.add_argument("--warmup", type=COUNT0, default=None, help=">= 0")
    ae.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None)
    ae.add_argument("--ema-decay", type=RATE, default=None, help="in [0, 1)")
    ae.add_argument("--grad-clip", type=POSITIVE, default=None, help="> 0 (default 1.0)")
    ae.add_argument("--kl-weight", type=NONNEG, default=None,
                    help="beta of the KL term, >= 0 (default 1e-6; loss = mean MSE + beta mean_n KL_n)")
    ae.add_argument("--hflip", choices=("on", "off"), default=None)
    ae.add_argument("--seed", type=SEED, default=None, help="in [0, 2^64)")
    ae.add_argument("--checkpoint-every", type=COUNT, default=1000, help=">= 1")
    ae.add_argument("--allow-data-change", action="store_true")
    ae.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    ae.add_argument("--no-progress", action="store_true")
    ae.set_defaults(func=cmd_train_autoencoder)


def _add_train_classifier(sub) -> None:
    tc = sub.add_parser("train-classifier", help="train (or resume) a noise-aware classifier p(y | x_t, t) "
                        "for classifier guidance; writes checkpoints and accuracy_vs_t.png to --out")
    tc.add_argument("--data", default="digits", help="labelled data: 'digits' (default), an image folder, "
                    ".npy/.npz with labels, or IDX")
    tc.add_argument("--config", choices=CONFIG_PRESETS, default=None, help="UNet preset whose down path and "
                    "middle block the classifier uses (default digits8)")
    tc.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    tc.add_argument("--steps", type=COUNT, default=None, help="train until this step, >= 1 (default 10000)")
    tc.add_argument("--batch-size", type=COUNT, default=None, help="global batch, >= 1")
    tc.add_argument("--lr", type=POSITIVE, default=None, help="learning rate, > 0")
    tc.add_argument("--warmup", type=COUNT0, default=None, help="linear LR warmup steps, >= 0")
    tc.add_argument("--weight-decay", type=NONNEG, default=None, help=">= 0")
    tc.add_argument("--grad-clip", type=POSITIVE, default=None, help="max gradient norm, > 0 (default 1.0)")
    tc.add_argument("--ema-decay", type=RATE, default=None, help="in [0, 1)")
    tc.add_argument("--schedule", choices=reference.SCHEDULE_KINDS, default=None, help="beta schedule (default linear)")
    tc.add_argument("--timesteps", type=COUNT, default=None, help="T, >= 1 (default 1000); the denoiser's")
    tc.add_argument("--seed", type=SEED, default=None, help="in [0, 2^64)")
    tc.add_argument("--holdout", type=_real(0.0, 1.0, lo_open=True), default=0.1,
                    help="fraction of the data held out for accuracy_vs_t, in (0, 1)")
    tc.add_argument("--from-denoiser", default=None, help="start the encoder from this trained denoiser "
                    "(a train run or checkpoint of the same --config layout)")
    tc.add_argument("--checkpoint-every", type=COUNT, default=1000, help="steps between checkpoints, >= 1")
    tc.add_argument("--allow-data-change", action="store_true")
    tc.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    tc.add_argument("--no-progress", action="store_true")
    tc.set_defaults(func=cmd_train_classifier)


def cmd_train_features(args) -> int:
    train_features_run(args.data, args.out)
    return 0


def _add_train_features(sub) -> None:
    tf = sub.add_parser("train-features", help="train the in-project feature network (FD-<data>, hit "
                        "rate) of digits or mnist; prints its held-out accuracy")
    tf.add_argument("--data", choices=reference.FEATURE_NET_DATA, required=True)
    tf.add_argument("--out", required=True, help="weights file (.safetensors; metadata also in OUT.json)")
    tf.set_defaults(func=cmd_train_features)


def cmd_eval(args) -> int:
    eval_run(args.checkpoint, args.samples, data=args.data, features=args.features, out=args.out,
             sampler=args.sampler, steps=args.steps, n=args.n, class_id=args.class_id, guidance=args.guidance,
             eta=args.eta, seed=args.seed, ema=args.ema, clip=args.clip, bpd=args.bpd, k=args.k,
             device=resolve_device(args.device), inception=args.inception)
    return 0


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="sample quality of a checkpoint or of samples on disk, each figure "
                        "beside its real-data floor; writes OUT/eval.json and OUT/report.png")
    ev.add_argument("--checkpoint", default=None, help="a run or checkpoint directory to sample from")
    ev.add_argument("--samples", default=None, help="or: a folder of PNGs / an .npz ('images' in [-1, 1] "
                    "or uint8, optional 'labels')")
    ev.add_argument("--data", default="digits", help="reference data: digits (default), mnist, or a "
                    "folder/.npz/IDX path (then --features)")
    ev.add_argument("--features", default=None, help="feature-net weights from train-features (default: "
                    "the cached net of --data, trained on first use)")
    ev.add_argument("--out", default="eval", help="output directory (default eval)")
    ev.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    ev.add_argument("--steps", type=COUNT, default=None, help="sampler steps in [1, T] (default: the sampler's)")
    ev.add_argument("--n", "--num-samples", dest="n", type=COUNT, default=1000,
                    help="samples to draw, >= 1 (balanced over classes; per class with --class all)")
    ev.add_argument("--class", dest="class_id", type=_class_spec, default=None,
                    help="class id K, or 'all' (default: balanced over the model's classes)")
    ev.add_argument("--guidance", type=GUIDANCE, default=1.0, help="classifier-free guidance w >= 0")
    ev.add_argument("--eta", type=_real(0.0, 1.0, hi_open=False), default=0.0, help="DDIM eta in [0, 1]")
    ev.add_argument("--seed", type=SEED, default=0, help="sampling noise and the real halves' draw")
    ev.add_argument("--ema", action="store_true", help="use the EMA weights")
    ev.add_argument("--clip", action="store_true", help="clip the predicted x0 to [-1, 1] at every step")
    ev.add_argument("--bpd", type=COUNT0, default=64, help="real images for bits/dim of a learned-variance "
                    "model, >= 0 (0: skip)")
    ev.add_argument("--k", type=COUNT, default=3, help="neighbours of precision/recall, density/coverage")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    ev.add_argument("--inception", default=None, metavar="PATH", help="also the standard FID, with "
                    "pytorch-fid's pt_inception-2015-12-05-*.pth at PATH (never downloaded)")
    ev.set_defaults(func=cmd_eval)


# user errors: one line, status 2. NonFiniteLossError is not one (the run diverged, status 1)
USER_ERRORS = (UsageError, CheckpointError, DataError)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)  # a bad option: one line, SystemExit(2)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"{parser.prog} {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"{parser.prog} {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
