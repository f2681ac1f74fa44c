"""Input checks run before any launch: every error names the argument, the expected and the actual.

Values that live on the host (Python numbers, sequences, NumPy arrays, CPU tensors) are checked
here, eagerly. Values that live on a CUDA device (timesteps, sample indices, coefficients) are
NOT read back here, because that would synchronise the device every call; the kernels guard them
instead (an out-of-range entry turns that sample's outputs into NaN, never into a wrong number).
Set the environment variable `DDPM_KERNELS_SYNC_CHECKS=1` to check device-resident values here
too, at the price of one synchronisation per call (useful while debugging).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

SYNC_CHECKS_ENV = "DDPM_KERNELS_SYNC_CHECKS"
FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TORCH_DTYPES = FAST_DTYPES + (torch.float64,)
INT_DTYPES = (torch.int64, torch.int32)
UINT32_LIMIT = 2**32


def sync_checks_enabled() -> bool:
    """True when device-resident values are to be range-checked on the host (synchronising)."""
    return os.environ.get(SYNC_CHECKS_ENV, "0") not in ("", "0", "false", "False")


def _host_checkable(t: torch.Tensor) -> bool:
    """Host-resident values are always checked; device values only under the env flag, and
    never while a CUDA graph is being captured (reading them back is not allowed then)."""
    if t.device.type == "cpu":
        return True
    return sync_checks_enabled() and not torch.cuda.is_current_stream_capturing()


def check_float_tensor(x, name: str, *, dtypes: Sequence[torch.dtype] = TORCH_DTYPES,
                       min_ndim: int = 1) -> torch.Tensor:
    """A floating torch.Tensor of one of `dtypes` with at least `min_ndim` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    if x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def check_same_device(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {x.device}")


def check_same_shape(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")


def check_same_dtype(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {x.dtype}")


def check_no_internal_overlap(x: torch.Tensor, name: str) -> None:
    """Reject outputs whose elements share memory (expanded views): writes would race."""
    if x.numel() > 1 and any(s == 0 and d > 1 for s, d in zip(x.stride(), x.shape)):
        raise ValueError(f"{name} must not have zero strides (an expanded view), got strides {x.stride()}")


def check_like(x, name: str, x_t: torch.Tensor) -> torch.Tensor:
    """x is a float tensor of x_t's shape, device and dtype (a step's operands and outputs)."""
    check_float_tensor(x, name)
    check_same_shape(x, name, x_t, "x_t")
    check_same_device(x, name, x_t, "x_t")
    check_same_dtype(x, name, x_t, "x_t")
    return x


def check_seed(seed, name: str = "seed") -> int:
    # The same range and messages as reference._validate.check_seed, the house's one seed range:
    # a copy only because DESIGN forbids kernels/ importing reference/.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"{name} must lie in [0, 2**64), got {seed}")
    return int(seed)


def check_timesteps(t, name: str, batch: int, T: int, device: torch.device) -> torch.Tensor:
    """(batch,) int64 timesteps on `device`; an int broadcasts. Range [0, T) checked on the host
    when t is host-resident (see module docstring for device-resident t)."""
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        if not 0 <= int(t) < T:
            raise ValueError(f"{name} must lie in [0, {T - 1}] for T = {T}, got {int(t)}")
        return torch.full((batch,), int(t), dtype=torch.int64, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an int or an int64 torch.Tensor of shape ({batch},), "
                        f"got {type(t).__name__}")
    if t.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must have dtype int64 (or int32), got {t.dtype}")
    if tuple(t.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {t.device}")
    if batch and _host_checkable(t):
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= T:
            raise ValueError(f"{name} must lie in [0, {T - 1}] for T = {T}, got min {lo} max {hi}")
    return t.contiguous()  # any 1-D view (expanded, strided) is accepted; kernels read t_ptr + n


def check_index_values(values, name: str, batch: int | None, device: torch.device,
                       *, allow_scalar: bool) -> torch.Tensor | int:
    """Sample indices / streams: integers in [0, 2**32) (the Philox counter words are 32-bit).

    Returns an int (when allowed and given a scalar) or a (batch,) int64 tensor on `device`.
    """
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        if not allow_scalar:
            raise TypeError(f"{name} must be a sequence or tensor of ints, got an int")
        if not 0 <= int(values) < UINT32_LIMIT:
            raise ValueError(f"{name} must lie in [0, 2**32), got {int(values)}")
        return int(values)
    if isinstance(values, torch.Tensor):
        if values.dtype not in INT_DTYPES:
            raise TypeError(f"{name} must have dtype int64 (or int32), got {values.dtype}")
        tensor = values.reshape(-1) if values.dim() <= 1 else None
        if tensor is None:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        if tensor.device != device:
            raise ValueError(f"{name} must be on device {device}, got {tensor.device}")
        host = tensor if _host_checkable(tensor) else None
    else:
        try:
            arr = np.asarray(values)
        except Exception:  # noqa: BLE001 - anything not array-like is a type error here
            raise TypeError(f"{name} must be integers, got {type(values).__name__}") from None
        if arr.size and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
        if arr.ndim > 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= UINT32_LIMIT):
            raise ValueError(f"{name} must lie in [0, 2**32), got min {arr.min()} max {arr.max()}")
        tensor = torch.as_tensor(arr.reshape(-1).astype(np.int64), device=device)
        host = None
    if batch is not None and tensor.numel() != batch:
        raise ValueError(f"{name} must have {batch} entries (one per sample), got {tensor.numel()}")
    if host is not None and host.numel():
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= UINT32_LIMIT:
            raise ValueError(f"{name} must lie in [0, 2**32), got min {lo} max {hi}")
    return tensor.to(torch.int64).contiguous()  # kernels read samples_ptr + n: no views


def check_numel_per_sample(numel: int, name: str) -> None:
    if numel >= UINT32_LIMIT:
        raise ValueError(f"{name} must have fewer than 2**32 elements per sample (the Philox element "
                         f"counter is 32-bit), got {numel}")


def check_table(table, name: str, device: torch.device) -> torch.Tensor:
    """A (T,) float32/float64 schedule table on `device` (finite: checked when host-resident)."""
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"{name} must be a (T,) torch.Tensor, got {type(table).__name__}")
    if table.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must have dtype float32 or float64, got {table.dtype}")
    if table.dim() != 1 or table.numel() < 1:
        raise ValueError(f"{name} must have shape (T,) with T >= 1, got {tuple(table.shape)}")
    if table.device != device:
        raise ValueError(f"{name} must be on x0's device {device}, got {table.device}")
    if _host_checkable(table) and not bool(torch.isfinite(table).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return table


def check_coefficients(coefficients, batch: int, device: torch.device, width: int = 8) -> torch.Tensor:
    """(width,) or (batch, width) sampler coefficients -> a float64 (batch, width) tensor on `device`
    (width 8: `sampler_step`; 10: `learned_variance_step`).

    Accepts a torch.Tensor (any float dtype, any device: moved), a NumPy array or a sequence.
    """
    if isinstance(coefficients, torch.Tensor):
        if not coefficients.is_floating_point():
            raise TypeError(f"coefficients must be floating point, got {coefficients.dtype}")
        c = coefficients
    else:
        try:
            arr = np.asarray(coefficients)
        except Exception:  # noqa: BLE001
            raise TypeError(f"coefficients must be an array, got {type(coefficients).__name__}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"coefficients must be numbers, got dtype {arr.dtype}")
        c = torch.as_tensor(arr.astype(np.float64))
    if tuple(c.shape) == (width,):
        c = c.reshape(1, width).expand(batch, width)
    if tuple(c.shape) != (batch, width):
        raise ValueError(f"coefficients must have shape ({width},) or ({batch}, {width}), got {tuple(c.shape)}")
    if _host_checkable(c) and not bool(torch.isfinite(c).all()):
        raise ValueError("coefficients contain NaN or inf")
    return c.to(device=device, dtype=torch.float64)


def check_clip(clip) -> tuple[float, float] | None:
    """None, or a finite pair (lo, hi) with lo < hi, returned as floats.

    A copy of reference/_validate.py's check_clip, kept because kernels never import reference
    (DESIGN); tests/test_sampling_plan.py checks that both accept and reject the same values.
    """
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise TypeError(f"clip must be None or a pair (lo, hi), got {clip!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"clip must satisfy lo < hi (finite), got {clip!r}")
    return lo, hi


def check_finite_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    # math, not numpy: torch.compile traces a model's kernels.group_norm_silu(eps=...) calls, and
    # np.isfinite on a constant breaks its graph at every GroupNorm
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_groups(groups, num_channels: int) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups < 1 or num_channels % groups != 0:
        raise ValueError(f"groups must be >= 1 and divide the number of channels {num_channels}, got {groups}")
    return int(groups)


def check_eps(eps) -> float:
    eps = check_finite_number(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return eps


def check_step_noise_and_out(x_t: torch.Tensor, noise, seed, samples, stream, out,
                             host_needs_noise: bool | None, needs_noise_message: str):
    """The noise source and `out` of a sampler-step op (sampler_step, learned_variance_step).

    Either `noise` (like x_t) or `seed` (in-kernel noise from (seed, samples, stream)), never
    both; neither only where no step draws noise (host_needs_noise is None when the
    coefficients live on the device and are not read back). Returns (seed, samples_t, stream).
    """
    batch = x_t.shape[0]
    if noise is not None:
        check_like(noise, "noise", x_t)
        if seed is not None:
            raise ValueError("pass either noise or seed (in-kernel noise), not both")
    if seed is not None:
        seed = check_seed(seed)
        check_numel_per_sample(x_t[0].numel() if batch else 0, "x_t")
    if noise is None and seed is None and host_needs_noise:
        raise ValueError(needs_noise_message)
    samples_t, stream_v = None, 0
    if seed is not None:
        if samples is not None:
            samples_t = check_index_values(samples, "samples", batch, x_t.device, allow_scalar=False)
        stream_v = check_index_values(stream, "stream", batch, x_t.device, allow_scalar=True)
    if out is not None:
        check_like(out, "out", x_t)
        check_no_internal_overlap(out, "out")
    return seed, samples_t, stream_v


def check_classifier_guidance(classifier_grad, classifier_coefficients, x_t: torch.Tensor):
    """The classifier-guidance inputs of a step op: (gradient, (N, 3) float64 rows on x_t's
    device) or (None, None); classifier_grad like x_t, classifier_coefficients (3,) or (N, 3)."""
    if classifier_grad is None:
        if classifier_coefficients is not None:
            raise ValueError("classifier_coefficients given without classifier_grad")
        return None, None
    check_like(classifier_grad, "classifier_grad", x_t)
    if classifier_coefficients is None:
        raise ValueError("classifier_grad needs classifier_coefficients, (3,) or (N, 3)")
    try:
        rows = check_coefficients(classifier_coefficients, x_t.shape[0], x_t.device, width=3)
    except (TypeError, ValueError) as err:  # the same checks, named for this argument
        raise type(err)(str(err).replace("coefficients", "classifier_coefficients", 1)) from None
    return classifier_grad, rows
