"""The compiled CPU `group_norm_silu` (kernels/cpu/group_norm_silu.cpp) against the reference.

The hypothesis tests in test_group_norm_silu_kernels.py reach it through the torch backend too
(float32 NCHW on the CPU); here: the cases its float32 vector passes could get wrong (nearly
equal values, a large offset, groups of one value, rows that are not a multiple of 8 long), its
SiLU's own exp over the whole float range, both instruction sets, thread-count independence, and
when it is and is not taken. Tolerance: tests/kernel_backends.TOLERANCES[float32] (1e-5), dx's
scaled by rstd as in test_cpu_speed.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels
import reference
from kernels.cpu import group_norm_silu as compiled
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(compiled.library() is None, reason="no C++ compiler: the compiled path is absent")

CASES = {  # name: (shape, groups, data transform)
    "rows_of_64": ((4, 8, 8, 8), 4, lambda x: x),
    "rows_with_tails": ((3, 6, 3, 5), 3, lambda x: 2.0 * x - 0.5),   # S = 15: one vector and 7 left
    "nearly_equal": ((2, 4, 4, 4), 2, lambda x: 1.5 + 1e-4 * x),
    "large_offset": ((2, 6, 4, 4), 3, lambda x: 300.0 + x),
    "one_value_per_group": ((3, 4), 4, lambda x: x),
    "nearly_equal_c16": ((2, 16, 3, 3), 4, lambda x: 1.5 + 1e-4 * x),  # channels_last: 8 channels a vector
    "large_offset_c16": ((3, 16, 4, 4), 2, lambda x: 300.0 + x),
    "one_value_per_group_c8": ((2, 8, 1, 1), 8, lambda x: x),
    "one_dim": ((5, 8, 33), 2, lambda x: x),
}


def _run(x, w, b, shift, groups, activation, dy):
    leaves = [None if v is None else v.clone().requires_grad_() for v in (x, w, b, shift)]
    y = kernels.group_norm_silu(leaves[0], leaves[1], leaves[2], groups, 1e-6, activation, shift=leaves[3],
                                backend="torch")
    y.backward(dy)
    return y, [None if v is None else v.grad for v in leaves]


def _reference(x, w, b, shift, groups, activation, dy):
    as64 = lambda v: None if v is None else v.detach().double().numpy()  # noqa: E731
    y, cache = reference.group_norm_silu(as64(x), as64(w), as64(b), groups, 1e-6, activation, shift=as64(shift))
    dx, dw, db = reference.group_norm_silu_backward(as64(dy), cache)
    dshift = None if shift is None else dx.reshape(dx.shape[0], dx.shape[1], -1).sum(axis=2)
    return y, dx, dw, db, dshift, cache


@pytest.mark.parametrize("instruction_set", ["avx2", "scalar"])
@pytest.mark.parametrize("case, layout", [(case, layout) for case in sorted(CASES) for layout in ("nchw", "channels_last")
                                          if layout == "nchw" or len(CASES[case][0]) == 4])
@pytest.mark.parametrize("activation, with_shift", [(True, True), (True, False), (False, True)])
def test_compiled_group_norm_silu_matches_the_reference(case, activation, with_shift, instruction_set, layout,
                                                          monkeypatch):
    if instruction_set == "scalar":
        monkeypatch.setenv("DDPM_KERNELS_CPU_NATIVE", "scalar")
    shape, groups, transform = CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    x = transform(torch.randn(shape, generator=gen))
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.randn(shape[1], generator=gen) + 1, torch.randn(shape[1], generator=gen)
    shift = 0.3 * torch.randn(shape[:2], generator=gen) if with_shift else None
    dy = torch.randn(shape, generator=gen)
    if layout == "channels_last":
        dy = dy.to(memory_format=torch.channels_last)
    y, (dx, dw, db, dshift) = _run(x, w, b, shift, groups, activation, dy)
    if layout == "channels_last" and shape[2] * shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.grad_fn is not None and "GroupNormSiLUFunction" in type(y.grad_fn).__name__  # the compiled path
    y_ref, dx_ref, dw_ref, db_ref, dshift_ref, cache = _reference(x, w, b, shift, groups, activation, dy)
    rstd = float(np.max(cache.rstd))
    assert_close(y, y_ref, atol=1e-5, rtol=1e-5, name="y")
    assert_close(dx, dx_ref, atol=1e-5 * max(1.0, rstd * 1e-3), rtol=1e-4, name="dx")
    assert_close(dw, dw_ref, atol=1e-4, rtol=1e-5, name="dweight")
    assert_close(db, db_ref, atol=1e-4, rtol=1e-5, name="dbias")
    if with_shift:
        assert_close(dshift, dshift_ref, atol=1e-4 * max(1.0, rstd * 1e-3), rtol=1e-4, name="dshift")


@pytest.mark.parametrize("instruction_set", ["avx2", "scalar"])
def test_silu_and_its_gradient_over_the_whole_float_range(instruction_set, monkeypatch):
    """weight 0 makes z = bias exactly, so y = silu(bias) and dbias = sum dy silu'(bias): the
    kernel's own exp, from underflow to overflow, against float64."""
    if instruction_set == "scalar":
        monkeypatch.setenv("DDPM_KERNELS_CPU_NATIVE", "scalar")
    z = torch.cat([torch.linspace(-110.0, 95.0, 4001), torch.tensor([-87.5, -87.3, 0.0, 88.7, 89.0])])
    channels = z.numel()
    x = torch.randn(1, channels, 16, generator=torch.Generator().manual_seed(0))
    w, b = torch.zeros(channels), z.clone()
    dy = torch.ones(1, channels, 16)
    y, (_, _, db, _) = _run(x, w, b, None, 1, True, dy)
    z64 = z.double()
    sig = torch.sigmoid(z64)
    expected = (z64 * sig)[None, :, None].expand(1, channels, 16)
    assert_close(y, expected.numpy(), atol=1e-30, rtol=3e-7, name="silu(z)")
    # silu' = s (1 + z (1 - s)) cancels near its zero (z ~ -1.28): an absolute floor there
    assert_close(db, (16 * sig * (1 + z64 * (1 - sig))).numpy(), atol=16 * 1e-6, rtol=3e-6, name="16 silu'(z)")


def test_channels_last_gives_the_same_numbers_in_the_same_layout():
    """NHWC with C not a multiple of 8 (or without AVX2) is transposed through a scratch block
    and runs the NCHW code: bit for bit equal."""
    gen = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(6, 12, 5, 3, generator=gen) + 0.5
    w, b, shift = torch.randn(12, generator=gen), torch.randn(12, generator=gen), torch.randn(6, 12, generator=gen)
    dy = torch.randn_like(x)
    y, grads = _run(x, w, b, shift, 3, True, dy)
    x_cl, dy_cl = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    y_cl, grads_cl = _run(x_cl, w, b, shift, 3, True, dy_cl)
    assert "GroupNormSiLUFunction" in type(y_cl.grad_fn).__name__
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    assert grads_cl[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_cl, y)
    for a, c in zip(grads_cl, grads):
        assert torch.equal(a, c)


def test_numbers_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 32, 16, 16, generator=gen)  # large enough for several threads
    w, b, shift = torch.randn(32, generator=gen), torch.randn(32, generator=gen), torch.randn(16, 32, generator=gen)
    dy = torch.randn_like(x)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for layout in (torch.contiguous_format, torch.channels_last):
                y, grads = _run(x.to(memory_format=layout), w, b, shift, 8, True, dy.to(memory_format=layout))
                results.append([y.detach()] + grads)
    finally:
        torch.set_num_threads(before)
    for other in results[2:]:  # each thread count against 1 thread, layout by layout
        first = results[0] if other[0].is_contiguous() else results[1]
        for a, c in zip(first, other):
            assert torch.equal(a, c)


def test_when_the_compiled_path_is_taken(monkeypatch):
    x, w = torch.randn(2, 4, 3, 3), torch.randn(4)
    assert compiled.applies(x, w, None, None)
    assert compiled.applies(x.to(memory_format=torch.channels_last), w, None, None)
    assert not compiled.applies(torch.randn(2, 4, 3, 3, 3).to(memory_format=torch.channels_last_3d), w, None, None)
    assert not compiled.applies(x.bfloat16(), w, None, None)
    assert not compiled.applies(x, w.double(), None, None)
    assert not compiled.applies(x[:, :, :, :2], w, None, None)  # neither NCHW nor NHWC contiguous
    monkeypatch.setenv("DDPM_KERNELS_CPU_NATIVE", "0")
    assert not compiled.applies(x, w, None, None)
    y = kernels.group_norm_silu(x.requires_grad_(), w, None, 2, 1e-5, backend="torch")
    assert "GroupNormSiLUFunction" not in type(y.grad_fn).__name__


def test_compiled_and_pure_torch_paths_agree_inside_the_unet(monkeypatch):
    """The whole digits UNet, forward and every parameter's gradient, on both paths."""
    from ddpm import UNet

    torch.manual_seed(0)
    config = reference.UNetConfig.tiny()
    model = UNet(config, zero_init=False)
    x = torch.randn(3, config.in_channels, config.image_size, config.image_size)
    t = torch.tensor([1, 500, 999])

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x, t)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grads = run()
    monkeypatch.setenv("DDPM_KERNELS_CPU_NATIVE", "0")
    out_torch, grads_torch = run()
    assert_close(out, out_torch.numpy(), atol=1e-5, rtol=1e-5, name="output")
    for name, g in grads.items():
        assert_close(g, grads_torch[name].numpy(), atol=1e-4, rtol=1e-4, name=name)


def test_torch_compile_traces_group_norm_without_graph_breaks():
    """Under torch.compile the torch backend must stay traceable (F.group_norm for inductor):
    np.isfinite in the eps check once broke the graph at every GroupNorm of the UNet."""
    from ddpm import UNet

    torch._dynamo.reset()
    x, w, b = torch.randn(2, 8, 4, 4), torch.randn(8), torch.randn(8)
    shift = torch.randn(2, 8)
    explained = torch._dynamo.explain(
        lambda x, w, b, shift: kernels.group_norm_silu(x, w, b, 4, 1e-5, shift=shift, backend="torch"))(x, w, b, shift)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    config = reference.UNetConfig.tiny()
    model = UNet(config, zero_init=False).eval()
    x = torch.randn(2, config.in_channels, config.image_size, config.image_size)
    explained = torch._dynamo.explain(model)(x, torch.tensor([3, 7]))
    # one break, where the model reads t back to check it (a CPU value check, before any layer)
    assert explained.graph_break_count <= 1, [str(r.reason)[:200] for r in explained.break_reasons]
    torch._dynamo.reset()


@pytest.mark.parametrize("offset, atol", [(0.0, 1e-5), (300.0, 3e-4)])
def test_the_form_torch_compile_traces_is_held_to_the_reference(offset, atol):
    """Under inductor the torch backend's GroupNorm+SiLU is F.group_norm's decomposition
    (group_norm_silu_traced): within 1e-5 on zero-mean data, 3e-4 at |mean| = 300 >> std = 1
    (its backward does not subtract before it scales, and h = x + shift rounds in float32)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    shape, groups = (4, 8, 4, 4), 4
    x = offset + torch.randn(shape, generator=gen)
    w, b = torch.randn(8, generator=gen) + 1, torch.randn(8, generator=gen)
    shift = 0.3 * torch.randn(4, 8, generator=gen)
    dy = torch.randn(shape, generator=gen)
    compiled = torch.compile(lambda x, w, b, shift: kernels.group_norm_silu(x, w, b, groups, 1e-6, shift=shift,
                                                                            backend="torch"), dynamic=False)
    leaves = [v.clone().requires_grad_() for v in (x, w, b, shift)]
    y = compiled(*leaves)
    y.backward(dy)
    y_ref, dx_ref, dw_ref, db_ref, dshift_ref, _ = _reference(x, w, b, shift, groups, True, dy)
    assert_close(y, y_ref, atol=atol, rtol=1e-5, name="y")
    for got, want, name in zip([v.grad for v in leaves], (dx_ref, dw_ref, db_ref, dshift_ref),
                               ("dx", "dweight", "dbias", "dshift")):
        assert_close(got, want, atol=atol, rtol=1e-5, name=name)
    torch._dynamo.reset()
