"""Launch-size choices shared by the Triton kernels (interpreter vs GPU)."""

from __future__ import annotations

import functools

import torch

from . import decorated_mode

# Under the interpreter every program runs sequentially in NumPy: few, big programs are fastest.
INTERPRETER_BLOCK = 1 << 14
GPU_ELEMENTWISE_BLOCK = 1024


def interpreted() -> bool:
    return bool(decorated_mode())


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def elementwise_block(numel: int) -> int:
    """BLOCK of the elementwise kernels (each program covers BLOCK elements of one sample):
    1024 on the GPU, the whole sample (capped) when interpreted."""
    if interpreted():
        return min(next_power_of_2(numel), INTERPRETER_BLOCK)
    return GPU_ELEMENTWISE_BLOCK


def elementwise_grid(batch: int, numel: int) -> tuple[int, tuple[int]]:
    """(BLOCK, grid) of the elementwise kernels for `batch` samples of `numel` elements:
    blocks_per_sample = cdiv(numel, BLOCK) programs per sample (grid[0] // batch), so a
    program's sample index is one scalar division (philox.sample_block)."""
    block = elementwise_block(numel)
    per_sample = -(-numel // block)
    if batch * per_sample >= 2**31:
        raise ValueError(f"too many elements for one launch: {batch} samples x {numel}")
    return block, (batch * per_sample,)


@functools.lru_cache(maxsize=None)
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs a reduction should spread over to fill the device (1 when interpreted)."""
    if interpreted() or device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return 4 * multiprocessor_count(index)
