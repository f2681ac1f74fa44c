"""Training suite: optimisation steps per second of the DDPM CIFAR-10 UNet at batch 128.

One step = q_sample (in-kernel noise) -> UNet forward -> eps-MSE -> backward -> AdamW, in bf16
autocast on CUDA. Variants, same weights and data:
  fused     every GroupNorm+SiLU and the noising through the fused kernels (backend auto)
  eager     the same model with every kernel on the plain-torch backend (the project's
            hand-written torch GroupNorm: ~12 ops)
  native    what users have: nn.functional.group_norm + SiLU (cuDNN/ATen kernels), same weights
  compile   torch.compile of the native variant (Dynamo reset first; skipped with --no-compile;
            a failed compile is reported as such)
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

import kernels
import reference
from ddpm import UNet

from .harness import Report, Row, bench


def _set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if isinstance(module, kernels.GroupNormSiLU):
            module.backend = backend


def _native_forward(self, x, shift=None):
    """GroupNormSiLU.forward with torch's own ops: (x + shift) -> F.group_norm -> F.silu."""
    if shift is not None:
        x = x + shift.reshape(shift.shape + (1,) * (x.dim() - 2))
    y = F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
    return F.silu(y) if self.activation else y


def _use_native_group_norm(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, kernels.GroupNormSiLU):
            module.forward = types.MethodType(_native_forward, module)


def _step_fn(model, optimizer, x0, schedule, backend: str, device: str):
    n = x0.shape[0]
    sa = torch.tensor(schedule.sqrt_alpha_bars, dtype=torch.float32, device=device)
    s1a = torch.tensor(schedule.sqrt_one_minus_alpha_bars, dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
           else contextlib.nullcontext())
    state = {"step": 0}

    def step():
        t = torch.randint(0, schedule.T, (n,), device=device, generator=gen)
        x_t, eps = kernels.q_sample(x0, t, sa, s1a, seed=0, stream=reference.train_stream(state["step"]),
                                    backend=backend)
        with amp:
            out = model(x_t, t)
        loss = F.mse_loss(out.float(), eps.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] += 1
        return loss

    return step


def run(report: Report, *, device: str, quick: bool, dtypes, compile_peers: bool,
        check: bool = False) -> None:
    on_cuda = device.startswith("cuda")
    if quick or not on_cuda:
        config, batch = reference.UNetConfig.tiny(), 4
        rep = dict(warmup=1, repeat=3)
        if not quick:
            report.skip("training at CIFAR-10 size", "needs a CUDA device; ran the tiny config on the CPU")
    else:
        config, batch = reference.UNetConfig.ddpm_cifar10(), 128
        rep = dict(warmup=3, repeat=20)
    schedule = reference.make_schedule("linear", 1000)
    torch.manual_seed(0)
    x0 = torch.randn(batch, config.in_channels, config.image_size, config.image_size, device=device)
    if on_cuda:
        x0 = x0.to(memory_format=torch.channels_last)
    state = UNet(config, zero_init=False).state_dict()
    variants = [("fused", "auto", False, False), ("eager", "torch", False, False),
                ("native", "torch", False, True)]
    if compile_peers:
        variants.append(("compile", "torch", True, True))
    row = Row("training", "UNet train step", dict(batch=batch, params=reference.count_parameters(config),
                                                  precision="bf16 autocast" if on_cuda else "fp32"),
              items=batch)
    for name, backend, compiled, native in variants:
        model = UNet(config, zero_init=False).to(device)
        model.load_state_dict(state)
        if on_cuda:
            model = model.to(memory_format=torch.channels_last)
        _set_backend(model, backend)
        if native:
            _use_native_group_norm(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if compiled:
            torch._dynamo.reset()
        net = torch.compile(model) if compiled else model
        try:
            row.times[name] = bench(_step_fn(net, optimizer, x0, schedule, backend, device), device, **rep)
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler toolchain for torch.compile
            what = "compile failed" if compiled else "failed"
            report.skip(f"training variant {name}", f"{what}: {type(exc).__name__}: {exc}".splitlines()[0][:200])
    fused = row.times.get("fused")
    if fused:
        row.notes = f"fused: {1 / fused:.2f} steps/s"
    report.add(row)
