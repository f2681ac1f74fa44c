"""Multi-process training and sampling via torchrun + DistributedDataParallel.

    torchrun --nproc_per_node 8 -m ddpm train ...          one node, 8 GPUs (NCCL)
    torchrun --nnodes 2 --node_rank R --master_addr H ...   several nodes
    torchrun --nproc_per_node 2 -m ddpm train --device cpu  two CPU processes (gloo)

`init_distributed()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
without them it returns a single-process context and nothing else changes. The random draws of
a training step (t, label dropout, data order, the noise stream) are made for the GLOBAL batch on
every rank identically and each rank takes its contiguous slice, so W ranks with batch B/W each
compute the same gradient as one process with batch B (DDP averages the ranks' gradients).
Sampling is split the same way: rank r draws the samples with global indices in its block, and
the noise stream makes sample i identical whatever rank draws it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from .samplers import sample

__all__ = [
    "DistributedContext",
    "init_distributed",
    "single_process",
    "shutdown_distributed",
    "wrap_model",
    "rank_slice",
    "barrier",
    "all_reduce_mean",
    "all_gather_rows",
    "sample_distributed",
    "split_counts",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank in [0, world_size), its local rank and torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, pictures and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def single_process(device: str | torch.device | None = None) -> DistributedContext:
    """A one-process context on `device` (default: CUDA when available, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return DistributedContext(device=torch.device(device))


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group torchrun set up (NCCL with CUDA devices, gloo on the CPU).

    device: "cpu", "cuda" or None (CUDA when available). With CUDA, process LOCAL_RANK uses
    cuda:LOCAL_RANK. Without WORLD_SIZE > 1 in the environment: a single-process context.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return single_process(device)
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must lie in [0, WORLD_SIZE={world_size}), got {rank}")
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    elif kind == "cpu":
        dev, backend = torch.device("cpu"), "gloo"
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda' for distributed runs, got {device!r}")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, dev, backend)


def shutdown_distributed(ctx: DistributedContext) -> None:
    """Leave the process group (call once at the end of a distributed run)."""
    if ctx.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DistributedDataParallel around `model` (already on ctx.device) when world_size > 1."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def rank_slice(n: int, ctx: DistributedContext) -> slice:
    """This rank's contiguous block of n items; n must divide evenly over the ranks."""
    if n % ctx.world_size:
        raise ValueError(f"batch of {n} does not split evenly over world_size={ctx.world_size}")
    per = n // ctx.world_size
    return slice(ctx.rank * per, (ctx.rank + 1) * per)


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        torch_dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The mean of `value` over ranks (a copy; `value` itself is untouched)."""
    out = value.detach().clone()
    if ctx.distributed:
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        out /= ctx.world_size
    return out


def all_gather_rows(local: torch.Tensor, counts: list[int], ctx: DistributedContext) -> torch.Tensor:
    """Concatenate each rank's (counts[r], ...) block in rank order, on every rank.

    Blocks may differ in length by rank (padded to the longest for the collective).
    """
    if not ctx.distributed:
        return local
    if local.shape[0] != counts[ctx.rank]:
        raise ValueError(f"rank {ctx.rank} holds {local.shape[0]} rows, counts says {counts[ctx.rank]}")
    longest = max(counts)
    padded = local.new_zeros((longest,) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    blocks = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    torch_dist.all_gather(blocks, padded.contiguous())
    return torch.cat([b[:c] for b, c in zip(blocks, counts)])


def split_counts(n: int, world_size: int) -> list[int]:
    """How many of n samples each rank draws: contiguous blocks, the first n % world_size ranks
    one more."""
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def sample_distributed(model: nn.Module, shape, schedule, ctx: DistributedContext, *,
                       y: torch.Tensor | None = None, samples=None, **sample_kwargs) -> torch.Tensor:
    """`ddpm.sample` split over ranks by global sample index, gathered on every rank.

    shape: (N, C, H, W) of the whole batch; y: (N,) class ids or None; samples: the (N,) global
    sample indices (default arange(N)). Rank r draws a contiguous block; because every Gaussian
    comes from the counter-based noise stream keyed by the global index, the result equals one
    process drawing all N (bit-for-bit on the CPU). Returns (N, C, H, W) on ctx.device.
    A `callback(step, t, x)` in sample_kwargs sees this rank's block only (gather what it keeps
    with `all_gather_rows(kept, split_counts(N, world_size), ctx)`).
    """
    shape = tuple(int(d) for d in shape)
    n = shape[0]
    if samples is None:
        samples = torch.arange(n, dtype=torch.int64)
    samples = torch.as_tensor(samples, dtype=torch.int64).reshape(-1)
    if samples.shape != (n,):
        raise ValueError(f"samples must have shape ({n},), got {tuple(samples.shape)}")
    if y is not None:
        y = torch.as_tensor(y, dtype=torch.int64).reshape(-1)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},), got {tuple(y.shape)}")
    counts = split_counts(n, ctx.world_size)
    start = sum(counts[: ctx.rank])
    block = slice(start, start + counts[ctx.rank])
    local_y = None if y is None else y[block].to(ctx.device)
    if counts[ctx.rank] > 0:
        local = sample(model, (counts[ctx.rank],) + shape[1:], schedule, samples=samples[block],
                       y=local_y, device=ctx.device, **sample_kwargs)
    else:
        local = torch.zeros((0,) + shape[1:], device=ctx.device, dtype=sample_kwargs.get("dtype", torch.float32))
    return all_gather_rows(local, counts, ctx)
