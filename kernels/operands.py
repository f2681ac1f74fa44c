"""Host-side preparation shared by the Triton and CuPy launches of the elementwise ops.

Both fused backends read their tensors in one dense layout (that of x_t / x0: NCHW-contiguous
or channels_last; anything else is copied once to contiguous) and need the same geometry
(samples, elements per sample, C and H*W for the logical noise index) and noise-stream words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import channels_and_spatial, dense_layout, empty_like_layout, same_layout_or_copy

__all__ = ["NOISE_NONE", "NOISE_TENSOR", "NOISE_STREAM", "Geometry", "SamplerStepOperands",
           "learned_variance_step_operands",
           "QSampleOperands", "sampler_step_operands", "q_sample_operands", "seed_words"]

NOISE_NONE, NOISE_TENSOR, NOISE_STREAM = 0, 1, 2


def seed_words(seed: int) -> tuple[int, int]:
    """(seed lo, seed hi): the Philox key of a 64-bit seed (DESIGN contract 2)."""
    return seed & 0xFFFFFFFF, seed >> 32


@dataclass(frozen=True)
class Geometry:
    """What an elementwise kernel needs to walk memory and recover logical element indices."""

    layout: str            # "contiguous" | "channels_last"
    total: int             # elements
    numel: int             # elements per sample
    C: int
    HW: int
    seed_lo: int
    seed_hi: int
    stream_tensor: torch.Tensor | None  # per-sample streams, or None
    stream_scalar: int                  # the stream when it is one int (else 0)

    @property
    def channels_last(self) -> bool:
        return self.layout == "channels_last"


def _geometry(x: torch.Tensor, layout: str, seed: int | None, stream) -> Geometry:
    C, HW = channels_and_spatial(x)
    has_stream = isinstance(stream, torch.Tensor)
    seed_lo, seed_hi = seed_words(0 if seed is None else seed)
    return Geometry(layout, x.numel(), x.numel() // x.shape[0], C, HW, seed_lo, seed_hi,
                    stream.contiguous() if has_stream else None, 0 if has_stream else int(stream))


@dataclass(frozen=True)
class SamplerStepOperands:
    x_t: torch.Tensor
    model_output: torch.Tensor
    model_output_uncond: torch.Tensor | None
    noise: torch.Tensor | None
    x_prev: torch.Tensor        # where the kernel writes (`out` itself when its layout matches)
    coefficients: torch.Tensor  # (N, width) float64 (width 8, or 10 learned): row stride 0 or width
    noise_mode: int
    geometry: Geometry

    def result(self, out: torch.Tensor | None) -> torch.Tensor:
        """The tensor to return: x_prev, or `out` (filled by a copy when its layout differed)."""
        if out is not None and out is not self.x_prev:
            return out.copy_(self.x_prev)
        return self.x_prev


def sampler_step_operands(x_t, model_output, model_output_uncond, noise, coefficients, seed,
                          stream, out) -> SamplerStepOperands:
    """Bring every input of kernels.sampler_step into x_t's dense layout (copies only if not)."""
    layout = dense_layout(x_t) or "contiguous"
    x_t_dense = same_layout_or_copy(x_t, layout)
    model_output = same_layout_or_copy(model_output, layout)
    if model_output_uncond is not None:
        model_output_uncond = same_layout_or_copy(model_output_uncond, layout)
    if noise is not None:
        noise = same_layout_or_copy(noise, layout)
    direct = out is not None and dense_layout(out) == layout
    x_prev = out if direct else empty_like_layout(x_t_dense, layout)
    if coefficients.stride(1) != 1 or coefficients.stride(0) not in (0, 8):
        coefficients = coefficients.contiguous()  # (N, 8) floats: tiny
    mode = NOISE_TENSOR if noise is not None else (NOISE_STREAM if seed is not None else NOISE_NONE)
    return SamplerStepOperands(x_t_dense, model_output, model_output_uncond, noise, x_prev,
                               coefficients, mode, _geometry(x_t, layout, seed, stream))


def classifier_operands(ops: SamplerStepOperands, classifier_grad, classifier_coefficients):
    """(gradient in x_t's layout, (N, 3) float64 rows with unit column stride) of classifier
    guidance for kernels.sampler_step, or (None, None) without it."""
    if classifier_grad is None:
        return None, None
    layout = dense_layout(ops.x_t) or "contiguous"
    grad = same_layout_or_copy(classifier_grad, layout)
    coefficients = classifier_coefficients
    if coefficients.stride(1) != 1 or coefficients.stride(0) not in (0, 3):
        coefficients = coefficients.contiguous()  # (N, 3) floats: tiny
    return grad, coefficients


def learned_variance_step_operands(x_t, model_output, noise, coefficients, seed, stream,
                                   out) -> SamplerStepOperands:
    """The operands of kernels.learned_variance_step: as `sampler_step_operands`, with the
    (N, 2C, ...) model output brought to x_t's layout as a whole (the kernel reads its mean part
    and its v from the one buffer) and (N, 10) coefficient rows (row stride 0 or 10)."""
    layout = dense_layout(x_t) or "contiguous"
    x_t_dense = same_layout_or_copy(x_t, layout)
    model_output = same_layout_or_copy(model_output, layout)
    if noise is not None:
        noise = same_layout_or_copy(noise, layout)
    direct = out is not None and dense_layout(out) == layout
    x_prev = out if direct else empty_like_layout(x_t_dense, layout)
    width = coefficients.shape[1]
    if coefficients.stride(1) != 1 or coefficients.stride(0) not in (0, width):
        coefficients = coefficients.contiguous()  # (N, 10) floats: tiny
    mode = NOISE_TENSOR if noise is not None else (NOISE_STREAM if seed is not None else NOISE_NONE)
    return SamplerStepOperands(x_t_dense, model_output, None, noise, x_prev, coefficients, mode,
                               _geometry(x_t, layout, seed, stream))


@dataclass(frozen=True)
class QSampleOperands:
    x0: torch.Tensor
    noise: torch.Tensor | None      # the given noise (in x0's layout), or None to draw it
    x_t: torch.Tensor
    noise_out: torch.Tensor | None  # where drawn noise is written (None when given)
    geometry: Geometry

    @property
    def draw(self) -> bool:
        return self.noise is None

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_t, (self.noise_out if self.draw else self.noise)


def q_sample_operands(x0, noise, seed, stream) -> QSampleOperands:
    """Bring x0 (and given noise) into one dense layout and allocate the outputs in it."""
    layout = dense_layout(x0) or "contiguous"
    x0 = same_layout_or_copy(x0, layout)
    if noise is not None:
        noise = same_layout_or_copy(noise, layout)
    x_t = empty_like_layout(x0, layout)
    noise_out = empty_like_layout(x0, layout) if noise is None else None
    return QSampleOperands(x0, noise, x_t, noise_out, _geometry(x0, layout, seed, stream))
