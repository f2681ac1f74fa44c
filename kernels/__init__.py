"""Fused kernels for diffusion models and their dispatch (DESIGN contract 4; API in README.md).

Each op has three backends: "triton", "cupy" and "torch" (plain torch, any device, float64 too).
backend="auto" picks triton for CUDA tensors and torch elsewhere; DDPM_KERNELS_BACKEND overrides
"auto" for a whole run. Depends on torch (+ triton, cupy where present), never on ddpm.
"""

from .dispatch import BACKEND_ENV, BACKENDS, available_backends, resolve_backend
from .q_sample import q_sample
from .group_norm_silu import GroupNormSiLU, GroupNormSiLUFunction, group_norm_silu
from .normal import normal
from .sampler_step import sampler_step
from .learned_variance_step import learned_variance_step
from .langevin_step import langevin_step

# One name per op (kernels/README.md): reference.<op>, kernels/<op>.py, kernels/{triton,cupy}/<op>.py,
# tests/test_<op>_*.py and the benchmark rows "<op>..." all use it.
OPS = ("normal", "q_sample", "sampler_step", "learned_variance_step", "group_norm_silu")
OPS = OPS + ("langevin_step",)  # the score samplers' update (issue 13)

__all__ = [
    "OPS",
    "BACKENDS",
    "BACKEND_ENV",
    "available_backends",
    "resolve_backend",
    "normal",
    "q_sample",
    "sampler_step",
    "learned_variance_step",
    "langevin_step",
    "group_norm_silu",
    "GroupNormSiLU",
    "GroupNormSiLUFunction",
]

# DiT (issue 15): LayerNorm + adaLN modulation, the transformer's analogue of group_norm_silu
from .layer_norm_modulate import layer_norm_modulate  # noqa: E402

OPS = OPS + ("layer_norm_modulate",)
__all__ += ["layer_norm_modulate"]
