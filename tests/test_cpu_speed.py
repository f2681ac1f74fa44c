"""Issue 17's CPU speed paths: the torch backend's GroupNorm+SiLU on centred input, the Trainer's
channels_last / fused AdamW / bf16 options, bf16 detection, FastSampler's compile option.

The GroupNorm+SiLU numbers are also checked, per dtype and layout with hypothesis, by
tests/test_group_norm_silu_kernels.py (torch-cpu parameter); here: the cases that motivated the
centring (nearly equal values, groups of one value), the gradient through the detached mean, and
that the new path and the op-by-op form agree.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import kernels
import reference
from ddpm import FastSampler, UNet, cpu_speed
from ddpm.data import load_digits
from ddpm.train import TrainConfig, Trainer
from kernels import group_norm_silu_torch, torch_ops
from tests.helpers import assert_close


def _reference(x, w, b, shift, groups, eps, dy):
    as64 = lambda v: None if v is None else v.detach().double().numpy()  # noqa: E731
    y, cache = reference.group_norm_silu(as64(x), as64(w), as64(b), groups, eps, True, shift=as64(shift))
    dx, dw, db = reference.group_norm_silu_backward(as64(dy), cache)
    return y, dx, dw, db


@pytest.mark.parametrize("case", ["nearly_equal", "one_value_per_group", "large_offset", "channels_last"])
def test_centred_native_group_norm_matches_the_reference(case):
    """torch's fused GroupNorm alone loses ulp(|x| rstd |w|) on these; the centred input does not."""
    gen = torch.Generator().manual_seed(0)
    shape, groups = {"nearly_equal": ((2, 4, 3, 3), 2), "one_value_per_group": ((3, 4), 4),
                     "large_offset": ((2, 6, 4, 4), 3), "channels_last": ((2, 6, 5, 3), 3)}[case]
    x = torch.randn(shape, generator=gen)
    if case == "nearly_equal":
        x = 1.5 + 1e-4 * x
    if case == "large_offset":
        x = 300.0 + x
    if case == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.randn(shape[1], generator=gen) + 1, torch.randn(shape[1], generator=gen)
    dy = torch.randn(shape, generator=gen)
    leaves = [v.clone().requires_grad_() for v in (x, w, b)]
    y = kernels.group_norm_silu(*leaves, groups, 1e-6, backend="torch")
    y.backward(dy)
    y_ref, dx_ref, dw_ref, db_ref = _reference(x, w, b, None, groups, 1e-6, dy)
    # reference tolerance of float32 (tests/kernel_backends.TOLERANCES); dx scales with rstd
    rstd = 1.0 / np.sqrt(np.var(x.double().numpy().reshape(shape[0], groups, -1), axis=2).max() + 1e-6)
    assert_close(y, y_ref, atol=1e-5, rtol=1e-5, name="y")
    assert_close(leaves[0].grad, dx_ref, atol=1e-5 * max(1.0, rstd * 1e-3), rtol=1e-4, name="dx")
    assert_close(leaves[1].grad, dw_ref, atol=1e-4, rtol=1e-5, name="dweight")
    assert_close(leaves[2].grad, db_ref, atol=1e-4, rtol=1e-5, name="dbias")
    if case == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_centred_path_agrees_with_the_op_by_op_form_with_shift_and_half_types():
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 8, 4, 4, generator=gen).to(dtype).requires_grad_()
        shift = torch.randn(3, 8, generator=gen).requires_grad_()
        w = torch.randn(8, generator=gen).requires_grad_()
        b = torch.randn(8, generator=gen).requires_grad_()
        dy = torch.randn(3, 8, 4, 4, generator=gen).to(dtype)
        ours = group_norm_silu_torch.group_norm_silu(x, w, b, 4, 1e-5, True, shift)
        grads = torch.autograd.grad(ours, (x, w, b, shift), dy)
        plain = torch_ops.group_norm_silu(x, w, b, 4, 1e-5, True, shift)
        plain_grads = torch.autograd.grad(plain, (x, w, b, shift), dy)
        assert ours.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert_close(ours.float(), plain.float().detach().numpy(), atol=tol, rtol=tol, name=f"{dtype} y")
        for name, g, p in zip(("dx", "dw", "db", "dshift"), grads, plain_grads):
            assert_close(g.float(), p.float().numpy(), atol=tol * 10, rtol=tol, name=f"{dtype} {name}")


def test_inference_runs_in_place_without_touching_the_input():
    x = torch.randn(2, 4, 3, 3)
    before = x.clone()
    with torch.no_grad():
        y = kernels.group_norm_silu(x, torch.ones(4), torch.zeros(4), 2, 1e-5, backend="torch")
    assert torch.equal(x, before) and y.data_ptr() != x.data_ptr()


def test_bf16_detection_reads_the_cpu_flags(monkeypatch):
    assert cpu_speed.parse_bf16_support({"avx2", "amx_bf16"}, "AVX512")[0]
    assert cpu_speed.parse_bf16_support({"avx512_bf16"}, "AVX512")[0]
    supported, why = cpu_speed.parse_bf16_support({"avx2", "fma"}, "AVX2")
    assert not supported and "amx_bf16" in why and "AVX2" in why
    cpu_speed.cpu_bf16_support.cache_clear()
    monkeypatch.setenv("DDPM_CPU_BF16", "1")
    try:
        assert cpu_speed.cpu_bf16_support()[0]
    finally:
        cpu_speed.cpu_bf16_support.cache_clear()


def _trainer(**options):
    torch.manual_seed(0)
    model = UNet(reference.UNetConfig.digits8(num_classes=10, ch=8, groups=4), zero_init=False)
    return Trainer(model, reference.make_schedule("linear", 1000),
                   TrainConfig(batch_size=8, seed=0, **options), load_digits(8, 1))


def test_trainer_uses_fused_adamw_on_the_cpu_and_channels_last_changes_no_draw():
    plain, last = _trainer(), _trainer(channels_last=True)
    assert plain.optimizer.param_groups[0].get("fused") is True
    assert last.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        a, b = plain.train_step(), last.train_step()
        assert abs(a.loss - b.loss) <= 1e-5 * max(1.0, abs(a.loss)), (a.loss, b.loss)
    assert torch.equal(plain._step_t, last._step_t)  # same t draws (DESIGN: draws are exact)


def test_trainer_bf16_on_a_cpu_without_native_bf16_warns_once_and_stays_float32(caplog, monkeypatch):
    cpu_speed.cpu_bf16_support.cache_clear()
    monkeypatch.setenv("DDPM_CPU_BF16", "0")
    try:
        with caplog.at_level(logging.WARNING, logger="ddpm.train"):
            trainer = _trainer(mixed_precision="bf16")
        assert not trainer.use_bf16
        lines = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
        assert len(lines) == 1 and "float32" in lines[0]
    finally:
        cpu_speed.cpu_bf16_support.cache_clear()


def test_trainer_bf16_autocast_path_numerics_where_forced(monkeypatch):
    """DDPM_CPU_BF16=1: the CPU autocast path runs (torch emulates bf16 here); its loss is the
    float32 loss to bf16 accuracy."""
    cpu_speed.cpu_bf16_support.cache_clear()
    monkeypatch.setenv("DDPM_CPU_BF16", "1")
    try:
        bf16 = _trainer(mixed_precision="bf16")
    finally:
        cpu_speed.cpu_bf16_support.cache_clear()
    fp32 = _trainer()
    assert bf16.use_bf16
    a, b = fp32.train_step(), bf16.train_step()
    assert abs(a.loss - b.loss) <= 3e-2 * abs(a.loss), (a.loss, b.loss)


@pytest.mark.parametrize("field, value", [("channels_last", 1), ("compile", "yes")])
def test_train_config_rejects_non_bool_speed_options(field, value):
    with pytest.raises(TypeError, match=field):
        TrainConfig(**{field: value})


def test_fast_sampler_compile_option_is_checked_and_the_cpu_mode_matches_sample():
    torch.manual_seed(0)
    model = UNet(reference.UNetConfig.tiny(), zero_init=False).eval()
    schedule = reference.make_schedule("linear", 50)
    with pytest.raises(TypeError, match="compile"):
        FastSampler(model, schedule, num_steps=3, compile="yes")
    fast = FastSampler(model, schedule, num_steps=3, channels_last=True)
    from ddpm import sample

    expected = sample(model, (2, 1, 4, 4), schedule, num_steps=3, seed=0)
    assert_close(fast(2, seed=0), expected.numpy(), atol=1e-5, rtol=1e-5, name="channels_last CPU mode")
