"""Samplers in torch: DDPM ancestral, DDIM, DPM-Solver++(2M), classifier-free guidance.

A `Sampler` executes a `reference.sampling_plan`, the plan the reference loop
(`reference.sample_plan`) executes in NumPy, so that in float64 on the CPU a torch trajectory
equals the reference's to round-off:

- timesteps, float64 coefficient rows and noise streams are the plan's (computed once per run
  in NumPy, then one (K, C) float64 tensor on the device); nothing here chooses a timestep,
  a coefficient or a default;
- each DDPM/DDIM step ("sampler_step" kind) is ONE `kernels.sampler_step` call (the elementwise
  rule of `reference.sampler_step`, with the classifier-free-guidance combine fused in);
- every Gaussian number comes from the noise stream (DESIGN contract 2): x_T from stream
  `SAMPLER_INIT_STREAM`, step k from the plan's `noise_streams[k]` (= k + 1), for the GLOBAL
  sample indices `samples`, so sample i is the same whatever batch it is drawn in;
- DPM-Solver++(2M) ("dpm_solver_pp_2m" kind) has no fused kernel: its update is one line of
  tensor math with the plan's rows (`reference.dpm_solver_pp_2m_update`);
- variance="learned" (Improved DDPM, a model with 2C output channels: the mean part, then v):
  each DDPM step ("learned_variance_step" kind) is ONE `kernels.learned_variance_step` call
  (the per-element log-variance interpolation, exp and noise fused with the mean); DDIM and
  DPM-Solver++ read the mean part (the first C channels) only.

`Sampler` precomputes everything a run needs (plan, sample indices, the batched class labels)
so that `Sampler.step(x, k)` does no host-side work but the model call and one kernel launch:
`Sampler.loop` is the seam for CUDA graphs and the fast sampler.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

import kernels
from kernels.validate import check_finite_number
from reference._validate import check_class_labels, check_seed
from reference.noise import SAMPLER_INIT_STREAM
from reference.sampling import READS_VARIANCE
from reference.classifier_guidance import check_classifier_guidance, guidance_rows
from reference.sampling_plan import NO_NOISE, SAMPLERS, sampling_plan
from reference.score import check_process_schedule

__all__ = ["SAMPLERS", "Sampler", "sample"]

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


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype!r}")
    return dtype


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or len(shape) < 2:
        raise TypeError(f"shape must be a tuple (N, C, ...) of at least 2 ints, got {shape!r}")
    return tuple(_check_int(d, f"shape[{i}]", low=1) for i, d in enumerate(shape))


def _sample_indices(samples, n: int, device: torch.device) -> torch.Tensor:
    """The (n,) GLOBAL sample indices of the noise stream's counter (DESIGN contract 2)."""
    samples = _index_tensor(np.arange(n) if samples is None else samples, n, "samples", device)
    if samples.numel() and (int(samples.min()) < 0 or int(samples.max()) >= 2**32):
        raise ValueError(f"samples must lie in [0, 2**32), got min {int(samples.min())} "
                         f"max {int(samples.max())}")
    return samples


def _model_labels(model, y, n: int, guidance_scale: float, device: torch.device):
    """(y, labels of the model call): classifier-free guidance (Ho & Salimans 2022) calls the
    model once on [x; x] with labels [y; null class]."""
    null_class = getattr(model, "null_class", None)
    if y is not None:
        y = _index_tensor(y, n, "y", device)
        if null_class is not None:  # the house's one class-range check, on host values
            check_class_labels(y.cpu(), null_class, "y", allow_null=True)
    if guidance_scale == 1.0:
        return y, y
    if null_class is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model "
                         "(one with a null_class, e.g. ddpm.UNet with config.num_classes); "
                         f"{type(model).__name__} has none")
    if y is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs class labels y")
    return y, torch.cat([y, torch.full_like(y, null_class)])


class Sampler:
    """One sampling run: a `reference.sampling_plan`, a model and one `kernels.sampler_step` per step.

    Arguments are those of `sample` (see there). `run(x_T)` validates x_T and calls `loop(x_T)`,
    which is `reset()` then `step(x, k)` for k = 0..K-1: the public loop that `FastSampler`
    captures into a CUDA graph. Attributes: `plan` (the reference plan), `timesteps` (K,) int64
    NumPy (the model's t per step, descending), `num_steps` K, `samples` (N,) int64 on `device`,
    `coefficients` (K, C) float64 on `device` (columns `plan.coefficient_names`).
    """

    def __init__(self, model, shape, schedule, *, sampler: str = "ddim", num_steps: int | None = None,
                 eta: float = 0.0, spacing: str | None = None, seed: int = 0, samples=None, y=None,
                 guidance_scale: float = 1.0, clip=None, prediction: str = "epsilon",
                 variance: str = "fixed_small", device=None, dtype: torch.dtype = torch.float32,
                 backend: str = "auto", classifier=None, classifier_scale=1.0,
                 **score_options):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t[, y]), got {type(model).__name__}")
        self.plan = sampling_plan(check_process_schedule(schedule)[0], sampler, num_steps, spacing, eta,
                                  prediction, variance, clip, **score_options)
        self.dtype = _check_dtype(dtype)
        self.shape = _check_shape(shape)
        self.seed = check_seed(seed)
        self.guidance_scale = check_finite_number(guidance_scale, "guidance_scale")
        self.device = torch.device(device) if device is not None else (
            _model_device(model) or torch.device("cpu"))
        self.model, self.backend = model, backend
        self.samples = _sample_indices(samples, self.shape[0], self.device)
        self.y, self.y_model = _model_labels(model, y, self.shape[0], self.guidance_scale, self.device)
        self.guided = self.guidance_scale != 1.0
        self._load_plan()
        self._load_classifier(classifier, classifier_scale, y)
        self._x0_last = None  # DPM-Solver++(2M): the previous step's x0_hat

    # the plan's options, as the loop reads them
    kind = property(lambda self: self.plan.sampler)
    schedule = property(lambda self: self.plan.schedule)
    prediction = property(lambda self: self.plan.prediction)
    clip = property(lambda self: self.plan.clip)

    def _load_plan(self) -> None:
        """The plan's float64 rows on the device, and per-step host decisions as Python lists, so
        that `step` does no host work but the model call and one update."""
        plan = self.plan
        self.timesteps = np.array(plan.timesteps)
        self.num_steps = plan.num_steps
        self.coefficients = torch.as_tensor(np.array(plan.coefficients),  # writable copy
                                            dtype=torch.float64, device=self.device)
        self._streams = [int(s) for s in plan.noise_streams]
        self._kinds = list(plan.step_kinds)
        names = plan.coefficient_names
        self._snr = ([bool(c > 0) for c in plan.coefficients[:, names.index("snr")]]
                     if "snr" in names else [False] * plan.num_steps)
        self._snr_batch = ([bool(c) for c in plan.coefficients[:, names.index("snr_batch")]]
                           if "snr_batch" in names else [False] * plan.num_steps)
        # DPM-Solver++ runs its update in float32 for half-precision states (float64 stays
        # float64): bf16 coefficients would carry ~0.4% error into every step's sigma ratio
        self._compute_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self._state_coefficients = self.coefficients.to(self._compute_dtype)
        names = plan.coefficient_names
        self._second_order = ([bool(c) for c in plan.coefficients[:, names.index("second_order")]]
                              if "second_order" in names else None)
        batch = 2 * self.shape[0] if self.guided else self.shape[0]
        self.model_t = torch.as_tensor(self.timesteps, device=self.device).reshape(-1, 1).expand(-1, batch)

    def _load_classifier(self, classifier, classifier_scale, y) -> None:
        """Classifier guidance (Dhariwal & Nichol 2021; reference.classifier_guidance): the checks
        and the (K, N, 3) float64 rows (the plan's columns times each sample's scale), once."""
        self.classifier = classifier
        self._guidance_rows = self._class_ids = None
        if classifier is not None and getattr(self.model, "null_class", None) is None and not self.guided:
            self.y_model = None  # an unconditional model: y is the classifier's class only
        if classifier is None:
            if not isinstance(classifier_scale, (int, float)) or classifier_scale != 1.0:
                raise ValueError("classifier_scale needs a classifier (classifier=...)")
            return
        config = getattr(classifier, "config", None)
        if not callable(getattr(classifier, "log_prob_gradient", None)) or config is None:
            raise TypeError(f"classifier must be a ddpm.Classifier (log_prob_gradient and a config), "
                            f"got {type(classifier).__name__}")
        y_host = None if y is None else self.y.cpu().numpy()
        y_host, scale = check_classifier_guidance(config, self.shape, y_host, classifier_scale,
                                                  model_num_classes=getattr(self.model, "null_class", None))
        self._class_ids = torch.as_tensor(y_host, device=self.device)
        self._guidance_rows = torch.as_tensor(guidance_rows(self.plan, scale), dtype=torch.float64,
                                              device=self.device)

    def classifier_gradient(self, x: torch.Tensor, k: int) -> torch.Tensor | None:
        """grad_x log p_phi(y | x_t, t) at step k's x and model t (autograd), or None unguided."""
        if self.classifier is None:
            return None
        _, grad = self.classifier.log_prob_gradient(x, self.model_t[k][: x.shape[0]], self._class_ids)
        return grad

    # ------------------------------------------------------------------ the step rules

    def _dpm_solver_pp_2m(self, x: torch.Tensor, cond, uncond, k: int, grad=None) -> torch.Tensor:
        """`reference.dpm_solver_pp_2m_update` in tensor math (no fused kernel); with classifier
        guidance x0_hat += a0 g before the clip (Alg. 2's eps shift)."""
        if uncond is not None:  # the CFG combine in the update's precision, as the fused kernel
            cond, uncond = cond.to(self._compute_dtype), uncond.to(self._compute_dtype)
            cond = uncond + self.guidance_scale * (cond - uncond)
        c = self._state_coefficients[k]
        xc = x.to(self._compute_dtype)
        x0 = c[0] * xc + c[1] * cond.to(self._compute_dtype)
        if grad is not None:
            a0 = self._guidance_rows[k, :, 0].to(self._compute_dtype).reshape((-1,) + (1,) * (x.dim() - 1))
            x0 = x0 + a0 * grad.to(self._compute_dtype)
        if self.clip is not None:
            x0 = torch.clamp(x0, self.clip[0], self.clip[1])
        D = c[2] * x0 - c[3] * self._x0_last if self._second_order[k] else x0
        self._x0_last = x0
        return (c[4] * xc - c[5] * D).to(x.dtype)

    def _sampler_step(self, x: torch.Tensor, cond, uncond, k: int, grad=None) -> torch.Tensor:
        """DDPM Alg. 2 / DDIM Eq. 12: one fused `kernels.sampler_step` (noise drawn in-kernel),
        with the classifier-guidance term (Alg. 1 / Alg. 2 of Dhariwal & Nichol) in the same pass."""
        stream = self._streams[k]
        noisy = stream != NO_NOISE
        return kernels.sampler_step(
            x, cond, self.coefficients[k], model_output_uncond=uncond,
            guidance_scale=self.guidance_scale, clip=self.clip,
            seed=self.seed if noisy else None, samples=self.samples if noisy else None,
            stream=stream if noisy else 0, backend=self.backend, classifier_grad=grad,
            classifier_coefficients=None if grad is None else self._guidance_rows[k])

    def _learned_variance_step(self, x: torch.Tensor, cond, uncond, k: int, grad=None) -> torch.Tensor:
        """DDPM Alg. 2 with the learned variance (Improved DDPM Eq. 15): one fused
        `kernels.learned_variance_step` on the model's 2C channels. Under guidance the combine
        uncond + w (cond - uncond) runs first over all 2C channels (v included), as
        `reference.guided` does, in the storage precision (float32 at least). Classifier guidance
        (Alg. 1 of Dhariwal & Nichol, Sigma the learned per-element variance) joins the pass."""
        if uncond is not None:
            storage = torch.float64 if x.dtype == torch.float64 else torch.float32
            cond, uncond = cond.to(storage), uncond.to(storage)
            cond = (uncond + self.guidance_scale * (cond - uncond)).to(x.dtype)
        stream = self._streams[k]
        noisy = stream != NO_NOISE
        return kernels.learned_variance_step(
            x, cond, self.coefficients[k], clip=self.clip, seed=self.seed if noisy else None,
            samples=self.samples if noisy else None, stream=stream if noisy else 0,
            backend=self.backend, classifier_grad=grad,
            classifier_coefficients=None if grad is None else self._guidance_rows[k])

    def _langevin_step(self, x: torch.Tensor, cond, uncond, k: int) -> torch.Tensor:
        """A score-sampler step (`reference.langevin_step`): ONE fused `kernels.langevin_step`
        (noise in-kernel), or, for the snr corrector (Song et al. 2021, Alg. 4/5), z drawn once
        from the step's stream, the per-sample rows of `reference.langevin_snr_coefficients`
        formed on the device in float64, then the fused step with that z."""
        if uncond is not None:  # the CFG combine first, as reference.guided
            storage = torch.float64 if x.dtype == torch.float64 else torch.float32
            cond = (uncond.to(storage) + self.guidance_scale * (cond.to(storage) - uncond.to(storage))).to(x.dtype)
        row, stream = self.coefficients[k], self._streams[k]
        if self._snr[k]:
            z = kernels.normal(self.seed, self.samples, stream, tuple(x.shape[1:]), device=self.device,
                               dtype=torch.float32, backend=self.backend)
            n = x.shape[0]
            grad_norm = torch.linalg.vector_norm(row[1] * cond.reshape(n, -1).double(), dim=1)
            noise_norm = torch.linalg.vector_norm(z.reshape(n, -1).double(), dim=1)
            if self._snr_batch[k]:  # Song's code and diffusers: batch means (not batch invariant)
                grad_norm, noise_norm = grad_norm.mean().expand(n), noise_norm.mean().expand(n)
            ratio = torch.where(grad_norm > 0, row[4] * noise_norm / grad_norm, torch.zeros_like(grad_norm))
            step = 2.0 * row[5] * ratio * ratio
            rows = torch.stack([row[0].expand(n), row[1].expand(n), step, torch.sqrt(2.0 * step)], dim=1)
            return kernels.langevin_step(x, cond, rows, noise=z.to(x.dtype), backend=self.backend)
        noisy = stream != NO_NOISE
        return kernels.langevin_step(x, cond, row[:4], seed=self.seed if noisy else None,
                                     samples=self.samples if noisy else None,
                                     stream=stream if noisy else 0, backend=self.backend)

    _RULES = {"sampler_step": _sampler_step, "dpm_solver_pp_2m": _dpm_solver_pp_2m,
              "learned_variance_step": _learned_variance_step, "langevin_step": _langevin_step}

    # ------------------------------------------------------------------ the loop

    def initial_noise(self) -> torch.Tensor:
        """x_T ~ N(0, I) from stream SAMPLER_INIT_STREAM (float32 normals, then cast)."""
        z = kernels.normal(self.seed, self.samples, SAMPLER_INIT_STREAM, self.shape[1:],
                           device=self.device, dtype=torch.float32, backend=self.backend)
        if self.plan.init_scale != 1.0:  # a VE score plan: N(0, sigma_max^2 I), scaled in float64
            return (self.plan.init_scale * z.double()).to(self.dtype)
        return z.to(self.dtype)

    def model_output(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond or None): one model call, on [x; x] with labels [y; null] when guided.

        Under variance="learned" the model returns 2C channels; steps that do not read v get the
        mean part (the first C)."""
        t = self.model_t[k]
        if self.guided:
            out = self.model(torch.cat([x, x]), t, self.y_model)
        elif self.y_model is not None:
            out = self.model(x, t, self.y_model)
        else:
            out = self.model(x, t)
        self._check_model_output(out, x)
        if self.plan.learned_variance and self._kinds[k] not in READS_VARIANCE:
            out = out[:, : x.shape[1]]
        if self.guided:
            cond, uncond = out.chunk(2)
            return cond, uncond
        return out, None

    def _check_model_output(self, out, x: torch.Tensor) -> None:
        """The model output's shape: x's (2C channels under variance="learned"), batch doubled
        under guidance; a 2C output without variance="learned" is named as such."""
        batch = 2 * x.shape[0] if self.guided else x.shape[0]
        channels = x.shape[1] * (2 if self.plan.learned_variance else 1)
        expected = (batch, channels) + tuple(x.shape[2:])
        if isinstance(out, torch.Tensor) and tuple(out.shape) == expected:
            return
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if self.plan.learned_variance:
            raise ValueError(f"model output must have shape {expected} for variance='learned' (2 x "
                             f"the {x.shape[1]} image channels: the mean part, then v), got {got}: "
                             "does the model have the extra output channels?")
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (batch, 2 * x.shape[1]) + tuple(x.shape[2:]):
            raise ValueError(f"model output has 2 x {x.shape[1]} channels ({got}, a learned-variance "
                             f"model?) but variance={self.plan.variance!r}: pass variance='learned'")
        raise ValueError(f"model output must have shape {expected} (that of its input), got {got}")

    def reset(self) -> None:
        """Forget what one step hands the next (DPM-Solver++'s x0_hat): before step 0."""
        self._x0_last = None

    def step(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x at timesteps[k] -> x at timesteps_prev[k] (t = -1 after the last step).

        Steps run in order k = 0..K-1 after `reset()` (a DPM-Solver++ step reads step k-1's x0_hat).
        """
        cond, uncond = self.model_output(x, k)
        if self.classifier is None:
            return self._RULES[self._kinds[k]](self, x, cond, uncond, k)
        return self._RULES[self._kinds[k]](self, x, cond, uncond, k, self.classifier_gradient(x, k))

    def loop(self, x: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
        """Every step from x = x_T (a `dtype` tensor on `device`, not validated) to x_0.

        No host synchronisation unless `callback` is given: the sequence FastSampler captures.
        """
        self.reset()
        for k in range(self.num_steps):
            x = self.step(x, k)
            if callback is not None:
                callback(k, int(self.timesteps[k]), x)
        return x

    def copy_inputs_(self, other: "Sampler") -> None:
        """Copy `other`'s sample indices and model labels into this sampler's buffers, in place
        (a captured graph reads them); `other` has this sampler's plan, batch and guidance."""
        if other.shape != self.shape or (other.y_model is None) != (self.y_model is None):
            raise ValueError(f"other must have shape {self.shape} and labels "
                             f"{'given' if self.y_model is not None else 'absent'}, as this sampler")
        self.samples.copy_(other.samples)
        if self.y_model is not None:
            self.y_model.copy_(other.y_model)
        if self._class_ids is not None:  # classifier guidance: the classes to guide to
            self._class_ids.copy_(other._class_ids)

    def _check_x_T(self, x_T) -> torch.Tensor:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"x_T must be a torch.Tensor or None, got {type(x_T).__name__}")
        if tuple(x_T.shape) != self.shape:
            raise ValueError(f"x_T must have shape {self.shape}, got {tuple(x_T.shape)}")
        if not x_T.is_floating_point():
            raise TypeError(f"x_T must be floating point, got dtype {x_T.dtype}")
        if not bool(torch.isfinite(x_T).all()):
            raise ValueError("x_T contains NaN or inf")
        return x_T.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def run(self, x_T: torch.Tensor | None = None, callback: Callback | None = None) -> torch.Tensor:
        """The whole loop from x_T (drawn from the noise stream when None) to x_0."""
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable as callback(step, t, x), got {type(callback).__name__}")
        x = self.initial_noise() if x_T is None else self._check_x_T(x_T)
        was_training = isinstance(self.model, nn.Module) and self.model.training
        if was_training:
            self.model.eval()  # dropout off: a seed must give the same images
        try:
            return self.loop(x, callback)
        finally:
            if was_training:
                self.model.train()


def sample(model, shape, schedule, *, sampler: str = "ddim", num_steps: int | None = None,
           eta: float = 0.0, spacing: str | None = None, seed: int = 0, samples=None, y=None,
           guidance_scale: float = 1.0, clip=None, prediction: str = "epsilon",
           variance: str = "fixed_small", device=None, dtype: torch.dtype = torch.float32,
           x_T: torch.Tensor | None = None, callback: Callback | None = None,
           backend: str = "auto", classifier=None, classifier_scale=1.0,
           **score_options) -> torch.Tensor:
    """Draw samples x_0 of `shape` (N, C, H, W) from a diffusion model.

    model: `model(x, t)` or, with `y`, `model(x, t, y)` -> output shaped like x (eps, x0 or v per
        `prediction`); x (N, C, H, W) in `dtype`, t (N,) int64. A ddpm.UNet qualifies.
    schedule: a reference.Schedule (the training schedule).
    sampler: "ddpm" (ancestral, DDPM Alg. 2; all T steps, or num_steps on the respaced schedule
        of Improved DDPM Sec. 4), "ddim" (Song et al. 2021 Eq. 12, with eta), or "dpm_solver++"
        (Lu et al. 2022, 2M). num_steps None: T for ddpm, min(50, T) ddim, min(20, T) dpm_solver++
        (`reference.default_num_steps`).
    spacing: "leading" | "trailing" | "linspace" timestep subsets (reference.timestep_subset);
        None: "trailing" for dpm_solver++, else "leading" (reference.sampling_plan's defaults).
    seed, samples: noise-stream seed and the (N,) GLOBAL sample indices (default arange(N)).
    y: (N,) class ids in [0, model.null_class]; guidance_scale w != 1 runs classifier-free
        guidance out = uncond + w (cond - uncond) (Ho & Salimans 2022) with one batched call.
    clip: (lo, hi) clips the predicted x0; variance "fixed_small" | "fixed_large" (ddpm only) |
        "learned" (Improved DDPM: the model outputs 2C channels, its prediction then v; ddpm
        samples with sigma^2 = exp(frac log beta_t + (1 - frac) log beta_tilde_t), frac =
        (v + 1) / 2, full or respaced; ddim and dpm_solver++ use the prediction half).
    device/dtype: of the sampler's state (default: the model's device; float32).
    x_T: start here instead of the stream's x_T. callback(step, t, x) after every step.
    backend: kernels backend ("auto" | "triton" | "cupy" | "torch").
    classifier, classifier_scale: classifier guidance (Dhariwal & Nichol 2021) towards the classes
        `y` with a noise-aware `ddpm.Classifier`: scale s >= 0 (a number or (N,)); ddpm shifts the
        step's mean by s Sigma grad log p(y | x_t) (Alg. 1; with variance="learned" Sigma is the
        model's per-element variance), ddim and dpm_solver++ shift eps_hat by
        -s sqrt(1 - alpha_bar_t) grad (Alg. 2); composes with guidance_scale (CFG) when the model
        is class-conditional. The gradient comes from autograd; the term joins the fused step.
    The score view: sampler "langevin" | "annealed_langevin" | "pc" (Song & Ermon 2019, Song et
        al. 2021) over a VP schedule (a DDPM eps-model, score = -eps / sqrt(1 - alpha_bar_t)) or a
        reference.VESchedule (a score model: the UNet predicts z, score = -out / sigma_t), with
        score_options step_size, level, steps_per_level, snr, corrector_steps, predictor,
        snr_norms, denoise (reference.score_sampling_plan; num_steps counts Langevin steps for langevin,
        levels for the others).
    Returns x_0, (N, C, H, W) in `dtype`. Runs under torch.no_grad(); a model in training mode
    is switched to eval() for the run and back afterwards.
    """
    runner = Sampler(model, shape, schedule, sampler=sampler, num_steps=num_steps, eta=eta,
                     spacing=spacing, seed=seed, samples=samples, y=y, guidance_scale=guidance_scale,
                     clip=clip, prediction=prediction, variance=variance, device=device, dtype=dtype,
                     backend=backend, classifier=classifier, classifier_scale=classifier_scale,
                     **score_options)
    return runner.run(x_T=x_T, callback=callback)
