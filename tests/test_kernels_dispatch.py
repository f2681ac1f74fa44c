"""Backend dispatch (DESIGN contract 4): "auto", explicit choice, DDPM_KERNELS_BACKEND, clear errors.

- auto: triton for CUDA tensors of float32/bf16/fp16, torch for CPU tensors and float64;
- the environment variable replaces "auto" for a whole run (explicit arguments win);
- a backend that cannot run raises RuntimeError naming it and the reason (cupy not installed,
  no CUDA, triton on CPU tensors without the interpreter); unknown names raise ValueError.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import kernels
import kernels.triton as triton_package
from kernels import dispatch
from tests.kernel_backends import HAS_CUDA, INTERPRETED

CPU = torch.device("cpu")


def test_auto_picks_torch_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    assert kernels.resolve_backend("auto", CPU, torch.float32) == "torch"
    assert kernels.resolve_backend("auto", CPU, torch.float64) == "torch"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none here)")
def test_auto_picks_triton_for_cuda_tensors_and_torch_for_float64(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    cuda = torch.device("cuda")
    assert kernels.resolve_backend("auto", cuda, torch.bfloat16) == "triton"
    assert kernels.resolve_backend("auto", cuda, torch.float64) == "torch"


def test_explicit_backend_wins_and_torch_is_always_available(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cupy")
    assert kernels.resolve_backend("torch", CPU, torch.float32) == "torch"
    assert "torch" in kernels.available_backends("cpu")


@pytest.mark.skipif(not INTERPRETED, reason="the Triton interpreter is used only without CUDA")
def test_environment_variable_replaces_auto_for_the_whole_run(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    assert kernels.resolve_backend("auto", CPU, torch.float32) == "triton"
    # and the ops follow it: the Triton launcher is what runs
    import kernels.triton.q_sample as triton_q_sample

    calls = []
    original = triton_q_sample.q_sample
    monkeypatch.setattr(triton_q_sample, "q_sample", lambda *a: calls.append(1) or original(*a))
    x0, t = torch.randn(2, 3, 4), torch.tensor([1, 2])
    tables = [torch.linspace(0.9, 0.1, 10), torch.linspace(0.1, 0.9, 10)]
    via_env, _ = kernels.q_sample(x0, t, *tables, seed=3)
    explicit, _ = kernels.q_sample(x0, t, *tables, seed=3, backend="triton")
    assert calls == [1, 1] and torch.equal(via_env, explicit)
    monkeypatch.setenv(dispatch.BACKEND_ENV, "torch")
    assert kernels.resolve_backend("auto", CPU, torch.float32) == "torch"


def test_bad_environment_variable_is_a_value_error(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="DDPM_KERNELS_BACKEND"):
        kernels.resolve_backend("auto", CPU, torch.float32)
    with pytest.raises(ValueError, match="DDPM_KERNELS_BACKEND"):
        kernels.normal(0, [0], 0, (3,))


@pytest.mark.parametrize("name", ["", "Triton", "cuda", None, 3])
def test_unknown_backend_is_a_value_error(name):
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.resolve_backend(name, CPU, torch.float32)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed here")
def test_cupy_without_cupy_is_a_runtime_error_naming_it():
    with pytest.raises(RuntimeError, match="'cupy' is not available: cupy is not installed"):
        kernels.normal(0, [0], 0, (3,), backend="cupy")
    with pytest.raises(RuntimeError, match="cupy"):
        kernels.group_norm_silu(torch.randn(2, 4, 3), None, None, 2, backend="cupy")


def test_cupy_on_cpu_tensors_is_a_runtime_error():
    reason = dispatch.backend_unavailable_reason("cupy", CPU)
    assert reason is not None and ("CUDA" in reason or "not installed" in reason)


def test_triton_on_cpu_without_interpreter_is_a_runtime_error(monkeypatch):
    monkeypatch.setattr(triton_package, "_DECORATED_MODE", False)
    with pytest.raises(RuntimeError, match="'triton' is not available: .*TRITON_INTERPRET=1"):
        kernels.resolve_backend("triton", CPU, torch.float32)
    with pytest.raises(RuntimeError, match="triton"):
        kernels.sampler_step(torch.zeros(1, 2), torch.zeros(1, 2), np.zeros(8), backend="triton")


def test_fused_backends_reject_float64_with_a_type_error():
    """float64 on a fused backend is a TypeError wherever it runs: the dtype is checked before the
    backend's availability (on a GPU machine CPU tensors + triton would otherwise be a
    RuntimeError first). kernels.normal's float64 is the float32 draw stored as float64: allowed."""
    for device in (CPU, torch.device("cuda")):
        for backend in ("triton", "cupy"):
            with pytest.raises(TypeError, match="float64.*backend='torch'"):
                kernels.resolve_backend(backend, device, torch.float64)
    with pytest.raises(TypeError, match="float64"):
        kernels.q_sample(torch.zeros(2, 3, dtype=torch.float64), 0, torch.ones(10), torch.ones(10),
                         torch.zeros(2, 3, dtype=torch.float64), backend="triton")
    if INTERPRETED or HAS_CUDA:
        device = CPU if INTERPRETED else torch.device("cuda")
        z = kernels.normal(0, [0], 0, (3,), dtype=torch.float64, device=device, backend="triton")
        assert z.dtype == torch.float64


def test_validation_happens_before_backend_resolution_for_bad_tensors(monkeypatch):
    """Bad inputs are reported as such even when the chosen backend could not run."""
    monkeypatch.setattr(triton_package, "_DECORATED_MODE", False)
    with pytest.raises(ValueError, match="model_output must have the shape"):
        kernels.sampler_step(torch.zeros(1, 2), torch.zeros(1, 3), np.zeros(8), backend="triton")
    with pytest.raises(ValueError, match="groups"):
        kernels.group_norm_silu(torch.zeros(1, 6, 2), None, None, 4, backend="triton")


def test_sync_checks_environment_variable_checks_device_values_on_the_host(monkeypatch):
    """With DDPM_KERNELS_SYNC_CHECKS=1, values are range-checked eagerly whatever the device
    (here exercised on the CPU, where checks are always eager: the switch must not turn them off)."""
    monkeypatch.setenv("DDPM_KERNELS_SYNC_CHECKS", "1")
    tables = [torch.ones(10), torch.zeros(10)]
    with pytest.raises(ValueError, match="t must lie"):
        kernels.q_sample(torch.zeros(2, 3), torch.tensor([0, 10]), *tables, seed=0)
    monkeypatch.setenv("DDPM_KERNELS_SYNC_CHECKS", "0")
    with pytest.raises(ValueError, match="t must lie"):
        kernels.q_sample(torch.zeros(2, 3), torch.tensor([0, 10]), *tables, seed=0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none here)")
def test_wrong_device_between_arguments_is_a_value_error_on_cuda():
    x_t = torch.zeros(2, 3, device="cuda")
    with pytest.raises(ValueError, match="model_output must be on"):
        kernels.sampler_step(x_t, torch.zeros(2, 3), np.zeros(8))


def test_wrong_device_between_arguments_is_a_value_error():
    """(meta tensors stand in for a second device on a machine without CUDA)"""
    with pytest.raises(ValueError, match="noise must be on"):
        kernels.sampler_step(torch.zeros(2, 3), torch.zeros(2, 3), np.ones(8),
                             noise=torch.zeros(2, 3, device="meta"))
    with pytest.raises(ValueError, match="weight must be on"):
        kernels.group_norm_silu(torch.zeros(2, 4, 3), torch.ones(4, device="meta"), None, 2)
