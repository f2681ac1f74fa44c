"""Samplers in torch: DDPM ancestral, DDIM, DPM-Solver++(2M), classifier-free guidance.

The loops mirror `reference/sampling.py` step for step, so that in float64 on the CPU a torch
trajectory equals the reference's to round-off:

- coefficients come from `reference.ddpm_coefficients` / `reference.ddim_coefficients`
  (float64 NumPy, computed once per run, then one (K, 8) float64 tensor on the device);
- each DDPM/DDIM step is ONE `kernels.sampler_step` call (the elementwise rule of
  `reference.sampler_step`, with the classifier-free-guidance combine fused in);
- every Gaussian number comes from the noise stream (DESIGN contract 2): x_T from stream
  `SAMPLER_INIT_STREAM`, step k (0-based) from stream `sampler_step_stream(k)` = k + 1, for the
  GLOBAL sample indices `samples`, so sample i is the same whatever batch it is drawn in;
- DPM-Solver++(2M) has no fused kernel: its update is one line of tensor math with the float64
  coefficients of `reference.dpm_solver_pp_coefficients` (what the reference step uses).

`Sampler` precomputes everything a run needs (timesteps, coefficients, sample indices, the
batched class labels) so that `Sampler.step(x, k)` does no host-side work but the model call and
one kernel launch: the seam for CUDA graphs and the fast sampler.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

import kernels
from kernels.validate import check_finite_number
from reference._validate import check_clip, check_eta
from reference.noise import SAMPLER_INIT_STREAM, sampler_step_stream
from reference.process import (
    PREDICTIONS,
    VARIANCES,
    ddim_coefficients,
    ddpm_coefficients,
    dpm_solver_pp_coefficients,
)
from reference.schedules import timestep_subset

from .schedule import as_reference_schedule

__all__ = ["SAMPLERS", "DEFAULT_NUM_STEPS", "DEFAULT_SPACING", "Sampler", "sample"]

SAMPLERS = ("ddpm", "ddim", "dpm_solver++")
# num_steps=None: every timestep for DDPM, else these (capped at T), the reference's defaults.
DEFAULT_NUM_STEPS = {"ddim": 50, "dpm_solver++": 20}
# spacing=None: "leading" (diffusers' DDIM default) for ddpm/ddim; "trailing" for DPM-Solver++,
# whose second-order step into t = 0 with leading/linspace spacing extrapolates over a very
# uneven log-SNR step (r ~ 0.1): 2.7x vs 1.6x the data floor on the toy demo.
DEFAULT_SPACING = {"ddpm": "leading", "ddim": "leading", "dpm_solver++": "trailing"}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Callback = Callable[[int, int, torch.Tensor], None]


def _check_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _index_tensor(values, n: int, name: str, device: torch.device) -> torch.Tensor:
    """An (n,) int64 tensor on `device` from a tensor, array or sequence of integers."""
    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
        # a private copy: runners (and FastSampler's captured graphs) write into these buffers
        tensor = values.to(device=device, dtype=torch.int64, copy=True)
    else:
        array = np.asarray(values)
        if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
            if array.size:
                raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
        tensor = torch.as_tensor(array.astype(np.int64), device=device)
    if tensor.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(tensor.shape)}")
    return tensor


def _model_device(model) -> torch.device | None:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return None


class Sampler:
    """One sampling run, precomputed: `run()` = x_T, then `step(x, k)` for k = 0..K-1.

    Arguments are those of `sample` (see there). Attributes: `timesteps` (K,) int64 NumPy (the
    model's t per step, descending), `num_steps` K, `samples` (N,) int64 on `device`,
    `coefficients` (K, 8) float64 on `device` for DDPM/DDIM (columns reference.STEP_COEFFICIENTS).
    """

    def __init__(self, model, shape, schedule, *, sampler: str = "ddim", num_steps: int | None = None,
                 eta: float = 0.0, spacing: str | None = None, seed: int = 0, samples=None, y=None,
                 guidance_scale: float = 1.0, clip=None, prediction: str = "epsilon",
                 variance: str = "fixed_small", device=None, dtype: torch.dtype = torch.float32,
                 backend: str = "auto"):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t[, y]), got {type(model).__name__}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if not isinstance(dtype, torch.dtype) or dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype!r}")
        reference_schedule = as_reference_schedule(schedule)
        if isinstance(shape, torch.Size):
            shape = tuple(shape)
        if not isinstance(shape, (tuple, list)) or len(shape) < 2:
            raise TypeError(f"shape must be a tuple (N, C, ...) of at least 2 ints, got {shape!r}")
        shape = tuple(_check_int(d, f"shape[{i}]", low=1) for i, d in enumerate(shape))
        seed = _check_int(seed, "seed", low=0, high=2**64 - 1)
        eta = check_eta(eta)
        if sampler != "ddim" and eta != 0.0:
            raise ValueError(f"eta applies to the ddim sampler only, got eta={eta} with sampler={sampler!r}")
        guidance_scale = check_finite_number(guidance_scale, "guidance_scale")
        self.clip = check_clip(clip)

        device = torch.device(device) if device is not None else (_model_device(model) or torch.device("cpu"))
        n = shape[0]
        self.model, self.shape, self.kind, self.seed = model, shape, sampler, seed
        self.device, self.dtype, self.backend = device, dtype, backend
        self.guidance_scale, self.prediction = guidance_scale, prediction
        self.schedule = reference_schedule

        samples = np.arange(n) if samples is None else samples
        self.samples = _index_tensor(samples, n, "samples", device)
        if self.samples.numel() and (int(self.samples.min()) < 0 or int(self.samples.max()) >= 2**32):
            raise ValueError(f"samples must lie in [0, 2**32), got min {int(self.samples.min())} "
                             f"max {int(self.samples.max())}")

        # ---- classes and classifier-free guidance (Ho & Salimans 2022)
        null_class = getattr(model, "null_class", None)
        self.y = None
        if y is not None:
            self.y = _index_tensor(y, n, "y", device)
            if null_class is not None and self.y.numel() and (
                    int(self.y.min()) < 0 or int(self.y.max()) > null_class):
                raise ValueError(f"y must lie in [0, {null_class}] (num_classes = {null_class} is the "
                                 f"null class), got min {int(self.y.min())} max {int(self.y.max())}")
        self.guided = guidance_scale != 1.0
        if self.guided:
            if null_class is None:
                raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model "
                                 "(one with a null_class, e.g. ddpm.UNet with config.num_classes); "
                                 f"{type(model).__name__} has none")
            if self.y is None:
                raise ValueError(f"guidance_scale={guidance_scale} needs class labels y")
            # one batched model call on [cond; uncond]
            self.y_model = torch.cat([self.y, torch.full_like(self.y, null_class)])
        else:
            self.y_model = self.y

        # ---- timesteps and per-step coefficients (float64 NumPy, as the reference)
        T = reference_schedule.T
        if spacing is None:
            spacing = DEFAULT_SPACING[sampler]
        if sampler == "ddpm":
            if num_steps is None or num_steps == T:
                timesteps = np.arange(T - 1, -1, -1, dtype=np.int64)
                steps_schedule = reference_schedule
            else:
                timesteps = timestep_subset(T, num_steps, spacing)
                steps_schedule = reference_schedule.respace(timesteps)
            # step k uses index K-1-k of the respaced (ascending) schedule: DDPM Alg. 2
            k_resp = np.arange(len(timesteps) - 1, -1, -1, dtype=np.int64)
            coefficients = ddpm_coefficients(steps_schedule, k_resp, prediction, variance)
        else:
            if num_steps is None:
                num_steps = min(DEFAULT_NUM_STEPS[sampler], T)
            timesteps = timestep_subset(T, num_steps, spacing)
            t_prev = np.append(timesteps[1:], -1).astype(np.int64)
            if sampler == "ddim":
                coefficients = ddim_coefficients(reference_schedule, timesteps, t_prev, eta, prediction)
            else:
                # step k's history is step k-1 (its t); the first step has none (-1)
                t_last = np.concatenate([[-1], timesteps[:-1]]).astype(np.int64)
                coefficients = dpm_solver_pp_coefficients(reference_schedule, timesteps, t_prev,
                                                          t_last, prediction)
        self.timesteps = timesteps
        self.num_steps = len(timesteps)
        self.coefficients = torch.as_tensor(np.ascontiguousarray(coefficients), dtype=torch.float64,
                                            device=device)
        # DDPM/DDIM: which steps add noise (sigma != 0), known on the host
        if sampler == "dpm_solver++":
            self.second_order = [bool(c) for c in coefficients[:, 6]]
            # the update runs in float32 for half-precision states (float64 stays float64): bf16
            # coefficients would carry ~0.4% error into every step's sigma ratio
            self._compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            self._state_coefficients = self.coefficients.to(self._compute_dtype)
        else:
            self.noisy = [bool(c) for c in (coefficients[:, 7] != 0)]
        batch = 2 * n if self.guided else n
        self.model_t = torch.as_tensor(timesteps, device=device).reshape(-1, 1).expand(-1, batch)
        self._x0_last = None

    # ------------------------------------------------------------------ DPM-Solver++(2M)

    def _dpm_solver_step(self, x: torch.Tensor, out: torch.Tensor, k: int) -> torch.Tensor:
        c = self._state_coefficients[k]
        xc = x.to(self._compute_dtype)
        x0 = c[0] * xc + c[1] * out.to(self._compute_dtype)
        if self.clip is not None:
            x0 = torch.clamp(x0, self.clip[0], self.clip[1])
        D = c[2] * x0 - c[3] * self._x0_last if self.second_order[k] else x0
        self._x0_last = x0
        return (c[4] * xc - c[5] * D).to(x.dtype)

    # ------------------------------------------------------------------ the loop

    def initial_noise(self) -> torch.Tensor:
        """x_T ~ N(0, I) from stream SAMPLER_INIT_STREAM (float32 normals, then cast)."""
        z = kernels.normal(self.seed, self.samples, SAMPLER_INIT_STREAM, self.shape[1:],
                           device=self.device, dtype=torch.float32, backend=self.backend)
        return z.to(self.dtype)

    def model_output(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond or None): one model call, on [x; x] with labels [y; null] when guided."""
        t = self.model_t[k]
        if self.guided:
            out = self.model(torch.cat([x, x]), t, self.y_model)
        elif self.y_model is not None:
            out = self.model(x, t, self.y_model)
        else:
            out = self.model(x, t)
        expected = (2 * x.shape[0],) + tuple(x.shape[1:]) if self.guided else tuple(x.shape)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model output must have shape {expected} (that of its input), got {got}")
        if self.guided:
            cond, uncond = out.chunk(2)
            return cond, uncond
        return out, None

    def step(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x at timesteps[k] -> x at the next timestep (t = -1 after the last step)."""
        cond, uncond = self.model_output(x, k)
        if self.kind == "dpm_solver++":
            if uncond is not None:  # the CFG combine in the update's precision, as the fused kernel
                cond, uncond = cond.to(self._compute_dtype), uncond.to(self._compute_dtype)
                cond = uncond + self.guidance_scale * (cond - uncond)
            return self._dpm_solver_step(x, cond, k)
        noisy = self.noisy[k]
        return kernels.sampler_step(
            x, cond, self.coefficients[k], model_output_uncond=uncond,
            guidance_scale=self.guidance_scale, clip=self.clip,
            seed=self.seed if noisy else None, samples=self.samples if noisy else None,
            stream=sampler_step_stream(k), backend=self.backend)

    @torch.no_grad()
    def run(self, x_T: torch.Tensor | None = None, callback: Callback | None = None) -> torch.Tensor:
        """The whole loop from x_T (drawn from the noise stream when None) to x_0."""
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable as callback(step, t, x), got {type(callback).__name__}")
        if x_T is None:
            x = self.initial_noise()
        else:
            if not isinstance(x_T, torch.Tensor):
                raise TypeError(f"x_T must be a torch.Tensor or None, got {type(x_T).__name__}")
            if tuple(x_T.shape) != self.shape:
                raise ValueError(f"x_T must have shape {self.shape}, got {tuple(x_T.shape)}")
            if not x_T.is_floating_point():
                raise TypeError(f"x_T must be floating point, got dtype {x_T.dtype}")
            if not bool(torch.isfinite(x_T).all()):
                raise ValueError("x_T contains NaN or inf")
            x = x_T.to(device=self.device, dtype=self.dtype)
        was_training = isinstance(self.model, nn.Module) and self.model.training
        if was_training:
            self.model.eval()  # dropout off: a seed must give the same images
        self._x0_last = None
        try:
            for k in range(self.num_steps):
                x = self.step(x, k)
                if callback is not None:
                    callback(k, int(self.timesteps[k]), x)
        finally:
            if was_training:
                self.model.train()
        return x


def sample(model, shape, schedule, *, sampler: str = "ddim", num_steps: int | None = None,
           eta: float = 0.0, spacing: str | None = None, seed: int = 0, samples=None, y=None,
           guidance_scale: float = 1.0, clip=None, prediction: str = "epsilon",
           variance: str = "fixed_small", device=None, dtype: torch.dtype = torch.float32,
           x_T: torch.Tensor | None = None, callback: Callback | None = None,
           backend: str = "auto") -> torch.Tensor:
    """Draw samples x_0 of `shape` (N, C, H, W) from a diffusion model.

    model: `model(x, t)` or, with `y`, `model(x, t, y)` -> output shaped like x (eps, x0 or v per
        `prediction`); x (N, C, H, W) in `dtype`, t (N,) int64. A ddpm.UNet qualifies.
    schedule: a reference.Schedule or ddpm.TorchSchedule (the training schedule).
    sampler: "ddpm" (ancestral, DDPM Alg. 2; all T steps, or num_steps on the respaced schedule
        of Improved DDPM Sec. 4), "ddim" (Song et al. 2021 Eq. 12, with eta), or "dpm_solver++"
        (Lu et al. 2022, 2M). num_steps None: T for ddpm, min(50, T) ddim, min(20, T) dpm_solver++.
    spacing: "leading" | "trailing" | "linspace" timestep subsets (reference.timestep_subset);
        None: DEFAULT_SPACING[sampler] ("trailing" for dpm_solver++, else "leading").
    seed, samples: noise-stream seed and the (N,) GLOBAL sample indices (default arange(N)).
    y: (N,) class ids in [0, model.null_class]; guidance_scale w != 1 runs classifier-free
        guidance out = uncond + w (cond - uncond) (Ho & Salimans 2022) with one batched call.
    clip: (lo, hi) clips the predicted x0; variance "fixed_small" | "fixed_large" (ddpm only).
    device/dtype: of the sampler's state (default: the model's device; float32).
    x_T: start here instead of the stream's x_T. callback(step, t, x) after every step.
    backend: kernels backend ("auto" | "triton" | "cupy" | "torch").
    Returns x_0, (N, C, H, W) in `dtype`. Runs under torch.no_grad(); a model in training mode
    is switched to eval() for the run and back afterwards.
    """
    runner = Sampler(model, shape, schedule, sampler=sampler, num_steps=num_steps, eta=eta,
                     spacing=spacing, seed=seed, samples=samples, y=y, guidance_scale=guidance_scale,
                     clip=clip, prediction=prediction, variance=variance, device=device, dtype=dtype,
                     backend=backend)
    return runner.run(x_T=x_T, callback=callback)
