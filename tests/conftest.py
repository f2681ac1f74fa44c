"""Suite-wide setup: the Triton interpreter on machines without CUDA, hypothesis profiles."""

import os

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before any
# kernels module is imported. Without CUDA, every Triton kernel runs in the interpreter.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# "ci" (the default): deterministic examples, no per-example deadline (the interpreter is slow).
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", deadline=None, max_examples=300, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
