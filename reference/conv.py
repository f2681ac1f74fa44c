"""2-D convolution, nearest upsampling and the UNet's resampling layers, each forward above its backward.

Convolution is im2col + one matrix product (no Python loops over pixels): the padded input is
viewed as (N, Ho, Wo, C_in, kh, kw) windows with `sliding_window_view`, flattened to columns
(N*Ho*Wo, C_in*kh*kw) and multiplied by the (C_out, C_in*kh*kw) weight matrix. The backward
multiplies back and scatters the columns onto the input with one strided add per kernel tap
(col2im: kh*kw slices, not pixels).

Layouts are torch's: x (N, C, H, W), weight (C_out, C_in, kh, kw), bias (C_out,).
float64 unless every input array is float32.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._validate import check_float_array, result_dtype

__all__ = [
    "conv2d", "conv2d_backward",
    "upsample_nearest2x", "upsample_nearest2x_backward",
    "downsample", "downsample_backward",
    "upsample", "upsample_backward",
]


def _padding4(padding, name: str = "padding") -> tuple[int, int, int, int]:
    """int p -> (p, p, p, p); a 4-tuple is (top, bottom, left, right), each >= 0."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        pads = (int(padding),) * 4
    else:
        try:
            pads = tuple(int(p) for p in padding)
        except TypeError:
            raise TypeError(f"{name} must be an int or (top, bottom, left, right), got {padding!r}") from None
        if len(pads) != 4:
            raise ValueError(f"{name} must be an int or 4 ints (top, bottom, left, right), got {padding!r}")
    if min(pads) < 0:
        raise ValueError(f"{name} must be >= 0, got {padding!r}")
    return pads


# ----------------------------------------------------------------------------- conv2d

def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int = 1,
           padding=0):
    """out (N, C_out, Ho, Wo) = cross-correlation of zero-padded x with weight, + bias; returns (out, cache).

    x (N, C_in, H, W); weight (C_out, C_in, kh, kw); bias (C_out,) or None; stride >= 1;
    padding an int or (top, bottom, left, right). Ho = (H + top + bottom - kh) // stride + 1.
    """
    x = check_float_array(x, "x", min_ndim=4)
    weight = check_float_array(weight, "weight", min_ndim=4)
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d wants x (N, C, H, W) and weight (C_out, C_in, kh, kw), "
                         f"got x {x.shape}, weight {weight.shape}")
    n, c_in, h, w = x.shape
    c_out, w_in, kh, kw = weight.shape
    if w_in != c_in:
        raise ValueError(f"x has {c_in} channels but weight expects C_in = {w_in} (weight {weight.shape})")
    if bias is not None:
        bias = check_float_array(bias, "bias")
        if bias.shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},), got {bias.shape}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    top, bottom, left, right = _padding4(padding)
    hp, wp = h + top + bottom, w + left + right
    if hp < kh or wp < kw:
        raise ValueError(f"padded input {hp}x{wp} is smaller than the kernel {kh}x{kw}")
    dtype = result_dtype(x, weight, bias)

    xp = np.pad(x.astype(dtype, copy=False), ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = windows.shape[2], windows.shape[3]
    # im2col: (N, C_in, Ho, Wo, kh, kw) -> (N*Ho*Wo, C_in*kh*kw), one copy
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c_in * kh * kw)
    w_mat = weight.astype(dtype, copy=False).reshape(c_out, -1)
    out = cols @ w_mat.T                                               # (N*Ho*Wo, C_out)
    if bias is not None:
        out += bias.astype(dtype, copy=False)
    out = out.reshape(n, ho, wo, c_out).transpose(0, 3, 1, 2)
    cache = (cols, w_mat, x.shape, weight.shape, stride, (top, bottom, left, right),
             bias is not None, (x.dtype, weight.dtype, None if bias is None else bias.dtype))
    return np.ascontiguousarray(out), cache


def conv2d_backward(dout: np.ndarray, cache):
    """dout (N, C_out, Ho, Wo) -> dx (N, C_in, H, W), dweight (C_out, C_in, kh, kw), dbias (C_out,) or None."""
    cols, w_mat, x_shape, w_shape, stride, (top, bottom, left, right), has_bias, dtypes = cache
    n, c_in, h, w = x_shape
    c_out, _, kh, kw = w_shape
    dout = check_float_array(dout, "dout", min_ndim=4)
    ho = (h + top + bottom - kh) // stride + 1
    wo = (w + left + right - kw) // stride + 1
    if dout.shape != (n, c_out, ho, wo):
        raise ValueError(f"dout must have the forward output's shape {(n, c_out, ho, wo)}, got {dout.shape}")
    dout_mat = dout.astype(cols.dtype, copy=False).transpose(0, 2, 3, 1).reshape(-1, c_out)

    dweight = (dout_mat.T @ cols).reshape(w_shape)                     # sum over positions of dout^T cols
    dbias = dout_mat.sum(axis=0) if has_bias else None
    dcols = (dout_mat @ w_mat).reshape(n, ho, wo, c_in, kh, kw)        # d out / d cols = W
    # col2im: tap (i, j) of output pixel (p, q) read padded pixel (i + stride p, j + stride q)
    dxp = np.zeros((n, c_in, h + top + bottom, w + left + right), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += (
                dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2))
    dx = dxp[:, :, top:top + h, left:left + w]
    x_dtype, w_dtype, b_dtype = dtypes
    dx_dtype = result_dtype(dout, np.empty(0, x_dtype))
    return (np.ascontiguousarray(dx, dtype=dx_dtype), dweight.astype(w_dtype, copy=False),
            None if dbias is None else dbias.astype(b_dtype, copy=False))


# ----------------------------------------------------------------------------- nearest 2x

def upsample_nearest2x(x: np.ndarray):
    """x (N, C, H, W) -> (N, C, 2H, 2W), each pixel repeated in a 2x2 block (F.interpolate nearest)."""
    x = check_float_array(x, "x", min_ndim=4)
    return x.repeat(2, axis=2).repeat(2, axis=3), x.shape


def upsample_nearest2x_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (N, C, 2H, 2W) -> dx (N, C, H, W): each input pixel's 2x2 block summed."""
    n, c, h, w = cache
    if dout.shape != (n, c, 2 * h, 2 * w):
        raise ValueError(f"dout must have shape {(n, c, 2 * h, 2 * w)}, got {dout.shape}")
    return dout.reshape(n, c, h, 2, w, 2).sum(axis=(3, 5))


# ----------------------------------------------------------------------------- UNet resampling

def downsample(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: int = 0):
    """Downsample2D: x (N, C, H, W) -> (N, C_out, H/2, W/2) with a 3x3 stride-2 conv.

    padding 0 is the original DDPM's (diffusers `downsample_padding=0`): pad (bottom 1,
    right 1) then a padding-0 conv, floor(H/2) (H >= 2); padding 1 pads every side by one,
    ceil(H/2). Both give H/2 for the even sizes the UNet downsamples.
    """
    if padding not in (0, 1):
        raise ValueError(f"padding must be 0 or 1 (diffusers downsample_padding), got {padding!r}")
    pads = (0, 1, 0, 1) if padding == 0 else 1
    return conv2d(x, weight, bias, stride=2, padding=pads)


def downsample_backward(dout: np.ndarray, cache):
    """dout (N, C_out, H/2, W/2) -> dx (N, C, H, W), dweight, dbias."""
    return conv2d_backward(dout, cache)


def upsample(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None):
    """Upsample2D: x (N, C, H, W) -> nearest 2x -> 3x3 conv (padding 1) -> (N, C_out, 2H, 2W)."""
    up, up_cache = upsample_nearest2x(x)
    out, conv_cache = conv2d(up, weight, bias, stride=1, padding=1)
    return out, (up_cache, conv_cache)


def upsample_backward(dout: np.ndarray, cache):
    """dout (N, C_out, 2H, 2W) -> dx (N, C, H, W), dweight, dbias."""
    up_cache, conv_cache = cache
    dup, dweight, dbias = conv2d_backward(dout, conv_cache)
    return upsample_nearest2x_backward(dup, up_cache), dweight, dbias
