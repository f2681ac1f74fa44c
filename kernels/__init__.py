"""Fused kernels for diffusion models and their dispatch (DESIGN contract 4; API in README.md).

Each op has three backends: "triton", "cupy" and "torch" (plain torch, any device, float64 too).
backend="auto" picks triton for CUDA tensors and torch elsewhere; DDPM_KERNELS_BACKEND overrides
"auto" for a whole run. Depends on torch (+ triton, cupy where present), never on ddpm.
"""

from .dispatch import BACKEND_ENV, BACKENDS, available_backends, resolve_backend
from .forward_process import q_sample
from .group_norm import GroupNormSiLU, GroupNormSiLUFunction, group_norm_silu
from .noise import normal
from .sampler_update import ddim_step, ddpm_step, sampler_step

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "available_backends",
    "resolve_backend",
    "normal",
    "q_sample",
    "sampler_step",
    "ddpm_step",
    "ddim_step",
    "group_norm_silu",
    "GroupNormSiLU",
    "GroupNormSiLUFunction",
]
