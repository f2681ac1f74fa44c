"""The DDPM UNet's self-attention block (diffusers `Attention` as UNet2DModel uses it), forward above backward.

    x (N, C, H, W) -> h = GroupNorm(x) (no SiLU) -> tokens (N, L = H*W, C)
    q, k, v = tokens W_q^T + b_q, ...        per-pixel linear maps = 1x1 convs, weights (C, C)
    heads: channel c = head * d + j, d = C / heads   (the UNet passes config.heads(C): a fixed
           count, or C / head_channels, so blocks of different widths get different counts)
    P = softmax(q k^T / sqrt(d)) over the L key positions     (Vaswani et al. 2017, Eq. 1)
    o = P v  -> heads merged -> o W_out^T + b_out -> (N, C, H, W) -> + x   (residual)

Parameters are passed as a mapping with the local diffusers names `group_norm.weight`,
`group_norm.bias`, `to_q.weight`, `to_q.bias`, `to_k.*`, `to_v.*`, `to_out.0.*`; the backward
returns the gradients under the same names. float64 unless every input is float32.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ._validate import check_float_array
from .layers import linear, linear_backward
from .norm import group_norm, group_norm_backward

__all__ = [
    "softmax", "softmax_backward",
    "scaled_dot_product_attention", "scaled_dot_product_attention_backward",
    "attention_block", "attention_block_backward",
    "ATTENTION_PARAMETERS",
]

ATTENTION_PARAMETERS = (
    "group_norm.weight", "group_norm.bias",
    "to_q.weight", "to_q.bias", "to_k.weight", "to_k.bias", "to_v.weight", "to_v.bias",
    "to_out.0.weight", "to_out.0.bias",
)


# ----------------------------------------------------------------------------- softmax

def softmax(scores: np.ndarray):
    """scores (..., L) -> P (..., L), rows summing to one (max subtracted for stability)."""
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp: np.ndarray, cache) -> np.ndarray:
    """dP (..., L) -> dscores (..., L) = P * (dP - sum_j dP_j P_j)  (the softmax Jacobian)."""
    p = cache
    return p * (dp - np.sum(dp * p, axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- attention

def scaled_dot_product_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float):
    """q, k, v (..., L, d) -> o (..., L, d) = softmax(scale q k^T) v; returns (o, cache)."""
    scores = (q @ np.swapaxes(k, -1, -2)) * scale                    # (..., L, L)
    p, p_cache = softmax(scores)
    return p @ v, (q, k, v, p_cache, scale)


def scaled_dot_product_attention_backward(do: np.ndarray, cache):
    """do (..., L, d) -> dq, dk, dv (..., L, d)."""
    q, k, v, p_cache, scale = cache
    p = p_cache
    dv = np.swapaxes(p, -1, -2) @ do                                  # o = P v
    dp = do @ np.swapaxes(v, -1, -2)
    dscores = softmax_backward(dp, p_cache) * scale                   # scores = scale q k^T
    dq = dscores @ k
    dk = np.swapaxes(dscores, -1, -2) @ q
    return dq, dk, dv


def _check_params(params: Mapping[str, np.ndarray], c: int) -> None:
    missing = [name for name in ATTENTION_PARAMETERS if name not in params]
    if missing:
        raise ValueError(f"attention params are missing {missing}")
    for name in ATTENTION_PARAMETERS:
        want = (c,) if name.endswith("bias") or name.startswith("group_norm") else (c, c)
        got = np.shape(params[name])
        if got != want:
            raise ValueError(f"attention param {name} must have shape {want} for C={c}, got {got}")


def attention_block(x: np.ndarray, params: Mapping[str, np.ndarray], groups: int,
                    eps: float = 1e-6, num_heads: int = 1):
    """x (N, C, H, W) -> x + Attention(GroupNorm(x)) of the same shape; returns (out, cache).

    params: the ATTENTION_PARAMETERS by local name; num_heads must divide C, scale 1/sqrt(C/heads).
    """
    x = check_float_array(x, "x", min_ndim=4)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1 \
            or c % num_heads:
        raise ValueError(f"num_heads must be a positive int dividing C={c}, got {num_heads!r}")
    _check_params(params, c)
    length, d = h * w, c // num_heads
    scale = 1.0 / math.sqrt(d)                                       # a Python float keeps float32 float32

    hn, norm_cache = group_norm(x, params["group_norm.weight"], params["group_norm.bias"], groups, eps)
    tokens = hn.reshape(n, c, length).transpose(0, 2, 1)              # (N, L, C)
    q, q_cache = linear(tokens, params["to_q.weight"], params["to_q.bias"])
    k, k_cache = linear(tokens, params["to_k.weight"], params["to_k.bias"])
    v, v_cache = linear(tokens, params["to_v.weight"], params["to_v.bias"])

    def split(t):  # (N, L, C) -> (N, heads, L, d)
        return t.reshape(n, length, num_heads, d).transpose(0, 2, 1, 3)

    o, sdpa_cache = scaled_dot_product_attention(split(q), split(k), split(v), scale)
    o = o.transpose(0, 2, 1, 3).reshape(n, length, c)                 # heads merged
    proj, out_cache = linear(o, params["to_out.0.weight"], params["to_out.0.bias"])
    out = x + proj.transpose(0, 2, 1).reshape(n, c, h, w)             # residual
    return out, (norm_cache, q_cache, k_cache, v_cache, sdpa_cache, out_cache, x.shape, num_heads)


def attention_block_backward(dout: np.ndarray, cache):
    """dout (N, C, H, W) -> dx (N, C, H, W), grads {local name: array} for ATTENTION_PARAMETERS."""
    norm_cache, q_cache, k_cache, v_cache, sdpa_cache, out_cache, x_shape, num_heads = cache
    if dout.shape != x_shape:
        raise ValueError(f"dout must have the forward output's shape {x_shape}, got {dout.shape}")
    n, c, h, w = x_shape
    length, d = h * w, c // num_heads
    grads = {}
    dproj = dout.reshape(n, c, length).transpose(0, 2, 1)             # (N, L, C)
    do, grads["to_out.0.weight"], grads["to_out.0.bias"] = linear_backward(dproj, out_cache)
    do = do.reshape(n, length, num_heads, d).transpose(0, 2, 1, 3)
    dq, dk, dv = scaled_dot_product_attention_backward(do, sdpa_cache)

    def merge(t):  # (N, heads, L, d) -> (N, L, C)
        return t.transpose(0, 2, 1, 3).reshape(n, length, c)

    dtokens_q, grads["to_q.weight"], grads["to_q.bias"] = linear_backward(merge(dq), q_cache)
    dtokens_k, grads["to_k.weight"], grads["to_k.bias"] = linear_backward(merge(dk), k_cache)
    dtokens_v, grads["to_v.weight"], grads["to_v.bias"] = linear_backward(merge(dv), v_cache)
    dtokens = dtokens_q + dtokens_k + dtokens_v
    dhn = dtokens.transpose(0, 2, 1).reshape(x_shape)
    dx_norm, grads["group_norm.weight"], grads["group_norm.bias"] = group_norm_backward(dhn, norm_cache)
    return dout + dx_norm, grads
