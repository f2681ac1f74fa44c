"""Runs: train into a run directory (resuming it), sample from a checkpoint, and the pieces the
digits demo shares with them. `python -m ddpm train | sample` (ddpm.cli only parses arguments
and calls `train_run` / `sample_run`) and `python -m ddpm demo` (ddpm.demo) go through here.

The resume policy is decided in `check_resume` and nowhere else: a run directory that holds a
checkpoint is continued, never overwritten. The UNet config, the schedule and every training
setting must be the saved ones; only `steps` may change, and not to below the saved step. A
setting the caller leaves out is the saved one. A refused resume raises `CheckpointError` (a
ValueError), whoever asks: the CLI (exit status 2, one line), the demo, or `Trainer.load`, which
checks the model config and schedule with the same `Checkpoint.check_compatible`.

`UsageError` (also a ValueError) is an argument that does not fit the checkpoint, model or data
it meets; its message names the argument by its CLI flag, because these functions take the CLI's
arguments one for one (the CLI exits with status 2 on it, like argparse's own errors).

Every place a run writes (the run directory, sample files, the GIF) is checked for writability
before any data is loaded or any step is taken (`check_output_dir`, `check_output_file`), and
the data is fingerprinted (`ImageDataset.fingerprint`): a run resumed on other data is refused
unless the caller allows the change (`--allow-data-change`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

import reference

from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, remove_leftovers
from .classifier_io import check_classifier_fits, load_classifier
from .data import ImageDataset
from .distributed import (
    DistributedContext,
    all_gather_rows,
    barrier,
    init_distributed,
    sample_distributed,
    shutdown_distributed,
    split_counts,
)
from .latent import check_latent_fit, decode_latent_samples, run_autoencoder
from .preflight import UsageError, check_data_fits, check_output_dir, check_output_file, data_changes
from .runs_score import check_score_sampling, sampler_for, score_schedule
from .runs_streaming import attach_run_cache, run_data, stream_options
from .train import TrainConfig, Trainer
from .unet import UNet
from .models import DEFAULT_PRESETS, build_model, preset_arch
from .viz import save_gif, save_grid, save_loss_curve

__all__ = [
    "CONFIG_PRESETS",
    "UsageError",
    "model_config",
    "latest_run_checkpoint",
    "open_run",
    "check_resume",
    "new_trainer",
    "resume",
    "train_to",
    "ema_model",
    "load_model",
    "draw",
    "class_labels",
    "save_pictures",
    "save_loss_curve_or_warn",
    "train_run",
    "sample_run",
]

CONFIG_PRESETS = ("digits8", "mnist", "cifar10", "tiny", "mnist_small")
CONFIG_PRESETS = CONFIG_PRESETS + tuple(reference.DIT_PRESETS)  # DiT (issue 15): dit-digits, dit-xl-2, ...


def _echo(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_config(preset: str, num_classes: int | None) -> reference.UNetConfig:
    """The UNetConfig preset `preset` (digits8, mnist, cifar10, tiny) with `num_classes`;
    a DiT preset (reference.DIT_PRESETS: dit-digits, dit-mnist, dit-xl-2, ...) gives a DiTConfig."""
    if preset in reference.DIT_PRESETS:
        return reference.DIT_PRESETS[preset](num_classes=num_classes)
    if preset == "digits8":
        return reference.UNetConfig.digits8(num_classes=num_classes)
    if preset == "mnist":
        return reference.UNetConfig.mnist(num_classes=num_classes)
    if preset == "cifar10":
        return reference.UNetConfig.ddpm_cifar10(num_classes=num_classes)
    if preset == "tiny":
        return reference.UNetConfig.tiny(num_classes=num_classes)
    if preset == "mnist_small":
        return reference.UNetConfig.mnist_small(num_classes=num_classes)
    raise UsageError(f"--config must be one of {CONFIG_PRESETS}, got {preset!r}")


# ----------------------------------------------------------------------------- resuming

def latest_run_checkpoint(run_dir) -> Checkpoint | None:
    """The newest complete checkpoint under `run_dir` with its trainer state, or None."""
    path = latest_checkpoint(run_dir)
    return None if path is None else load_checkpoint(path, map_location="cpu")


def open_run(run_dir, ctx: DistributedContext, files: tuple[str, ...] = ()) -> Checkpoint | None:
    """Before a run trains into `run_dir`: check that it can be written (`check_output_dir`),
    remove what interrupted saves left there (rank 0, the others wait), and load its newest
    complete checkpoint (None for a new run)."""
    check_output_dir(run_dir, "--out", files)
    if ctx.is_main:
        for path in remove_leftovers(run_dir):
            _warn(f"removed {path}, left by an interrupted save")
    barrier(ctx)
    return latest_run_checkpoint(run_dir)


def _run_dir(ckpt: Checkpoint) -> Path:
    # a checkpoint saved by a Trainer sits at RUN_DIR/checkpoints/step_N: name the run, which
    # is what the user passed as --out
    return ckpt.path.parent.parent if ckpt.path.parent.name == "checkpoints" else ckpt.path


# TrainConfig fields that change how a step runs, not what it computes (the same math to float32
# rounding): a run may continue with others, e.g. the demo's channels_last on a CPU after a GPU
SPEED_OPTIONS = ("channels_last", "compile")


def check_resume(ckpt: Checkpoint, *, unet_config: reference.UNetConfig | None = None,
                 schedule: reference.Schedule | None = None, training: dict | None = None,
                 label: str | None = None, data: ImageDataset | None = None,
                 allow_data_change: bool = False) -> tuple[reference.UNetConfig, reference.Schedule, TrainConfig]:
    """The resume policy (see the module docstring): may the run saved in `ckpt` continue with
    these settings? Returns the continued run's (unet_config, schedule, TrainConfig).

    unet_config, schedule: None takes the saved one, anything else must equal it. training:
    the TrainConfig fields asked for; a field left out takes the saved value, every field but
    `steps` and the speed options (SPEED_OPTIONS) must equal the saved one, and `steps` may not lie
    behind the checkpoint. label: the kind of run, for the message ("demo"). data: the dataset the run would continue on; its
    fingerprint must be the saved one unless allow_data_change. Raises CheckpointError naming
    what differs.
    """
    ckpt.check_compatible(unet_config or ckpt.unet_config, schedule)
    saved = dict(ckpt.config.get("training", {}))
    training = dict(training or {})
    changed = {k: (saved.get(k), v) for k, v in training.items()
               if k != "steps" and k not in SPEED_OPTIONS and saved.get(k) != v}
    run = _run_dir(ckpt)
    if changed:
        kind = f"{label} checkpoint" if label else "checkpoint"
        raise CheckpointError(
            f"{run} holds a {kind} with other settings ({', '.join(changed)}): "
            + ", ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in changed.items())
            + f"; only steps and {'/'.join(SPEED_OPTIONS)} may change when resuming: pass another --out (or delete {run}) "
              f"to start a new run")
    steps = training.get("steps", saved.get("steps"))
    if steps is not None and steps < ckpt.step:
        raise CheckpointError(f"steps={steps} lies behind {run}, which holds a checkpoint at step "
                              f"{ckpt.step}; pass steps >= {ckpt.step} to continue it")
    changes = [] if data is None or allow_data_change else data_changes(ckpt.config, data.fingerprint())
    if changes:
        source = (ckpt.config.get("data") or {}).get("source", "?")
        raise CheckpointError(f"{run} was trained on other data ({source}) than {data.source}: "
                              + "; ".join(changes) + ". Pass --allow-data-change to continue it on "
                              "this data, or another --out to start a new run")
    speed = {k: training[k] for k in SPEED_OPTIONS if k in training}
    resumed = {**saved, **speed, **({} if steps is None else {"steps": steps})}
    return ckpt.unet_config, ckpt.schedule, TrainConfig.from_dict(resumed)


def new_trainer(unet_config: reference.UNetConfig, schedule: reference.Schedule,
                train_config: TrainConfig, data: ImageDataset, ctx: DistributedContext) -> Trainer:
    """A Trainer of a fresh UNet; the global torch seed is set first so that the initial weights
    are a function of the training seed."""
    torch.manual_seed(train_config.seed)
    return Trainer(build_model(unet_config), schedule, train_config, data, ctx=ctx)


def resume(trainer: Trainer, ckpt: Checkpoint | None, echo=_echo) -> bool:
    """Load `ckpt` (already passed by `check_resume`) into `trainer`; False when there is none."""
    if ckpt is None:
        return False
    sampler = ckpt.trainer_state["sampler"]
    if sampler["n"] != len(trainer.dataset):  # a data change check_resume allowed: the count of
        # items drawn so far carries on, over the new data's epochs
        ckpt.trainer_state["sampler"] = {**sampler, "n": len(trainer.dataset)}
    trainer.load(ckpt)
    if trainer.ctx.is_main:
        echo(f"resuming from {ckpt.path} at step {trainer.step}")
    return True


def train_to(trainer: Trainer, run_dir, *, checkpoint_every: int | None = None,
             keep_last: int | None = 3, progress: bool = True) -> float:
    """Train until the config's `steps`, checkpointing into run_dir; returns the seconds spent.
    A run already there is left as it is (not saved again)."""
    start = time.perf_counter()
    if trainer.step < trainer.config.steps:
        trainer.fit(run_dir=run_dir, checkpoint_every=checkpoint_every, keep_last=keep_last,
                    progress=progress)
    return time.perf_counter() - start


def save_loss_curve_or_warn(path, history: dict, *, title: str = "training loss", warn=_warn) -> None:
    """The loss curve, or a warning when matplotlib is missing (the run itself succeeded)."""
    try:
        save_loss_curve(path, history, title=title)
    except RuntimeError as err:
        warn(f"warning: {err}")


# ----------------------------------------------------------------------------- sampling

def ema_model(trainer: Trainer) -> UNet:
    """A UNet in eval mode on the trainer's device holding the trainer's EMA weights."""
    model = build_model(trainer.unet_config).to(trainer.ctx.device).eval()
    trainer.ema.copy_to(model)
    return model


def load_model(checkpoint_path, *, ema: bool, device: torch.device):
    """(UNet in eval mode on device, its reference schedule, the Checkpoint) from a checkpoint."""
    ckpt = load_checkpoint(checkpoint_path, map_location="cpu", trainer_state=False)
    if ckpt.model_kind != "unet":
        raise UsageError(f"--checkpoint {checkpoint_path} holds a {ckpt.model_kind}, not a denoiser "
                         "(a classifier goes to --classifier)")
    model = build_model(ckpt.unet_config)
    model.load_state_dict(ckpt.state_dict(ema=ema))
    return model.to(device).eval(), ckpt.schedule, ckpt


def _gif_steps(num_steps: int | None, gif_frames: int) -> set[int]:
    """At most gif_frames sampler steps, evenly spread, always the last one."""
    if num_steps is None:
        raise ValueError("draw: num_steps is required with gif_frames > 0")
    m = min(gif_frames, num_steps)
    return {num_steps - 1} if m == 1 else {round(k * (num_steps - 1) / (m - 1)) for k in range(m)}


def _sampling_variance(cfg: reference.UNetConfig) -> str:
    """"learned" for a model with a variance half (out_channels = 2 in_channels), else beta_tilde."""
    return "learned" if cfg.out_channels == 2 * cfg.in_channels else "fixed_small"


def draw(model, schedule, y: torch.Tensor | None, n: int, ctx: DistributedContext, *,
         sampler: str = "ddim", num_steps: int | None = 50, guidance_scale: float = 1.0,
         eta: float = 0.0, seed: int = 0, gif_frames: int = 0, clip=None, classifier=None,
         classifier_scale: float = 1.0, **score_options):
    """n samples (N, C, H, W) on every rank, split over ranks by global index; with gif_frames
    > 0 also up to that many snapshots of x_t along the reverse process (list of tensors).

    clip=(lo, hi) clips the predicted x0 at every step. Off by default: with DDIM the step keeps
    the model's own eps (diffusers' convention), so clipping x0 makes x0 and eps disagree at
    the noisy steps; on the digits demo it costs ~25 points of hit rate (0.98 -> 0.71)."""
    cfg = model.config
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    frames: list[torch.Tensor] = []
    plan_steps = num_steps  # the score samplers take more steps than levels: count the plan's
    if sampler in reference.SCORE_SAMPLERS:
        plan_steps = reference.sampling_plan(schedule, sampler, num_steps, **score_options).num_steps
    keep = _gif_steps(plan_steps, gif_frames) if gif_frames > 0 else set()

    def snapshot(step, t, x):  # this rank's block of x_t after sampler step `step`
        if step in keep:
            frames.append(x.detach().clone())

    callback = snapshot if keep else None
    with torch.no_grad():
        images = sample_distributed(model, shape, schedule, ctx, y=y, sampler=sampler,
                                    num_steps=num_steps, guidance_scale=guidance_scale, eta=eta,
                                    seed=seed, clip=clip, callback=callback,
                                    variance=_sampling_variance(cfg), **score_options, **(
                                        {} if classifier is None else
                                        {"classifier": classifier, "classifier_scale": classifier_scale}))
    counts = split_counts(n, ctx.world_size)
    if gif_frames > 0 and counts[ctx.rank] == 0:
        # a rank without samples must still join one all-gather per frame the others send
        frames = [images.new_zeros((0,) + shape[1:])] * len(keep)
    return images, [all_gather_rows(f, counts, ctx) for f in frames]


def class_labels(spec: str | None, n: int,
                 num_classes: int | None) -> tuple[torch.Tensor | None, int, int | None]:
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
    try:  # the reference's class-range check; the message speaks the CLI's terms
        reference.check_class_labels(k, num_classes, "--class")
    except ValueError:
        raise UsageError(f"--class {k} is out of range: the model has classes 0..{num_classes - 1}") from None
    return torch.full((n,), k, dtype=torch.int64), n, None


def save_pictures(out_png, images, frames, nrow, gif_path=None) -> list[Path]:
    """The grid PNG, and the GIF of `frames` when gif_path is given; returns the paths written."""
    written = [save_grid(out_png, images.cpu(), nrow)]
    if gif_path is not None and frames:
        written.append(save_gif(gif_path, [f.cpu() for f in frames], nrow))
    return written


# ----------------------------------------------------------------------------- train

def _with_variance(config: reference.UNetConfig, training: dict) -> reference.UNetConfig:
    """A learned variance (Improved DDPM) doubles the UNet's output channels: eps, then v."""
    if training.get("variance") != "learned":
        return config
    if isinstance(config, reference.DiTConfig):  # DiT's learn_sigma
        return reference.DiTConfig.from_dict({**config.to_dict(), "learn_sigma": True})
    return reference.UNetConfig.from_dict({**config.to_dict(), "out_channels": 2 * config.in_channels})


def _resolve_run(ckpt: Checkpoint | None, data: ImageDataset, *, preset, unconditional, schedule,
                 timesteps, training: dict, allow_data_change: bool = False, ve_schedule=None):
    """(unet_config, schedule, TrainConfig) of a new run, or of the saved one through the
    resume policy; the settings asked for are None where not given. ve_schedule: the levels of
    a score model (`--objective score`, ddpm.runs_score), instead of a VP schedule."""
    if ve_schedule is not None:
        return _resolve_score_run(ckpt, data, preset=preset, unconditional=unconditional,
                                  training=training, allow_data_change=allow_data_change,
                                  ve_schedule=ve_schedule)
    num_classes = None if unconditional else data.num_classes
    if ckpt is None:
        try:  # options that do not go together (e.g. --loss hybrid without --variance learned)
            train_config = TrainConfig(**training)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return (_with_variance(model_config(preset or "digits8", num_classes), training),
                reference.make_schedule(schedule or "linear", 1000 if timesteps is None else timesteps),
                train_config)
    wanted = None
    if preset is not None:
        wanted = _with_variance(model_config(preset, num_classes), training)
    elif unconditional:
        wanted = type(ckpt.unet_config).from_dict({**ckpt.unet_config.to_dict(), "num_classes": None})
    wanted_schedule = None
    if schedule is not None or timesteps is not None:
        wanted_schedule = reference.make_schedule(schedule or ckpt.schedule.kind,
                                                  ckpt.schedule.T if timesteps is None else timesteps)
    return check_resume(ckpt, unet_config=wanted, schedule=wanted_schedule, training=training, data=data,
                        allow_data_change=allow_data_change)


def _resolve_score_run(ckpt, data, *, preset, unconditional, training, allow_data_change, ve_schedule):
    """_resolve_run for a score model: the VE levels in place of the VP schedule."""
    num_classes = None if unconditional else data.num_classes
    if ckpt is None:
        try:
            train_config = TrainConfig(**training)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return model_config(preset or "digits8", num_classes), ve_schedule, train_config
    wanted = None if preset is None else model_config(preset, num_classes)
    return check_resume(ckpt, unet_config=wanted, schedule=ve_schedule, training=training, data=data,
                        allow_data_change=allow_data_change)


def _preset_for_arch(arch: str | None, preset: str | None, ckpt: Checkpoint | None) -> str | None:
    """--arch (unet | dit) picks the default preset of a new run and must agree with --config and
    with a resumed run's model."""
    if arch is None:
        return preset
    if arch not in DEFAULT_PRESETS:
        raise UsageError(f"--arch must be one of {tuple(DEFAULT_PRESETS)}, got {arch!r}")
    if preset is not None and preset_arch(preset) != arch:
        raise UsageError(f"--config {preset} is a {preset_arch(preset)} preset, not one of --arch {arch}")
    if ckpt is not None:
        saved = reference.arch_of(ckpt.unet_config)
        if saved != arch:
            raise UsageError(f"--arch {arch}: the run in {_run_dir(ckpt)} trains a {saved} model")
        return preset
    return preset or DEFAULT_PRESETS[arch]


def _final_samples(trainer: Trainer, run_dir: Path, samples: int, guidance: float, sample_steps: int) -> None:
    """samples.png: `samples` per class (one row each) or in total, from the EMA weights."""
    config, schedule = trainer.unet_config, trainer.schedule
    y, n, nrow = class_labels("all" if config.num_classes else None, samples, config.num_classes)
    images, _ = draw(ema_model(trainer), schedule, y, n, trainer.ctx,
                     num_steps=min(sample_steps, schedule.T), sampler=sampler_for(schedule, "ddim"),
                     guidance_scale=guidance if y is not None else 1.0)
    if trainer.ctx.is_main:
        save_pictures(run_dir / "samples.png", images, [], nrow)


def train_run(out, *, data: str = "digits", preset: str | None = None, unconditional: bool = False,
              hflip: bool | None = None, schedule: str | None = None, timesteps: int | None = None,
              training: dict | None = None, checkpoint_every: int = 1000, samples: int = 8,
              guidance: float = 2.0, sample_steps: int = 50, device=None, progress: bool = True,
              allow_data_change: bool = False, echo=_echo, objective: str | None = None,
              levels: dict | None = None,
              arch: str | None = None, stream: dict | None = None) -> Trainer:
    """`python -m ddpm train`: train (or resume, see `check_resume`) the run in `out`, then write
    loss_curve.png and samples.png there. Arguments as the CLI's flags; `training` holds the
    TrainConfig fields given (left out: the saved value, or the default for a new run). Every
    user error (paths, data, settings against the checkpoint) is raised before the first step."""
    out = check_output_dir(out, "--out", ("loss_curve.png", "samples.png", "latest"))
    ve = score_schedule(objective, dict(levels or {}), schedule, timesteps)  # --objective score
    ctx = init_distributed(device)
    try:
        ckpt = open_run(out, ctx)
        preset = _preset_for_arch(arch, preset, ckpt)
        # the data is fitted to the model: the saved one unless --config names another
        if ckpt is not None and preset is None:
            shape_from = ckpt.unet_config
        else:
            shape_from = model_config(preset or "digits8", None)
        # streamed (--stream and its flags, ddpm.runs_streaming) or loaded whole
        dataset = run_data(data, shape_from.image_size, shape_from.in_channels, hflip=hflip,
                           options=stream_options(stream, ckpt, out))
        config, sched, train_config = _resolve_run(ckpt, dataset, preset=preset, unconditional=unconditional,
                                                   schedule=schedule, timesteps=timesteps,
                                                   training=dict(training or {}),
                                                   allow_data_change=allow_data_change, ve_schedule=ve)
        check_data_fits(dataset, config)
        attach_run_cache(dataset, ctx, echo)
        trainer = new_trainer(config, sched, train_config, dataset, ctx)
        resume(trainer, ckpt, echo)
        if ctx.is_main:
            n_params = sum(p.numel() for p in trainer.model.parameters())
            name = preset or ("checkpoint" if ckpt is not None else "digits8")
            echo(f"data: {dataset.describe()}\nmodel: {name} {type(trainer.model).__name__}, {n_params:,} parameters, "
                 f"{'class-conditional' if config.num_classes else 'unconditional'}; {sched!r}; "
                 f"device {ctx.device} x {ctx.world_size} process(es)")
        elapsed = train_to(trainer, out, checkpoint_every=checkpoint_every, progress=progress)
        if ctx.is_main:
            save_loss_curve_or_warn(out / "loss_curve.png", trainer.history)
        if samples > 0:
            _final_samples(trainer, out, samples, guidance, sample_steps)
        if ctx.is_main:
            echo(f"trained to step {trainer.step} in {elapsed:.1f} s; wrote {out}")
        return trainer
    finally:
        shutdown_distributed(ctx)


# ----------------------------------------------------------------------------- sample

def _sample_steps(ckpt: Checkpoint, sampler: str, steps: int | None, guidance: float,
                  class_id: str | None, eta: float = 0.0) -> int:
    """Check --guidance/--class/--eta against the model and sampler and --steps against T; the
    steps to take."""
    T = ckpt.schedule.T
    if not guidance >= 0.0:
        raise UsageError(f"--guidance must be >= 0 (0: unconditional, 1: conditional, > 1: guided), "
                         f"got {guidance}")
    if guidance != 1.0 and ckpt.unet_config.num_classes is None:
        raise UsageError(f"--guidance {guidance} needs a class-conditional model; "
                         f"{ckpt.path} is unconditional")
    if eta != 0.0 and sampler != "ddim":
        raise UsageError(f"--eta {eta} applies to the ddim sampler only (got --sampler {sampler})")
    if guidance != 1.0 and class_id is None:
        raise UsageError("--guidance needs --class K (or --class all)")
    if steps is None:  # the sampler's own default, at most T
        steps = reference.default_num_steps(sampler, T)
    if sampler == "langevin":  # Langevin steps at one level, not timesteps: no cap at T
        return steps
    if not 1 <= steps <= T:
        raise UsageError(f"--steps must lie in [1, T={T}], got {steps}")
    return steps


def sample_run(checkpoint, out="samples.png", *, sampler: str = "ddim", steps: int | None = None,
               n: int = 64, class_id: str | None = None, guidance: float = 1.0, eta: float = 0.0,
               seed: int = 0, ema: bool = False, clip: bool = False, nrow: int | None = None,
               gif=None, gif_frames: int = 50, device=None, classifier=None, classifier_scale: float = 1.0,
               echo=_echo, **score_options) -> list[Path]:
    """`python -m ddpm sample`: a grid PNG (and a GIF of the reverse process) from a checkpoint;
    returns the paths written (on rank 0; [] on the others). Arguments as the CLI's flags;
    classifier: a classifier checkpoint (`python -m ddpm train-classifier`) for classifier
    guidance with classifier_scale (Dhariwal & Nichol 2021; its EMA weights)."""
    if n < 1:
        raise UsageError(f"--n must be >= 1, got {n}")
    if gif is not None and gif_frames < 1:
        raise UsageError(f"--gif-frames must be >= 1 with --gif, got {gif_frames}")
    out = check_output_file(out, "--out")
    gif = None if gif is None else check_output_file(gif, "--gif")
    if gif is not None and gif.absolute() == out.absolute():
        raise UsageError(f"--gif and --out name the same file {out}")
    ctx = init_distributed(device)
    try:
        model, schedule, ckpt = load_model(checkpoint, ema=ema, device=ctx.device)
        check_score_sampling(schedule, sampler, steps, score_options)  # the score view's checks
        steps = _sample_steps(ckpt, sampler, steps, guidance, class_id, eta)
        num_classes, guide = ckpt.unet_config.num_classes, {}
        if classifier is not None:
            if not (math.isfinite(classifier_scale) and classifier_scale >= 0):
                raise UsageError(f"--classifier-scale must be finite and >= 0, got {classifier_scale}")
            if sampler in reference.SCORE_SAMPLERS:
                raise UsageError(f"--classifier applies to --sampler ddpm, ddim or dpm_solver++; --sampler "
                                 f"{sampler} (a score sampler) has no classifier-guidance term")
            classifier_model, classifier_ckpt = load_classifier(classifier, device=ctx.device)
            check_classifier_fits(classifier_ckpt, ckpt, class_id, classifier)
            num_classes = classifier_ckpt.unet_config.num_classes
            guide = {"classifier": classifier_model, "classifier_scale": classifier_scale}
        elif classifier_scale != 1.0:
            raise UsageError("--classifier-scale needs --classifier")
        y, total, rows = class_labels(class_id, n, num_classes)
        autoencoder = run_autoencoder(_run_dir(ckpt))  # a latent run (ddpm.latent): decode its samples
        if autoencoder is not None:
            check_latent_fit(ckpt.unet_config, autoencoder.config, f"the denoiser in {ckpt.path}")
        images, frames = draw(model, schedule, y, total, ctx, sampler=sampler, num_steps=steps,
                              guidance_scale=guidance, eta=eta, seed=seed,
                              gif_frames=gif_frames if gif else 0, clip=(-1.0, 1.0) if clip else None,
                              **guide, **{k: v for k, v in score_options.items() if v is not None})
        if autoencoder is not None:
            images = decode_latent_samples(autoencoder, images, str(ckpt.path))
            frames = [decode_latent_samples(autoencoder, f, str(ckpt.path)) for f in frames]
        written = []
        if ctx.is_main:
            written = save_pictures(out, images, frames, rows or nrow, gif)
            echo("wrote " + ", ".join(str(p) for p in written))
        return written
    finally:
        shutdown_distributed(ctx)
