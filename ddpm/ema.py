"""Exponential moving average of model parameters (the weights DDPM samples from).

Ho et al. 2020 (Appendix B) sample from an EMA of the parameters with decay 0.9999. Early in
training an average with decay 0.9999 is dominated by the random initialisation, so the
effective decay is warmed up as TensorFlow's `ExponentialMovingAverage(num_updates=...)` (and
diffusers' EMAModel without `use_ema_warmup`) does:

    decay_k = min(decay, (1 + k) / (10 + k))      k = number of updates already applied
    shadow  = decay_k * shadow + (1 - decay_k) * param

with `warmup=False`, decay_k = decay throughout. The shadow is float32 whatever the model's
parameter dtype; buffers are not averaged (the DDPM UNet has none that train).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or torch.compile) wrapper, else the model."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class EMA:
    """Shadow copies of `model`'s trainable parameters, updated after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup = decay, bool(warmup)
        self.num_updates = 0
        model = unwrap_model(model)
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32).clone()
            for name, p in model.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        """The decay the next `update` applies (see module docstring)."""
        if not self.warmup:
            return self.decay
        k = self.num_updates
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d shadow + (1 - d) param for every tracked parameter (d = current_decay())."""
        d = self.current_decay()
        params = dict(unwrap_model(model).named_parameters())
        missing = set(self.shadow) - set(params)
        if missing:
            raise ValueError(f"model lacks EMA parameter(s) {sorted(missing)[:5]}")
        names = list(self.shadow)
        shadow = [self.shadow[n] for n in names]
        current = [params[n].detach().to(torch.float32) for n in names]
        # lerp: shadow + (1 - d) (param - shadow) = d shadow + (1 - d) param
        torch._foreach_lerp_(shadow, current, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (e.g. a copy used for sampling)."""
        params = dict(unwrap_model(model).named_parameters())
        for name, value in self.shadow.items():
            if name not in params:
                raise ValueError(f"model has no parameter {name!r} to receive the EMA weights")
            params[name].copy_(value.to(params[name].dtype))

    def to(self, device) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights by parameter name (what ema.safetensors holds)."""
        return {k: v.detach().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore shadow weights (same names and shapes) and the update count."""
        if set(state) != set(self.shadow):
            extra, missing = set(state) - set(self.shadow), set(self.shadow) - set(state)
            raise ValueError(f"EMA state does not match the model: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(extra)[:5]}")
        for name, value in state.items():
            if tuple(value.shape) != tuple(self.shadow[name].shape):
                raise ValueError(f"EMA weight {name!r} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(self.shadow[name].shape)}")
            self.shadow[name] = value.detach().to(device=self.shadow[name].device, dtype=torch.float32).clone()
        self.num_updates = int(num_updates)
