"""The reference schedule's float64 tables as torch buffers (DESIGN contract 1).

Every table is computed once, in float64, by `reference.schedules.Schedule`; this module only
copies and casts them. Nothing here recomputes a beta: a torch table is always bit-for-bit the
reference's float64 array (or its cast to a lower precision).

    betas[t], alphas[t] = 1 - betas[t], alpha_bars[t] = prod_{s<=t} alphas[s]   (DDPM Eq. 4)
    sqrt_alpha_bars, sqrt_one_minus_alpha_bars       the q_sample scales (DDPM Eq. 4)
    posterior_variance, posterior_mean_coef1/2       q(x_{t-1} | x_t, x0)   (DDPM Eqs. 6-7)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reference.schedules import Schedule

__all__ = ["TorchSchedule", "TABLE_NAMES"]

# The (T,) float64 tables of reference.Schedule, registered under the same names.
TABLE_NAMES = (
    "betas",
    "alphas",
    "alpha_bars",
    "alpha_bars_prev",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "sqrt_recip_alpha_bars",
    "sqrt_recipm1_alpha_bars",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "snr",
)


class TorchSchedule(nn.Module):
    """A reference `Schedule` whose float64 tables are (T,) buffers of this module.

    Buffers keep the reference's names (`betas`, `alpha_bars`, `sqrt_alpha_bars`, ...) and are
    non-persistent (they are derived data: a checkpoint records the schedule kind and
    parameters, not the tables). `.to(device)` moves them; their dtype stays float64 unless
    the module is cast explicitly. Use `table(name, dtype, device)` for a cached cast.

    Args:
        reference_schedule: a `reference.Schedule` (e.g. `reference.make_schedule("linear", 1000)`).
    """

    def __init__(self, reference_schedule: Schedule):
        super().__init__()
        if isinstance(reference_schedule, TorchSchedule):
            reference_schedule = reference_schedule.reference
        if not isinstance(reference_schedule, Schedule):
            raise TypeError(
                "reference_schedule must be a reference.Schedule (e.g. from "
                f"reference.make_schedule), got {type(reference_schedule).__name__}"
            )
        self._reference = reference_schedule
        for name in TABLE_NAMES:
            table = np.array(getattr(reference_schedule, name), dtype=np.float64)  # a writable copy
            self.register_buffer(name, torch.from_numpy(table), persistent=False)
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def reference(self) -> Schedule:
        """The NumPy schedule these tables were copied from."""
        return self._reference

    @property
    def T(self) -> int:
        """The number of training timesteps."""
        return self._reference.T

    def table(self, name: str, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
        """The (T,) table `name` cast to `dtype` on `device` (default: the buffers' device).

        The cast is made once from the reference's float64 array and cached, so the values never
        depend on the buffers' current dtype. Treat the result as read-only: it is shared.
        """
        if name not in TABLE_NAMES:
            raise ValueError(f"name must be one of {TABLE_NAMES}, got {name!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        device = self.betas.device if device is None else torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (name, dtype, device)
        cached = self._cache.get(key)
        if cached is None:
            float64 = torch.from_numpy(np.array(getattr(self._reference, name), dtype=np.float64))
            cached = float64.to(device=device, dtype=dtype)
            self._cache[key] = cached
        return cached

    def respace(self, timesteps) -> "TorchSchedule":
        """The schedule of a sampler visiting only `timesteps` (`reference.Schedule.respace`)."""
        out = TorchSchedule(self._reference.respace(timesteps))
        return out.to(self.betas.device)

    def extra_repr(self) -> str:
        return f"kind={self._reference.kind!r}, T={self.T}"


def as_reference_schedule(schedule, name: str = "schedule") -> Schedule:
    """The NumPy `Schedule` behind a `reference.Schedule` or a `TorchSchedule`."""
    if isinstance(schedule, TorchSchedule):
        return schedule.reference
    if isinstance(schedule, Schedule):
        return schedule
    raise TypeError(f"{name} must be a reference.Schedule or a ddpm.TorchSchedule, "
                    f"got {type(schedule).__name__}")
