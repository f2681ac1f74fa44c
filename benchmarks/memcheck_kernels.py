"""Every fused kernel once at a small, awkward shape: the workload of the compute-sanitizer step.

    compute-sanitizer --tool memcheck --error-exitcode 1 python -m benchmarks.memcheck_kernels
    python -m benchmarks.memcheck_kernels --device cpu      # the CPU dry run (Triton interpreter)

Runs normal, q_sample, sampler_step, group_norm_silu and layer_norm_modulate (forward and
backward) on each fused backend that can run here (triton, cupy; torch too on the CPU), NCHW and channels_last, given and
in-kernel noise, CFG + clip, shift, odd sizes (not multiples of any block), strided index
tensors; compares each with the torch backend (a wrong answer is also a failure), synchronises
after each op so a fault is attributed to it. Set PYTORCH_NO_CUDA_MEMORY_CACHING=1 under
memcheck (gpu_check.sh does): torch's caching allocator would otherwise hide out-of-bounds
accesses that stay inside one of its pooled blocks.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import kernels
import reference


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> None:
    err = (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0
    if not err <= atol:  # NaN fails too
        raise AssertionError(f"{what}: max |difference| {err:.3g} > {atol}")


def run_all(device: torch.device, backends: list[str]) -> list[str]:
    schedule = reference.make_schedule("linear", 1000)
    sa = torch.tensor(schedule.sqrt_alpha_bars, dtype=torch.float32, device=device)
    s1 = torch.tensor(schedule.sqrt_one_minus_alpha_bars, dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(0)
    done = []
    for backend in backends:
        for channels_last in (False, True):
            for dtype in (torch.float32, torch.bfloat16):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                tag = f"{backend} {str(dtype)[6:]} {'NHWC' if channels_last else 'NCHW'}"
                shape = (3, 5, 7, 9)
                x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
                o = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
                t = torch.arange(6, device=device)[::2] * 249          # a strided index view
                samples = torch.arange(6, device=device)[1::2]

                z = kernels.normal(5, samples, 2, (5, 7, 9), device=device, dtype=dtype, backend=backend)
                _sync(device)
                _close(z, kernels.normal(5, samples, 2, (5, 7, 9), device=device, dtype=dtype,
                                         backend="torch"), 2e-2, f"normal {tag}")

                x_t, eps = kernels.q_sample(x, t, sa, s1, seed=3, samples=samples, backend=backend)
                _sync(device)
                ref, _ = kernels.q_sample(x, t, sa, s1, eps, backend="torch")
                _close(x_t, ref, 5e-2, f"q_sample {tag}")

                c = torch.tensor(reference.ddpm_coefficients(schedule, np.array([999, 500, 0])),
                                 device=device)
                got = kernels.sampler_step(x, o, c, model_output_uncond=x, guidance_scale=2.0,
                                           clip=(-1.0, 1.0), seed=4, samples=samples, stream=1,
                                           backend=backend)
                _sync(device)
                want = kernels.sampler_step(x, o, c, model_output_uncond=x, guidance_scale=2.0,
                                            clip=(-1.0, 1.0), seed=4, samples=samples, stream=1,
                                            backend="torch")
                _close(got, want, 5e-2, f"sampler_step {tag}")
                kernels.sampler_step(x.clone(), o, c, noise=o, out=None, backend=backend)
                _sync(device)

                xg = x.detach().clone().requires_grad_(True)
                w = torch.randn(5, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
                b = torch.randn(5, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
                shift = torch.randn(3, 5, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
                y = kernels.group_norm_silu(xg, w, b, 5, 1e-6, shift=shift, backend=backend)
                grads = torch.autograd.grad(y, (xg, w, b, shift), torch.ones_like(y))
                _sync(device)
                y_ref = kernels.group_norm_silu(xg, w, b, 5, 1e-6, shift=shift, backend="torch")
                grads_ref = torch.autograd.grad(y_ref, (xg, w, b, shift), torch.ones_like(y_ref))
                _close(y, y_ref, 5e-2, f"group_norm_silu forward {tag}")
                for g, r, name in zip(grads, grads_ref, ("dx", "dweight", "dbias", "dshift")):
                    _close(g, r, 0.5, f"group_norm_silu {name} {tag}")

                # layer_norm_modulate (DiT): D = 37 odd, shift/scale strided chunks of one (N, 6D) tensor,
                # small enough that one bf16 ulp of y stays under the 5e-2 bound
                tokens = torch.randn(3, 11, 37, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
                mod = (0.3 * torch.randn(3, 6 * 37, generator=gen)).to(device=device, dtype=dtype).requires_grad_(True)
                y = kernels.layer_norm_modulate(tokens, mod[:, :37], mod[:, 37:74], 1e-6, backend=backend)
                grads = torch.autograd.grad(y, (tokens, mod), torch.ones_like(y))
                _sync(device)
                y_ref = kernels.layer_norm_modulate(tokens, mod[:, :37], mod[:, 37:74], 1e-6, backend="torch")
                grads_ref = torch.autograd.grad(y_ref, (tokens, mod), torch.ones_like(y_ref))
                _close(y, y_ref, 5e-2, f"layer_norm_modulate forward {tag}")
                for g, r, name in zip(grads, grads_ref, ("dx", "dmod")):
                    _close(g, r, 0.5, f"layer_norm_modulate {name} {tag}")
                done.append(tag)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memcheck_kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backends = [b for b in kernels.available_backends(device) if b != "torch" or device.type == "cpu"]
    if not backends:
        print(f"no fused backend can run on {device}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    done = run_all(device, backends)
    print(f"memcheck workload: {len(done)} cases on {device} ({', '.join(backends)}) passed in "
          f"{time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
