"""What every trainer is configured and set up with: `TrainConfig` and the shared initialisation.

`ddpm.Trainer` (the denoiser; its `ClassifierTrainer`, ddpm.runs_classifier) and
`AutoencoderTrainer` (ddpm.autoencoder_train) run the same step, loop and checkpoints; this
module holds what they share before the first step:

    check_trainer_arguments   the one-line TypeErrors for model / config / dataset
    setup_training            model on the device (DDP-wrapped on several ranks), EMA, AdamW
                              (weight decay on >= 2-D weights only), the data order
                              (EpochSampler), the flip generator, counters, history, bf16
    training_state            that state as a checkpoint's trainer state (with the global RNGs)
    restore_training          the inverse: weights, EMA, optimizer, generator, data position,
                              RNGs, counters and history back from a checkpoint

so a trainer's own `__init__` adds only what its objective needs (the denoiser's schedule tables,
the autoencoder's kl_weight). The order of these steps is the order the trainers always had:
nothing in it draws a random number, so checkpoints and resumes are unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

import reference

from .checkpoint import capture_rng_states, restore_rng_states
from .cpu_speed import adamw_kernel_options, check_compiler, cpu_bf16_support
from .data import EpochSampler
from .distributed import DistributedContext, rank_slice, single_process, wrap_model
from .ema import EMA

__all__ = ["TrainConfig", "LR_SCHEDULES", "MIXED_PRECISION", "TIMESTEP_SAMPLING", "check_trainer_arguments",
           "setup_training", "training_state", "restore_training"]

COUNTERS = ("step", "optimizer_steps", "skipped_steps", "consecutive_nonfinite")

log = logging.getLogger("ddpm.train")

LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("auto", "bf16", "no")
TIMESTEP_SAMPLING = ("uniform", "importance")



@dataclass
class TrainConfig:
    """Optimisation settings. batch_size is the GLOBAL batch (split evenly over ranks).

    lr is reached linearly over `warmup_steps` optimizer steps (DDPM: 2e-4 and 5000), then held
    ("constant") or decayed to 0 at `steps` ("cosine"). grad_clip: max global L2 norm, None for
    none (DDPM: 1.0). ema_decay / ema_warmup: see ddpm.ema. weight_decay applies to weights with
    >= 2 dimensions only. label_dropout: probability of replacing a class label by the null class.
    min_snr_gamma: None for the plain objective.
    Improved DDPM (Nichol & Dhariwal 2021): variance "learned" (the model has 2 x in_channels
    outputs, Eq. 15) or "fixed_small" / "fixed_large"; loss "simple" | "hybrid" (L_simple +
    vlb_weight L_vlb, Sec. 3.1) | "vlb"; timestep_sampling "importance" (vlb only, Sec. 3.3)
    keeps the last importance_history values of L_t per t.
    Speed (issue 17): channels_last runs the model in that memory format; compile wraps it in
    torch.compile (inductor; on the CPU its C++ backend); mixed_precision "bf16" autocasts on CUDA
    and on CPUs with native bf16 (ddpm.cpu_speed.cpu_bf16_support), else warns and stays float32.
    """

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    prediction: str = "epsilon"
    min_snr_gamma: float | None = None
    label_dropout: float = 0.1
    seed: int = 0
    max_consecutive_nonfinite: int = 10
    mixed_precision: str = "auto"
    variance: str = "fixed_small"
    loss: str = "simple"
    vlb_weight: float = 0.001
    timestep_sampling: str = "uniform"
    importance_history: int = 10
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

        for name in ("steps", "batch_size", "max_consecutive_nonfinite", "importance_history"):
            positive_int(name)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        self.seed = reference.check_seed(self.seed)  # the noise stream's range: [0, 2**64)
        for name, lo, hi in (("lr", 0.0, math.inf), ("adam_eps", 0.0, math.inf)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo < v < hi):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        for name in ("weight_decay",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("adam_beta1", "adam_beta2", "ema_decay", "label_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a positive number, got {self.grad_clip!r}")
        if self.min_snr_gamma is not None and not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma must be None or a positive number, got {self.min_snr_gamma!r}")
        if self.prediction not in reference.PREDICTIONS:
            raise ValueError(f"prediction must be one of {reference.PREDICTIONS}, got {self.prediction!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self._check_improved_ddpm()

    def _check_improved_ddpm(self) -> None:
        reference.check_loss_variance(self.loss, self.variance)  # names loss / variance
        if not (isinstance(self.vlb_weight, (int, float)) and math.isfinite(self.vlb_weight) and self.vlb_weight >= 0):
            raise ValueError(f"vlb_weight must be a finite number >= 0, got {self.vlb_weight!r}")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, got {self.timestep_sampling!r}")
        if self.timestep_sampling == "importance" and self.loss != "vlb":
            raise ValueError(f"timestep_sampling='importance' applies to loss='vlb' (Improved DDPM Sec. 3.3), "
                             f"got loss={self.loss!r}")
        if self.min_snr_gamma is not None and self.loss != "simple":
            raise ValueError(f"min_snr_gamma weights the simple loss only, got loss={self.loss!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {sorted(unknown)}")
        return cls(**d)

    def lr_at(self, optimizer_step: int) -> float:
        """Learning rate for the optimizer step with 0-based index `optimizer_step`."""
        lr = self.lr
        if self.warmup_steps and optimizer_step < self.warmup_steps:
            return lr * (optimizer_step + 1) / self.warmup_steps
        if self.lr_schedule == "cosine":
            span = max(self.steps - self.warmup_steps, 1)
            progress = min(max(optimizer_step - self.warmup_steps, 0) / span, 1.0)
            lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr



def check_trainer_arguments(model, config, dataset, dataset_types: tuple, model_type=nn.Module) -> None:
    """TypeError naming the argument unless model, config and dataset have the trainer's types."""
    if not isinstance(model, model_type):
        name = "an nn.Module" if model_type is nn.Module else f"a ddpm.{model_type.__name__}"
        raise TypeError(f"model must be {name}, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(dataset, dataset_types):
        names = " or ".join(t.__name__ for t in dataset_types)
        article = "an" if names[0] in "AEIOU" else "a"
        raise TypeError(f"dataset must be {article} {names}, got {type(dataset).__name__}")


def setup_training(trainer, model: nn.Module, config: "TrainConfig", dataset,
                   ctx: DistributedContext | None, *, history_keys: tuple = ()) -> None:
    """Give `trainer` the state every trainer starts from (module docstring): ctx, config,
    dataset, model (on ctx.device), ddp_model, ema, optimizer, generator, sampler, the step
    counters, history (step, loss, grad_norm, lr, then history_keys) and use_bf16."""
    trainer.ctx = ctx or single_process()
    trainer.config = config
    trainer.dataset = dataset
    rank_slice(config.batch_size, trainer.ctx)  # validates that the batch splits over the ranks
    device = trainer.ctx.device
    if config.compile and device.type == "cpu":
        check_compiler("TrainConfig.compile")
    trainer.model = model.to(device)
    if config.channels_last:
        trainer.model = trainer.model.to(memory_format=torch.channels_last)
    trainer.ddp_model = wrap_model(trainer.model, trainer.ctx)
    if config.compile:  # the forward+backward through inductor; the step's host work stays eager
        trainer.ddp_model = torch.compile(trainer.ddp_model)
    trainer.ema = EMA(trainer.model, config.ema_decay, config.ema_warmup)
    decay = [p for p in trainer.model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in trainer.model.parameters() if p.requires_grad and p.ndim < 2]
    trainer.optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr_at(0), betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
        **adamw_kernel_options(device))
    trainer.generator = torch.Generator().manual_seed(config.seed)
    trainer.sampler = EpochSampler(len(dataset), config.seed)
    trainer.step = 0              # steps attempted (the noise stream index)
    trainer.optimizer_steps = 0   # steps applied
    trainer.skipped_steps = 0
    trainer.consecutive_nonfinite = 0
    trainer.history = {key: [] for key in ("step", "loss", "grad_norm", "lr") + tuple(history_keys)}
    trainer.use_bf16 = device.type == "cuda" and config.mixed_precision in ("auto", "bf16")
    if config.mixed_precision == "bf16" and device.type == "cpu":
        trainer.use_bf16, why = cpu_bf16_support()
        if not trainer.use_bf16:
            log.warning("mixed_precision='bf16' ignored, training in float32: %s", why)
    elif config.mixed_precision == "bf16" and device.type != "cuda":
        log.warning("mixed_precision='bf16' is only used on CUDA and bf16 CPUs; training in float32 on %s", device)


def training_state(trainer) -> dict:
    """The trainer state of a checkpoint: what `setup_training` created, as it is now."""
    return {
        **{key: getattr(trainer, key) for key in COUNTERS},
        "optimizer": trainer.optimizer.state_dict(),
        "ema_num_updates": trainer.ema.num_updates,
        "generator": trainer.generator.get_state(),
        "sampler": trainer.sampler.state_dict(),
        "rng": capture_rng_states(),
        "history": {k: list(v) for k, v in trainer.history.items()},
        "world_size": trainer.ctx.world_size,
    }


def restore_training(trainer, model_state: dict, ema_state: dict, state: dict) -> None:
    """Put a checkpoint's weights, EMA and trainer state (`training_state`) back into `trainer`,
    so the next step is the one the saved run would have taken (bit for bit on the CPU)."""
    trainer.model.load_state_dict(model_state)
    trainer.ema.load_state_dict(ema_state, state["ema_num_updates"])
    trainer.ema.to(trainer.ctx.device)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.generator.set_state(state["generator"])
    trainer.sampler.load_state_dict(state["sampler"])
    restore_rng_states(state["rng"])
    for key in COUNTERS:
        setattr(trainer, key, int(state[key]))
    trainer.history = {k: list(v) for k, v in state["history"].items()}
