"""Kernel suite: one row per op, named after it (normal, q_sample, sampler_step,
learned_variance_step, langevin_step, group_norm_silu forward/backward), each against its peers.

Peers in the same run: every available `kernels` backend, torch eager of the same math,
torch.compile of the same math (compiled anew for every shape/dtype variant after a Dynamo
reset, so no row is silently eager past the recompile limit; a failed compile is reported as
such), and a device-to-device copy of the same number of bytes. Rows too small to measure
bandwidth (our time or the copy's within 2x of a 4-byte copy) say "launch-bound", no GB/s.
Bytes are the fewest the op must move: each input read once, each output written once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import kernels
import reference
from kernels.dispatch import backend_unavailable_reason

from .harness import Report, Row, bench, compile_peer, mark_launch_bound

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fast_backends(device: str) -> list[str]:
    """Backends that can run here: the fused ones on CUDA (and triton under the interpreter), torch."""
    return kernels.available_backends(device)


def _copy_time(nbytes: int, device: str, repeat: int) -> float:
    """Seconds to copy nbytes/2 bytes device-to-device: moves nbytes (read + write)."""
    src = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), device, repeat=repeat)


def unet_group_norm_shapes(batch: int) -> list[tuple[int, int, int, int]]:
    """The distinct GroupNorm input shapes of the DDPM CIFAR-10 UNet at `batch` (from its config)."""
    config = reference.UNetConfig.ddpm_cifar10()
    shapes = set()
    for name, shape in reference.parameter_shapes(config).items():
        if not name.endswith(("norm1.weight", "norm2.weight", "group_norm.weight", "conv_norm_out.weight")):
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = int(parts[1])
        elif parts[0] == "up_blocks":
            level = config.levels - 1 - int(parts[1])
        elif parts[0] == "mid_block":
            level = config.levels - 1
        else:
            level = 0
        res = config.resolution(level)
        shapes.add((batch, shape[0], res, res))
    return sorted(shapes, key=lambda s: -s[1] * s[2] * s[3])


def _timing(repeat_quick: bool):
    return dict(repeat=5 if repeat_quick else 30)


def _time_peers(report: Report, row: Row, eager, device, compile_peers: bool, rep: dict) -> None:
    """Add the same-run peers of an elementwise op to `row`: torch eager of the same math,
    torch.compile of it, and a device copy of the same bytes; then record the row."""
    row.times["torch-eager"] = bench(eager, device, **rep)
    if compile_peers:
        compiled = compile_peer(eager, (), report, _what(row))
        if compiled is not None:
            row.times["torch-compile"] = bench(compiled, device, **rep)
        else:
            row.notes = "torch-compile: compile failed (see 'Not measured')"
    row.times["copy"] = _copy_time(row.bytes_moved, device, rep["repeat"])
    mark_launch_bound(row, device)
    report.add(row)


def _what(row: Row) -> str:
    return f"{row.case} ({', '.join(f'{k}={v}' for k, v in row.params.items())})"


def _run_normal(report: Report, device, dtype_name, shape, case, backends, compile_peers, rep):
    """`normal`: the noise stream's draws for N samples vs torch.randn (same count, other numbers)."""
    dtype = DTYPES[dtype_name]
    samples = torch.arange(shape[0], device=device)

    def eager():  # the usual torch code: the global generator, not a per-sample counter stream
        return torch.randn(shape, device=device, dtype=dtype)

    numel = 1
    for d in shape:
        numel *= d
    row = Row("kernels", case, dict(shape="x".join(map(str, shape)), dtype=dtype_name),
              bytes_moved=numel * torch.empty((), dtype=dtype).element_size())
    for b in backends:
        row.times[b] = bench(lambda b=b: kernels.normal(1, samples, 1, shape[1:], dtype=dtype, backend=b),
                             device, **rep)
    _time_peers(report, row, eager, device, compile_peers, rep)


def _run_q_sample(report: Report, device, dtype_name, shape, case, backends, compile_peers, rep):
    dtype = DTYPES[dtype_name]
    n = shape[0]
    schedule = reference.make_schedule("linear", 1000)
    sa = torch.tensor(schedule.sqrt_alpha_bars, dtype=torch.float32, device=device)
    s1a = torch.tensor(schedule.sqrt_one_minus_alpha_bars, dtype=torch.float32, device=device)
    x0 = torch.randn(shape, device=device).to(dtype)
    t = torch.randint(0, 1000, (n,), device=device)
    view = (n,) + (1,) * (len(shape) - 1)

    def eager():  # the usual torch training code: randn + broadcasted math
        eps = torch.randn_like(x0)
        return (sa[t].view(view) * x0 + s1a[t].view(view) * eps).to(dtype), eps

    row = Row("kernels", case, dict(shape="x".join(map(str, shape)), dtype=dtype_name, noise="in-kernel"),
              bytes_moved=3 * x0.numel() * x0.element_size())
    for b in backends:
        row.times[b] = bench(lambda b=b: kernels.q_sample(x0, t, sa, s1a, seed=1, backend=b), device, **rep)
    _time_peers(report, row, eager, device, compile_peers, rep)


def _run_sampler_step(report: Report, device, dtype_name, shape, case, backends, compile_peers, rep,
                      guidance: bool = False, classifier: bool = False):
    dtype = DTYPES[dtype_name]
    schedule = reference.make_schedule("linear", 1000)
    coef_np = reference.ddim_coefficients(schedule, 500, 480, eta=1.0)[0]
    coef = torch.tensor(coef_np, dtype=torch.float64, device=device)  # as ddpm.Sampler keeps them
    x = torch.randn(shape, device=device).to(dtype)
    out = torch.randn(shape, device=device).to(dtype)
    uncond = torch.randn(shape, device=device).to(dtype) if guidance else None
    c = [float(v) for v in coef_np]
    # classifier guidance (issue 12): the gradient and per-sample (a0, a1, a2) rows of a ddim
    # plan's step times a scale of 2, as ddpm.Sampler passes them
    grad = torch.randn(shape, device=device).to(dtype) if classifier else None
    plan = reference.sampling_plan(schedule, "ddim", 50)
    rows_np = reference.guidance_rows(plan, np.full(shape[0], 2.0))[25]
    rows = torch.tensor(rows_np, dtype=torch.float64, device=device)
    a = [float(v) for v in rows_np[0]]

    def eager():
        o = uncond + 2.0 * (out - uncond) if guidance else out
        x0 = c[0] * x + c[1] * o
        eps = c[2] * x + c[3] * o
        if classifier:
            x0, eps = x0 + a[0] * grad, eps + a[1] * grad
        x0 = x0.clamp(-1, 1)
        z = torch.randn_like(x)
        return (c[4] * x0 + c[5] * x + c[6] * eps + c[7] * z + (a[2] * grad if classifier else 0)).to(dtype)

    ntensors = 3 + int(guidance) + int(classifier)
    row = Row("kernels", case, dict(shape="x".join(map(str, shape)), dtype=dtype_name,
                                    cfg=guidance, noise="in-kernel", **({"classifier": True} if classifier else {})),
              bytes_moved=ntensors * x.numel() * x.element_size())
    kw = dict(model_output_uncond=uncond, guidance_scale=2.0) if guidance else {}
    if classifier:
        kw.update(classifier_grad=grad, classifier_coefficients=rows)
    for b in backends:
        row.times[b] = bench(lambda b=b: kernels.sampler_step(x, out, coef, clip=(-1.0, 1.0), seed=1,
                                                              stream=3, backend=b, **kw), device, **rep)
    _time_peers(report, row, eager, device, compile_peers, rep)


def _run_learned_variance_step(report: Report, device, dtype_name, shape, case, backends,
                               compile_peers, rep, classifier: bool = False):
    """`learned_variance_step`: the DDPM step with the model's per-element variance (Improved
    DDPM Eq. 15) from a (N, 2C, ...) model output; eager peer: chunk + the same math + randn.
    classifier: with the guidance term of Alg. 1 (mean += s Sigma g, Sigma the learned variance)."""
    dtype = DTYPES[dtype_name]
    schedule = reference.make_schedule("linear", 1000)
    coef_np = reference.learned_variance_coefficients(schedule, 500)[0]
    coef = torch.tensor(coef_np, dtype=torch.float64, device=device)  # as ddpm.Sampler keeps them
    x = torch.randn(shape, device=device).to(dtype)
    wide = (shape[0], 2 * shape[1]) + tuple(shape[2:])
    model_output = torch.randn(wide, device=device).to(dtype)
    c = [float(v) for v in coef_np]
    # classifier guidance (issue 12b): a gradient and the rows of a learned-variance ddpm plan's
    # step times a scale of 2, as ddpm.Sampler passes them
    grad = torch.randn(shape, device=device).to(dtype) if classifier else None
    plan = reference.sampling_plan(schedule, "ddpm", 50, variance="learned")
    rows_np = reference.guidance_rows(plan, np.full(shape[0], 2.0))[25]
    rows = torch.tensor(rows_np, dtype=torch.float64, device=device)
    a2 = float(rows_np[0, 2])

    def eager():
        out, v = model_output.chunk(2, dim=1)
        x0 = (c[0] * x + c[1] * out).clamp(-1, 1)
        eps = c[2] * x + c[3] * out
        frac = (v.float() + 1) / 2
        log_variance = frac * c[7] + (1 - frac) * c[8]
        shift = a2 * torch.exp(log_variance) * grad if classifier else 0
        return (c[4] * x0 + c[5] * x + c[6] * eps + shift
                + torch.exp(0.5 * log_variance) * torch.randn_like(x)).to(dtype)

    row = Row("kernels", case, dict(shape="x".join(map(str, shape)), dtype=dtype_name, noise="in-kernel",
                                    **({"classifier": True} if classifier else {})),
              bytes_moved=(4 + int(classifier)) * x.numel() * x.element_size())  # x_t, the 2C output, [g,] x_prev
    kw = dict(classifier_grad=grad, classifier_coefficients=rows) if classifier else {}
    for b in backends:
        row.times[b] = bench(lambda b=b: kernels.learned_variance_step(
            x, model_output, coef, clip=(-1.0, 1.0), seed=1, stream=3, backend=b, **kw), device, **rep)
    _time_peers(report, row, eager, device, compile_peers, rep)


def _run_langevin_step(report: Report, device, dtype_name, shape, case, backends, compile_peers, rep):
    """`langevin_step`: the score samplers' update x + step * score + sqrt(2 step) z with
    score = -out / sigma (a VE annealed-Langevin row); eager peer: the same math + randn."""
    dtype = DTYPES[dtype_name]
    plan = reference.sampling_plan(reference.ve_schedule(50.0, 0.01, 100), "annealed_langevin", 10,
                                   steps_per_level=1)
    coef_np = plan.coefficients[0, :4]
    coef = torch.tensor(coef_np, dtype=torch.float64, device=device)  # as ddpm.Sampler keeps them
    x = torch.randn(shape, device=device).to(dtype)
    model_output = torch.randn(shape, device=device).to(dtype)
    c = [float(v) for v in coef_np]

    def eager():
        return (c[0] * x + c[2] * (c[1] * model_output) + c[3] * torch.randn_like(x)).to(dtype)

    row = Row("kernels", case, dict(shape="x".join(map(str, shape)), dtype=dtype_name, noise="in-kernel"),
              bytes_moved=3 * x.numel() * x.element_size())  # x, the model output, x_next
    for b in backends:
        row.times[b] = bench(lambda b=b: kernels.langevin_step(x, model_output, coef, seed=1, stream=3,
                                                               backend=b), device, **rep)
    _time_peers(report, row, eager, device, compile_peers, rep)


def _run_group_norm_silu(report: Report, device, dtype_name, shape, case, backends, compile_peers,
                         rep, channels_last: bool, groups: int = 32):
    dtype = DTYPES[dtype_name]
    c = shape[1]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device=device).to(dtype).to(memory_format=fmt).requires_grad_(True)
    w = torch.randn(c, device=device, dtype=dtype).requires_grad_(True)
    bias = torch.randn(c, device=device, dtype=dtype).requires_grad_(True)
    dy = torch.randn(shape, device=device).to(dtype).to(memory_format=fmt)
    nbytes = x.numel() * x.element_size()
    params = dict(shape="x".join(map(str, shape)), dtype=dtype_name,
                  layout="NHWC" if channels_last else "NCHW", groups=groups)

    def eager(x_, w_, b_):
        return F.silu(F.group_norm(x_, groups, w_, b_, 1e-6))

    impls = {b: (lambda x_, w_, b_, b=b: kernels.group_norm_silu(x_, w_, b_, groups, 1e-6, backend=b))
             for b in backends}
    impls["torch-eager"] = eager
    base, sweep = (case[: -len("-sweep")], "-sweep") if case.endswith("-sweep") else (case, "")
    fwd = Row("kernels", f"{base}-forward{sweep}", dict(params), bytes_moved=2 * nbytes)
    bwd = Row("kernels", f"{base}-backward{sweep}", dict(params), bytes_moved=3 * nbytes)
    if compile_peers:
        # one compile per shape/dtype/layout variant (Dynamo reset first), forward and backward
        # compiled here, outside the timing
        compiled = compile_peer(eager, (x, w, bias), report, _what(fwd))
        if compiled is not None:
            try:
                with torch.no_grad():
                    compiled(x, w, bias)
                torch.autograd.grad(compiled(x, w, bias), (x, w, bias), dy)
                impls["torch-compile"] = compiled
            except Exception as exc:  # noqa: BLE001
                report.skip(f"torch-compile peer of {_what(bwd)}", f"compile failed: {type(exc).__name__}")
                compiled = None
        if compiled is None:
            fwd.notes = bwd.notes = "torch-compile: compile failed (see 'Not measured')"
    for name, fn in impls.items():
        with torch.no_grad():
            fwd.times[name] = bench(lambda fn=fn: fn(x, w, bias), device, **rep)
        y = fn(x, w, bias)
        bwd.times[name] = bench(
            lambda y=y: torch.autograd.grad(y, (x, w, bias), dy, retain_graph=True), device, **rep)
        del y
    fwd.times["copy"] = _copy_time(2 * nbytes, device, rep["repeat"])
    bwd.times["copy"] = _copy_time(3 * nbytes, device, rep["repeat"])
    mark_launch_bound(fwd, device)
    mark_launch_bound(bwd, device)
    report.add(fwd)
    report.add(bwd)


def _run_layer_norm_modulate(report: Report, device, dtype_name, shape, backends, compile_peers, rep):
    """LayerNorm + adaLN modulation (DiT) forward and backward, shift/scale chunks of one (N, 6D) tensor."""
    dtype = DTYPES[dtype_name]
    n, _, d = shape
    x = torch.randn(shape, device=device).to(dtype).requires_grad_(True)
    mod = torch.randn(n, 6 * d, device=device).to(dtype).requires_grad_(True)
    dy = torch.randn(shape, device=device).to(dtype)
    nbytes = x.numel() * x.element_size()
    params = dict(shape="x".join(map(str, shape)), dtype=dtype_name)

    def eager(x_, mod_):
        shift, scale = mod_[:, :d], mod_[:, d:2 * d]
        return F.layer_norm(x_, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    impls = {b: (lambda x_, mod_, b=b: kernels.layer_norm_modulate(x_, mod_[:, :d], mod_[:, d:2 * d], 1e-6,
                                                                    backend=b)) for b in backends}
    impls["torch-eager"] = eager
    fwd = Row("kernels", "layer_norm_modulate-forward", dict(params), bytes_moved=2 * nbytes)
    bwd = Row("kernels", "layer_norm_modulate-backward", dict(params), bytes_moved=3 * nbytes)
    if compile_peers:
        compiled = compile_peer(eager, (x, mod), report, _what(fwd))
        if compiled is not None:
            impls["torch-compile"] = compiled
    for name, fn in impls.items():
        with torch.no_grad():
            fwd.times[name] = bench(lambda fn=fn: fn(x, mod), device, **rep)
        y = fn(x, mod)
        bwd.times[name] = bench(lambda y=y: torch.autograd.grad(y, (x, mod), dy, retain_graph=True), device, **rep)
        del y
    fwd.times["copy"] = _copy_time(2 * nbytes, device, rep["repeat"])
    bwd.times["copy"] = _copy_time(3 * nbytes, device, rep["repeat"])
    mark_launch_bound(fwd, device)
    mark_launch_bound(bwd, device)
    report.add(fwd)
    report.add(bwd)


def run(report: Report, *, device: str, quick: bool, dtypes, compile_peers: bool,
        check: bool = False) -> None:
    backends = fast_backends(device)
    for b in ("triton", "cupy"):
        if b not in backends:
            reason = backend_unavailable_reason(b, torch.device(device))
            report.skip(f"kernels backend {b}", f"not available here: {reason}")
    rep = _timing(quick)
    on_cuda = device.startswith("cuda")
    if quick or not on_cuda:
        image_shapes = [(4, 3, 8, 8)]
        gn_shapes = [(2, 64, 8, 8)]
        sweep = [2**k for k in (12, 14)]
        dtypes = [d for d in dtypes if d == "fp32"] or ["fp32"]
    elif check:  # the device check (~2.5 min budget, mostly torch.compile of the peers): the
        # largest and smallest UNet norms at batch 128 and a batch-1 SD-like one, three sweep sizes
        rep = dict(repeat=10)
        image_shapes = [(256, 3, 32, 32)]
        unet = unet_group_norm_shapes(128)
        gn_shapes = [unet[0], unet[-1], (1, 320, 64, 64)]
        sweep = [2**20, 2**24, 2**27]
    else:
        image_shapes = [(128, 3, 32, 32), (256, 3, 32, 32)]
        gn_shapes = unet_group_norm_shapes(128) + [(1, 320, 64, 64), (2, 128, 256, 256)]
        sweep = [2**k for k in range(16, 29, 2)]
    for dtype_name in dtypes:
        for shape in image_shapes:
            _run_normal(report, device, dtype_name, shape, "normal", backends, compile_peers, rep)
            _run_q_sample(report, device, dtype_name, shape, "q_sample", backends, compile_peers, rep)
            _run_sampler_step(report, device, dtype_name, shape, "sampler_step", backends, compile_peers, rep)
            _run_sampler_step(report, device, dtype_name, shape, "sampler_step", backends, compile_peers,
                              rep, guidance=True)
            _run_sampler_step(report, device, dtype_name, shape, "sampler_step", backends, compile_peers,
                              rep, classifier=True)  # classifier guidance's gradient term (issue 12)
            _run_learned_variance_step(report, device, dtype_name, shape, "learned_variance_step",
                                       backends, compile_peers, rep)
            _run_learned_variance_step(report, device, dtype_name, shape, "learned_variance_step",
                                       backends, compile_peers, rep, classifier=True)  # issue 12b
            _run_langevin_step(report, device, dtype_name, shape, "langevin_step", backends, compile_peers, rep)
        for channels_last in (False, True):
            for shape in gn_shapes:
                _run_group_norm_silu(report, device, dtype_name, shape, "group_norm_silu", backends,
                                     compile_peers, rep, channels_last)
        # DiT's LayerNorm + adaLN: DiT-XL/2 (256 tokens of 1152) and DiT-S/2 rows; small on the CPU
        for shape in ([(2, 16, 96)] if quick or not on_cuda else [(32, 256, 1152), (128, 256, 384)]):
            _run_layer_norm_modulate(report, device, dtype_name, shape, backends, compile_peers, rep)
        for numel in sweep:  # bandwidth vs size, for the chart (no compile: cheap, last)
            shape = (max(numel // 4096, 1), 4096)
            _run_q_sample(report, device, dtype_name, shape, "q_sample-sweep", backends, False, rep)
            _run_sampler_step(report, device, dtype_name, shape, "sampler_step-sweep", backends, False, rep)
        if on_cuda and not quick and not check:
            for numel in sweep:
                shape = (max(numel // (256 * 32 * 32), 1), 256, 32, 32) if numel >= 256 * 1024 else (1, 64, 64, numel // 4096)
                _run_group_norm_silu(report, device, dtype_name, shape, "group_norm_silu-sweep", backends,
                                     False, rep, False)
