"""The fast sampler: the whole denoising loop captured once in a CUDA graph and replayed.

`FastSampler` runs `ddpm.Sampler.loop` itself (the plan of `reference.sampling_plan`: same
timesteps, same float64 step coefficients, one `kernels.sampler_step` per DDPM/DDIM step, or one
`kernels.learned_variance_step` per DDPM step with variance="learned", the same noise stream)
on a copy
of the model prepared for speed: bf16 weights and activations, channels_last memory format,
fused kernels (`backend="auto"` picks Triton on CUDA). On CUDA the first call for a batch size
records every step (model forward + fused update) into one `torch.cuda.CUDAGraph`; later calls
only copy the new x_T, sample indices and labels into the graph's static buffers and replay it:
one launch for the whole loop, no Python or host work per step.

What a replay may change without re-capture: the seed of x_T (drawn outside the graph), the
sample indices and the class labels. The seed of the per-step noise (DDPM, DDIM with eta > 0)
is a kernel argument baked into the graph, so a new seed there re-captures (one eager run's
cost; graphs are cached per (batch, seed) for stochastic samplers and per batch otherwise, the
`max_graphs` most recent kept: each graph holds its own memory pool).
To draw more images, keep the seed and pass the next global sample indices
(`samples=range(k * n, (k + 1) * n)`): they live in a device buffer, so no re-capture, and
image i is the same as in any other batching (DESIGN contract 2).

Classifier guidance (`classifier=`, `classifier_scale=`; Dhariwal & Nichol 2021, as in
`ddpm.sample`): the classifier is copied to the device in eval mode (its own dtype: the
gradient is taken there and cast to the state's dtype) and its autograd gradient joins each
fused step; the call's `y` are the classes to guide to, copied into the graph's label buffer
like the model's labels. The score samplers ("langevin", "annealed_langevin", "pc", over a VP
schedule or a reference.VESchedule) take their options (step_size, snr, ...) as keywords.
On CUDA the guided graph also records the classifier's backward; only the eager path is
tested here (no GPU on the machine that wrote it).

Without CUDA (or with cuda_graph=False) the same prepared model runs the same loop eagerly. On
the CPU the result is identical to `ddpm.sample(...)` with the same dtype; on CUDA the copy's
channels_last layout (on by default there) may select other convolution algorithms than
`ddpm.sample` on contiguous tensors, so agreement is to the dtype's round-off.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .cpu_speed import check_compiler, cpu_bf16_support
from .samplers import Sampler

log = logging.getLogger("ddpm.fast_sampler")

__all__ = ["FastSampler"]


@dataclass
class _Captured:
    sampler: Sampler
    graph: "torch.cuda.CUDAGraph | None"
    x_T: torch.Tensor          # static input buffer (replays read it)
    x_0: torch.Tensor | None   # static output buffer (replays write it)


class FastSampler:
    """Sample from a diffusion model as fast as this device allows.

    Args:
        model: the eps/x0/v model, e.g. a trained `ddpm.UNet` (it is copied, not modified).
        schedule: the training schedule (a reference.Schedule).
        image_shape: (C, H, W); default from `model.config` when the model has one.
        sampler, num_steps, eta, spacing, clip, prediction, variance, guidance_scale: as in
            `ddpm.sample`.
        dtype: dtype of the model copy and of the sampler state; default bfloat16 on CUDA,
            float32 elsewhere.
        channels_last: run the model copy and the state in channels_last (default on CUDA).
        cuda_graph: capture and replay the loop in a CUDA graph (CUDA only; default True).
        device: where to run (default: the model's device).
        backend: kernels backend for the fused update ("auto" = triton on CUDA).
        max_graphs: how many captured graphs (batch sizes / seeds) to keep; the least recently
            used is dropped first.
        compile: run the model copy through torch.compile (inductor; on the CPU its C++ code
            generation, which needs a C++ compiler: checked here). The CPU mode: without CUDA the
            loop runs eagerly, so this (with channels_last, and dtype=torch.bfloat16 on CPUs with
            native bf16, see ddpm.cpu_speed) is what makes it faster than `ddpm.sample` there.
        classifier, classifier_scale: classifier guidance as in `ddpm.sample` (a noise-aware
            `ddpm.Classifier`, copied; one scale s >= 0 for every call); `y` of each call then
            names the classes to guide to.
        **score_options: the score samplers' options (step_size, level, steps_per_level, snr,
            corrector_steps, predictor, snr_norms, denoise), as in `ddpm.sample`.

    Call: `fast(n, seed=0, samples=None, y=None) -> x_0 (n, C, H, W)` in `dtype`.
    """

    def __init__(self, model: nn.Module, schedule, *, image_shape=None, sampler: str = "ddim",
                 num_steps: int | None = None, eta: float = 0.0, spacing: str | None = None,
                 guidance_scale: float = 1.0, clip=None, prediction: str = "epsilon",
                 variance: str = "fixed_small", dtype: torch.dtype | None = None,
                 channels_last: bool | None = None, cuda_graph: bool = True, device=None,
                 backend: str = "auto", max_graphs: int = 4, compile: bool = False,
                 classifier: nn.Module | None = None, classifier_scale: float = 1.0, **score_options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if on_cuda else torch.float32)
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {self.dtype!r}")
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.use_graph = bool(cuda_graph) and on_cuda
        if image_shape is None:
            config = getattr(model, "config", None)
            if config is None:
                raise ValueError("image_shape is required for a model without a .config")
            image_shape = (config.in_channels, config.image_size, config.image_size)
        self.image_shape = tuple(int(d) for d in image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
        self.schedule = schedule
        self.options = dict(sampler=sampler, num_steps=num_steps, eta=eta, spacing=spacing,
                            guidance_scale=guidance_scale, clip=clip, prediction=prediction,
                            variance=variance, backend=backend, **score_options)
        self.classifier = self._prepare_classifier(classifier, classifier_scale)
        if self.classifier is not None:
            self.options.update(classifier=self.classifier, classifier_scale=float(classifier_scale))
        elif not isinstance(classifier_scale, (int, float)) or classifier_scale != 1.0:
            raise ValueError("classifier_scale needs a classifier (classifier=...)")
        # A private copy in the fast dtype/layout: the caller's model is left as it was.
        fast = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        if self.channels_last:
            fast = fast.to(memory_format=torch.channels_last)
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got {compile!r}")
        self.compiled = compile
        if compile:  # the CPU mode's model: inductor (C++ on the CPU), compiled at the first call
            if self.device.type == "cpu":
                check_compiler("FastSampler(compile=True)")
            fast = torch.compile(fast)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            supported, why = cpu_bf16_support()
            if not supported:
                log.warning("FastSampler dtype=bfloat16 on the CPU runs emulated: %s", why)
        self.model = fast
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive int, got {max_graphs!r}")
        self.max_graphs = max_graphs
        self._cache: "OrderedDict[tuple, _Captured]" = OrderedDict()
        # Validate every option once, now, on a batch of one (raises like ddpm.sample would).
        probe = self._make_sampler(1, seed=0, samples=None, y=self._validation_labels())
        self.plan = probe.plan
        # the per-step noise's seed is baked into a graph: a stochastic plan captures per seed
        self.stochastic = self.plan.needs_noise

    # ------------------------------------------------------------------ helpers

    def _prepare_classifier(self, classifier, classifier_scale):
        """A private eval-mode copy of the classifier on our device (None without one)."""
        if classifier is None:
            return None
        if not isinstance(classifier, nn.Module) or not callable(getattr(classifier, "log_prob_gradient", None)):
            raise TypeError(f"classifier must be a ddpm.Classifier, got {type(classifier).__name__}")
        if isinstance(classifier_scale, bool) or not isinstance(classifier_scale, (int, float)):
            raise TypeError(f"classifier_scale must be one number for FastSampler (each call's batch "
                            f"size may differ), got {type(classifier_scale).__name__}")
        return copy.deepcopy(classifier).to(device=self.device).eval()

    def _validation_labels(self):
        """Labels for validating the options at construction (guidance needs some)."""
        if self.options["guidance_scale"] != 1.0 or self.classifier is not None:
            return torch.zeros(1, dtype=torch.int64, device=self.device)
        return None

    def _make_sampler(self, n: int, seed: int, samples, y) -> Sampler:
        return Sampler(self.model, (n,) + self.image_shape, self.schedule, seed=seed, samples=samples,
                       y=y, device=self.device, dtype=self.dtype, **self.options)

    def _state_buffer(self, n: int) -> torch.Tensor:
        x = torch.empty((n,) + self.image_shape, device=self.device, dtype=self.dtype)
        return x.to(memory_format=torch.channels_last) if self.channels_last else x

    def _device(self):
        """Graphs capture and replay on the current CUDA device: make it ours."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _capture(self, n: int, seed: int, samples, y) -> _Captured:
        runner = self._make_sampler(n, seed, samples, y)
        x_T = self._state_buffer(n)
        if not self.use_graph:
            return _Captured(runner, None, x_T, None)
        x_T.copy_(runner.initial_noise())
        # Warm up on a side stream (Triton compilation, cuDNN/cuBLAS workspaces), then record.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad():
            runner.loop(x_T)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            x_0 = runner.loop(x_T)
        return _Captured(runner, graph, x_T, x_0)

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    def __call__(self, n: int, *, seed: int = 0, samples=None, y=None) -> torch.Tensor:
        """Draw n samples: x_T from the noise stream for (seed, samples), then the captured loop.

        samples: the (n,) GLOBAL sample indices (default arange(n)); y: (n,) class labels.
        Returns a new (n, C, H, W) tensor in `dtype` (the graph's buffers are not exposed).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        # A fresh Sampler validates this call's seed, samples and labels exactly as ddpm.sample does.
        fresh = self._make_sampler(n, seed, samples, y)
        key = (n, y is None) + ((seed,) if self.stochastic else ())
        entry = self._cache.get(key)
        if entry is None:
            while len(self._cache) >= self.max_graphs:
                self._cache.popitem(last=False)  # least recently used: its memory pool goes too
            with self._device():
                entry = self._capture(n, seed, samples, y)
            self._cache[key] = entry
        self._cache.move_to_end(key)
        runner = entry.sampler
        runner.copy_inputs_(fresh)
        entry.x_T.copy_(fresh.initial_noise())
        if entry.graph is None:
            return runner.loop(entry.x_T).clone()
        with self._device():
            entry.graph.replay()
        return entry.x_0.clone()

    def reset(self) -> None:
        """Drop every captured graph (frees their memory pools)."""
        self._cache.clear()
