"""CPU suite: the NumPy reference vs torch on the CPU, forward + backward of the same model.

Rows: the toy MLP eps-model (reference.MLP vs the same network in torch, weights copied by name)
and small UNets (reference.UNet vs ddpm.UNet, weights copied by name), float64 and float32;
then benchmarks/cpu_vs_diffusers.py: our training step and DDIM-50 against diffusers (issue 17).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import reference
from reference.layers import timestep_frequencies
from reference.mlp import MLP
from ddpm import UNet as TorchUNet

from .harness import Report, Row, bench

_NP = {"fp64": np.float64, "fp32": np.float32}
_TORCH = {"fp64": torch.float64, "fp32": torch.float32}


class _TorchMLP(torch.nn.Module):
    """reference.MLP in torch (same parameter names, same math), for timing only."""

    def __init__(self, ref: "MLP", dtype: torch.dtype):
        super().__init__()
        self.ref = ref
        self.params = torch.nn.ParameterDict(
            {k.replace(".", "_"): torch.nn.Parameter(torch.tensor(v, dtype=dtype)) for k, v in ref.params.items()})
        freqs = timestep_frequencies(ref.time_embed_dim)
        self.register_buffer("freqs", torch.tensor(freqs, dtype=dtype))
        self.act = F.silu if ref.activation == "silu" else F.elu

    def forward(self, x, t):
        args = t.to(x.dtype)[:, None] * self.freqs[None, :]
        h = torch.cat([x, torch.sin(args), torch.cos(args)], dim=1)
        p = self.params
        for layer in range(self.ref.num_layers):
            h = self.act(F.linear(h, p[f"layers_{layer}_weight"], p[f"layers_{layer}_bias"]))
        return F.linear(h, p["out_weight"], p["out_bias"])


def _mlp_rows(report: Report, quick: bool, rep: dict) -> None:
    batch = 256 if quick else 4096
    for dtype_name in ("fp64", "fp32"):
        ref = MLP(data_dim=2, hidden_dim=128, num_layers=3, dtype=_NP[dtype_name])
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 2)).astype(_NP[dtype_name])
        t = rng.integers(0, 1000, batch)
        dout = rng.standard_normal((batch, 2)).astype(_NP[dtype_name])
        net = _TorchMLP(ref, _TORCH[dtype_name])
        xt, tt, dt = torch.tensor(x), torch.tensor(t), torch.tensor(dout)

        def numpy_step():
            ref.forward(x, t)
            ref.backward(dout)

        def torch_step():
            net.zero_grad(set_to_none=True)
            net(xt, tt).backward(dt)

        row = Row("cpu", "mlp forward+backward", dict(batch=batch, hidden=128, layers=3, dtype=dtype_name),
                  items=batch)
        row.times["numpy-reference"] = bench(numpy_step, "cpu", **rep)
        row.times["torch-cpu"] = bench(torch_step, "cpu", **rep)
        report.add(row)


def _unet_rows(report: Report, quick: bool, rep: dict) -> None:
    cases = [("tiny", reference.UNetConfig.tiny(), 4)]
    if not quick:
        cases += [("digits8", reference.UNetConfig.digits8(num_classes=10), 64),
                  ("mnist28", reference.UNetConfig.mnist(dropout=0.0), 8)]
    for name, config, batch in cases:
        for dtype_name in ("fp64", "fp32"):
            ref = reference.UNet(config, seed=0, zero_init=False, dtype=_NP[dtype_name])
            net = TorchUNet(config).to(_TORCH[dtype_name])
            net.load_numpy_params(ref.params)
            rng = np.random.default_rng(0)
            shape = (batch, config.in_channels, config.image_size, config.image_size)
            x = rng.standard_normal(shape).astype(_NP[dtype_name])
            t = rng.integers(0, 1000, batch)
            y = rng.integers(0, config.num_classes, batch) if config.num_classes else None
            dout = rng.standard_normal((batch, config.out_channels) + shape[2:]).astype(_NP[dtype_name])
            xt, tt, dt = torch.tensor(x), torch.tensor(t), torch.tensor(dout)
            yt = None if y is None else torch.tensor(y)

            def numpy_step():
                ref.forward(x, t, y)
                ref.backward(dout)

            def torch_step():
                net.zero_grad(set_to_none=True)
                net(xt, tt, yt).backward(dt)

            row = Row("cpu", f"unet {name} forward+backward",
                      dict(batch=batch, params=reference.count_parameters(config), dtype=dtype_name),
                      items=batch)
            row.times["numpy-reference"] = bench(numpy_step, "cpu", warmup=1, **rep)
            row.times["torch-cpu"] = bench(torch_step, "cpu", warmup=1, **rep)
            report.add(row)


def run(report: Report, *, device: str, quick: bool, dtypes, compile_peers: bool,
        check: bool = False) -> None:
    """Always on the CPU, whatever `device` is: this suite measures the reference's cost."""
    rep = dict(repeat=3 if quick else 10)
    _mlp_rows(report, quick, rep)
    _unet_rows(report, quick, rep)
    # issue 17b: the noise stream on the CPU, rows `q_sample` and `normal` (suite_cpu_noise.py)
    from .suite_cpu_noise import run_noise_rows

    run_noise_rows(report, quick)
    # issue 17: GroupNorm+SiLU, the compiled kernel vs the pure-torch path vs ATen's (diffusers')
    from .cpu_group_norm_silu import run_group_norm_rows

    run_group_norm_rows(report, quick)

    # issue 17: training step and DDIM-50 against diffusers (suite label "cpu-vs-diffusers")
    from . import cpu_vs_diffusers

    cpu_vs_diffusers.run(report, quick=quick, compile_peers=compile_peers)
