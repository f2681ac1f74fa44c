"""DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers") in NumPy with a hand-written backward.

Config, presets and parameter names: `reference.dit_config`. Forward (D = hidden size, L = tokens):

    tokens = patchify(x) W_patch^T + b + pos            (N, L, D); pos: fixed 2-D sin-cos (MAE)
    c      = t_mlp(sinusoid(t)) [+ y_table[y]]          (N, D); row num_classes = the null label
    block i (adaLN-Zero, Sec. 3.2):
        shift1, scale1, gate1, shift2, scale2, gate2 = adaLN_modulation(SiLU(c))   (each (N, D))
        x = x + gate1 * attn(layer_norm_modulate(x, shift1, scale1))
        x = x + gate2 * mlp(layer_norm_modulate(x, shift2, scale2))     mlp: fc2(GELU_tanh(fc1))
    final: shift, scale = adaLN(SiLU(c)); out = unpatchify(layer_norm_modulate(x, shift, scale) W^T + b)

Every step's forward sits above its backward. Initialisation (the paper's code): xavier-uniform
linear weights (the patch conv's viewed as (D, C p p)), zero biases, N(0, 0.02^2) label table and
t-MLP weights; with zero_init (adaLN-Zero) every adaLN modulation and the final linear are zero,
so each block starts as the identity and the untrained net outputs 0.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ._validate import check_class_labels, check_float_array, check_parameter_names
from .attention import scaled_dot_product_attention, scaled_dot_product_attention_backward
from .dit_config import DiTConfig, dit_parameter_shapes
from .layer_norm_modulate import layer_norm_modulate, layer_norm_modulate_backward
from .layers import embedding, embedding_backward, linear, linear_backward, silu, silu_backward, timestep_embedding

__all__ = ["DiT", "patchify", "patchify_backward", "unpatchify", "unpatchify_backward", "pos_embed_2d",
           "gelu_tanh", "gelu_tanh_backward", "self_attention", "self_attention_backward",
           "dit_block", "dit_block_backward", "final_layer", "final_layer_backward"]


# ----------------------------------------------------------------------------- patches

def patchify(x: np.ndarray, p: int) -> np.ndarray:
    """x (N, C, H, W) -> (N, (H/p)(W/p), C p p): row-major patches, features in (c, i, j) order
    (the order of a (D, C, p, p) conv weight flattened)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)


def patchify_backward(dtokens: np.ndarray, shape: tuple) -> np.ndarray:
    """dtokens (N, L, C p p) -> dx (N, C, H, W): the inverse permutation."""
    n, c, h, w = shape
    p = math.isqrt(dtokens.shape[-1] // c)
    return dtokens.reshape(n, h // p, w // p, c, p, p).transpose(0, 3, 1, 4, 2, 5).reshape(shape)


def unpatchify(tokens: np.ndarray, p: int, c: int) -> np.ndarray:
    """tokens (N, L, p p c) (features in (i, j, c) order) -> (N, c, g p, g p), g = sqrt(L)."""
    n, length, _ = tokens.shape
    g = math.isqrt(length)
    return tokens.reshape(n, g, g, p, p, c).transpose(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)


def unpatchify_backward(dout: np.ndarray, p: int) -> np.ndarray:
    """dout (N, c, H, W) -> dtokens (N, L, p p c)."""
    n, c, h, w = dout.shape
    return dout.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def pos_embed_2d(hidden: int, grid: int) -> np.ndarray:
    """(grid^2, hidden) float64 fixed 2-D sin-cos position embedding (MAE, as DiT and diffusers).

    Token m = row r, column col (row-major). First half: 1-D embedding of col, second half: of r;
    each 1-D embedding of width hidden/2 is [sin(pos omega), cos(pos omega)], omega_k =
    10000^(-k / (hidden/4)), k < hidden/4.
    """
    omega = 1.0 / 10000.0 ** (np.arange(hidden // 4, dtype=np.float64) / (hidden / 4.0))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def one_d(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(cols), one_d(rows)], axis=1)


# ----------------------------------------------------------------------------- GELU (tanh)

_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: np.ndarray):
    """x (any) -> 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (Hendrycks & Gimpel 2016)."""
    th = np.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * x * (1.0 + th), (x, th)


def gelu_tanh_backward(dout: np.ndarray, cache) -> np.ndarray:
    """d/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x, th = cache
    return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * _GELU_C * (1.0 + 3 * 0.044715 * x * x))


# ----------------------------------------------------------------------------- attention

def self_attention(x: np.ndarray, params: Mapping[str, np.ndarray], heads: int):
    """x (N, L, D) -> (N, L, D): qkv = x W_qkv^T + b (rows [q; k; v]), softmax(q k^T / sqrt(D/heads)) v,
    heads merged, proj. params: local names attn.qkv.*, attn.proj.*."""
    n, length, d = x.shape
    hd = d // heads
    qkv, qkv_cache = linear(x, params["attn.qkv.weight"], params["attn.qkv.bias"])
    qkv = qkv.reshape(n, length, 3, heads, hd).transpose(2, 0, 3, 1, 4)     # (3, N, heads, L, hd)
    o, sdpa_cache = scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], 1.0 / math.sqrt(hd))
    o = o.transpose(0, 2, 1, 3).reshape(n, length, d)
    out, proj_cache = linear(o, params["attn.proj.weight"], params["attn.proj.bias"])
    return out, (qkv_cache, sdpa_cache, proj_cache, x.shape, heads)


def self_attention_backward(dout: np.ndarray, cache):
    """dout (N, L, D) -> dx (N, L, D), {attn.qkv.*, attn.proj.*: grads}."""
    qkv_cache, sdpa_cache, proj_cache, (n, length, d), heads = cache
    grads = {}
    do, grads["attn.proj.weight"], grads["attn.proj.bias"] = linear_backward(dout, proj_cache)
    do = do.reshape(n, length, heads, d // heads).transpose(0, 2, 1, 3)
    dqkv = np.stack(scaled_dot_product_attention_backward(do, sdpa_cache))    # (3, N, heads, L, hd)
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(n, length, 3 * d)
    dx, grads["attn.qkv.weight"], grads["attn.qkv.bias"] = linear_backward(dqkv, qkv_cache)
    return dx, grads


# ----------------------------------------------------------------------------- DiT block

def dit_block(x: np.ndarray, c_silu: np.ndarray, params: Mapping[str, np.ndarray], heads: int,
              eps: float, mlp_eps: float):
    """x (N, L, D), c_silu = SiLU(c) (N, D) -> (N, L, D): the adaLN-Zero block (Fig. 3)."""
    mod, mod_cache = linear(c_silu, params["adaLN_modulation.1.weight"], params["adaLN_modulation.1.bias"])
    shift1, scale1, gate1, shift2, scale2, gate2 = np.split(mod, 6, axis=1)
    h, ln1_cache = layer_norm_modulate(x, shift1, scale1, eps)
    a, attn_cache = self_attention(h, params, heads)
    x1 = x + gate1[:, None, :] * a
    h2, ln2_cache = layer_norm_modulate(x1, shift2, scale2, mlp_eps)
    f1, fc1_cache = linear(h2, params["mlp.fc1.weight"], params["mlp.fc1.bias"])
    g, gelu_cache = gelu_tanh(f1)
    m, fc2_cache = linear(g, params["mlp.fc2.weight"], params["mlp.fc2.bias"])
    out = x1 + gate2[:, None, :] * m
    return out, (mod_cache, ln1_cache, attn_cache, a, gate1, ln2_cache, fc1_cache, gelu_cache, fc2_cache, m, gate2)


def dit_block_backward(dout: np.ndarray, cache):
    """dout (N, L, D) -> dx (N, L, D), dc_silu (N, D), {local name: grad}."""
    mod_cache, ln1_cache, attn_cache, a, gate1, ln2_cache, fc1_cache, gelu_cache, fc2_cache, m, gate2 = cache
    grads = {}
    dgate2 = np.sum(dout * m, axis=1)                                     # out = x1 + gate2 m
    dm = dout * gate2[:, None, :]
    dg, grads["mlp.fc2.weight"], grads["mlp.fc2.bias"] = linear_backward(dm, fc2_cache)
    df1 = gelu_tanh_backward(dg, gelu_cache)
    dh2, grads["mlp.fc1.weight"], grads["mlp.fc1.bias"] = linear_backward(df1, fc1_cache)
    dx1_ln, dshift2, dscale2 = layer_norm_modulate_backward(dh2, ln2_cache)
    dx1 = dout + dx1_ln
    dgate1 = np.sum(dx1 * a, axis=1)                                      # x1 = x + gate1 a
    dh, attn_grads = self_attention_backward(dx1 * gate1[:, None, :], attn_cache)
    grads.update(attn_grads)
    dx_ln, dshift1, dscale1 = layer_norm_modulate_backward(dh, ln1_cache)
    dmod = np.concatenate([dshift1, dscale1, dgate1, dshift2, dscale2, dgate2], axis=1)
    dc_silu, grads["adaLN_modulation.1.weight"], grads["adaLN_modulation.1.bias"] = linear_backward(dmod, mod_cache)
    return dx1 + dx_ln, dc_silu, grads


def final_layer(x: np.ndarray, c_silu: np.ndarray, params: Mapping[str, np.ndarray], eps: float):
    """x (N, L, D), c_silu (N, D) -> (N, L, p p out): adaLN (shift, scale) then a linear map."""
    mod, mod_cache = linear(c_silu, params["adaLN_modulation.1.weight"], params["adaLN_modulation.1.bias"])
    shift, scale = np.split(mod, 2, axis=1)
    h, ln_cache = layer_norm_modulate(x, shift, scale, eps)
    out, lin_cache = linear(h, params["linear.weight"], params["linear.bias"])
    return out, (mod_cache, ln_cache, lin_cache)


def final_layer_backward(dout: np.ndarray, cache):
    """dout (N, L, p p out) -> dx (N, L, D), dc_silu (N, D), {local name: grad}."""
    mod_cache, ln_cache, lin_cache = cache
    grads = {}
    dh, grads["linear.weight"], grads["linear.bias"] = linear_backward(dout, lin_cache)
    dx, dshift, dscale = layer_norm_modulate_backward(dh, ln_cache)
    dc_silu, grads["adaLN_modulation.1.weight"], grads["adaLN_modulation.1.bias"] = \
        linear_backward(np.concatenate([dshift, dscale], axis=1), mod_cache)
    return dx, dc_silu, grads


def _local(params: Mapping[str, np.ndarray], prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


# ----------------------------------------------------------------------------- the model

class DiT:
    """The DiT noise model: `forward(x, t, y=None) -> (N, out_channels, H, W)`, float64 by default.

    y: (N,) class ids in [0, num_classes] (num_classes = the null label of classifier-free
    guidance), None = the null label; must be None without classes. Follows the model protocol
    of `reference.UNet` (`params`, `grads`, `forward`, `backward` -> dx, `num_classes`).
    """

    def __init__(self, config: DiTConfig, params: Mapping[str, np.ndarray] | None = None, seed: int = 0,
                 *, zero_init: bool = True, dtype=np.float64):
        if not isinstance(config, DiTConfig):
            raise TypeError(f"config must be a DiTConfig, got {type(config).__name__}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.config = config
        self.shapes = dit_parameter_shapes(config)
        self.pos_embed = pos_embed_2d(config.hidden_size, config.grid_size).astype(self.dtype)
        if params is None:
            self.params = self._initial_params(np.random.default_rng(seed), zero_init)
        else:
            self.params = {name: np.zeros(shape, self.dtype) for name, shape in self.shapes.items()}
            self.load(params)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._tape = None

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    @property
    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def _initial_params(self, rng: np.random.Generator, zero_init: bool) -> dict:
        params = {}
        for name, shape in self.shapes.items():
            if name.endswith(".bias"):
                value = np.zeros(shape)
            elif name.startswith(("t_embedder", "y_embedder")):
                value = rng.normal(0.0, 0.02, shape)
            else:  # xavier_uniform on the (out, in) view: U(+-sqrt(6 / (fan_in + fan_out)))
                fan_out, fan_in = shape[0], int(np.prod(shape[1:]))
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                value = rng.uniform(-bound, bound, shape)
            params[name] = value.astype(self.dtype)
        if zero_init:
            for name in params:
                if "adaLN_modulation" in name or name.startswith("final_layer.linear"):
                    params[name][...] = 0.0
        return params

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy `params` in place; all missing, unexpected and mis-shaped names are listed at once."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping name -> array, got {type(params).__name__}")
        check_parameter_names(self.shapes, params, "params", "the DiT config")
        for name in self.shapes:
            np.copyto(self.params[name], check_float_array(np.asarray(params[name]), f"params[{name!r}]"),
                      casting="same_kind")

    def _check_inputs(self, x, t, y):
        cfg = self.config
        x = check_float_array(x, "x", min_ndim=4)
        if x.ndim == 4 and (x.shape[2] % cfg.patch_size or x.shape[3] % cfg.patch_size):
            raise ValueError(f"x: image size {x.shape[2:]} is not divisible by patch_size {cfg.patch_size}")
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"x must have shape (N, {want[0]}, {want[1]}, {want[2]}), got {x.shape}")
        n = x.shape[0]
        t_arr = np.asarray(t)
        if t_arr.dtype == bool or not np.issubdtype(t_arr.dtype, np.integer):
            raise TypeError(f"t must be an int or an integer array, got {t_arr.dtype}")
        t_arr = np.full(n, int(t_arr), dtype=np.int64) if t_arr.ndim == 0 else t_arr
        if t_arr.shape != (n,):
            raise ValueError(f"t must be an int or have shape ({n},), got {t_arr.shape}")
        if n and t_arr.min() < 0:
            raise ValueError(f"t must be >= 0, got min {t_arr.min()}")
        if cfg.num_classes is None:
            if y is not None:
                raise ValueError("y must be None for an unconditional DiT (config.num_classes is None)")
        else:
            y = np.full(n, cfg.num_classes, dtype=np.int64) if y is None else np.asarray(y)
            if y.ndim == 0 and np.issubdtype(y.dtype, np.integer):
                y = np.full(n, int(y), dtype=np.int64)
            if y.shape != (n,):
                raise ValueError(f"y must have shape ({n},), got {y.shape}")
            y = check_class_labels(y, cfg.num_classes, "y", allow_null=True)
        return x.astype(self.dtype, copy=False), t_arr.astype(np.int64), y

    def forward(self, x: np.ndarray, t, y=None) -> np.ndarray:
        """x (N, C, H, W), t (N,) ints >= 0, y (N,) or None -> (N, out_channels, H, W); caches for backward."""
        return self._run(x, t, y, keep_cache=True)

    def __call__(self, x: np.ndarray, t, y=None) -> np.ndarray:
        """Inference (no cache): what the reference samplers call."""
        return self._run(x, t, y, keep_cache=False)

    def _run(self, x, t, y, keep_cache: bool):
        cfg, p = self.config, self.params
        x, t, y = self._check_inputs(x, t, y)
        w_patch = p["x_embedder.proj.weight"]
        tokens, patch_cache = linear(patchify(x, cfg.patch_size), w_patch.reshape(w_patch.shape[0], -1),
                                     p["x_embedder.proj.bias"])
        h = tokens + self.pos_embed[None]
        t_freq = timestep_embedding(t, cfg.frequency_embedding_size, True, cfg.freq_shift, dtype=self.dtype)
        c, t1_cache = linear(t_freq, p["t_embedder.mlp.0.weight"], p["t_embedder.mlp.0.bias"])
        c, t_silu_cache = silu(c)
        c, t2_cache = linear(c, p["t_embedder.mlp.2.weight"], p["t_embedder.mlp.2.bias"])
        y_cache = None
        if cfg.num_classes is not None:
            rows, y_cache = embedding(y, p["y_embedder.embedding_table.weight"])
            c = c + rows
        c_silu, c_silu_cache = silu(c)
        block_caches = []
        for i in range(cfg.depth):
            h, cache = dit_block(h, c_silu, _local(p, f"blocks.{i}"), cfg.num_heads, cfg.eps, cfg.mlp_eps)
            block_caches.append(cache)
        out, final_cache = final_layer(h, c_silu, _local(p, "final_layer"), cfg.eps)
        self._tape = (x.shape, patch_cache, t1_cache, t_silu_cache, t2_cache, y_cache, c_silu_cache, block_caches,
                      final_cache) if keep_cache else None
        return unpatchify(out, cfg.patch_size, cfg.out_channels)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (N, out_channels, H, W) -> dx (N, C, H, W); parameter gradients into `self.grads`."""
        if self._tape is None:
            raise RuntimeError("backward needs a preceding forward (model(x, t) keeps no cache)")
        cfg = self.config
        x_shape, patch_cache, t1_cache, t_silu_cache, t2_cache, y_cache, c_silu_cache, block_caches, final_cache = self._tape
        want = (x_shape[0], cfg.out_channels, x_shape[2], x_shape[3])
        if dout.shape != want:
            raise ValueError(f"dout must have the forward output's shape {want}, got {dout.shape}")
        g = self.grads

        def put(prefix, local):
            for k, v in local.items():
                g[f"{prefix}.{k}"][...] = v

        dh, dc_silu, local = final_layer_backward(unpatchify_backward(dout, cfg.patch_size), final_cache)
        put("final_layer", local)
        for i in reversed(range(cfg.depth)):
            dh, dc_block, local = dit_block_backward(dh, block_caches[i])
            dc_silu = dc_silu + dc_block                                     # SiLU(c) feeds every block
            put(f"blocks.{i}", local)
        dc = silu_backward(dc_silu, c_silu_cache)
        if y_cache is not None:
            g["y_embedder.embedding_table.weight"][...] = embedding_backward(dc, y_cache)
        dc, g["t_embedder.mlp.2.weight"][...], g["t_embedder.mlp.2.bias"][...] = linear_backward(dc, t2_cache)
        dc = silu_backward(dc, t_silu_cache)
        _, g["t_embedder.mlp.0.weight"][...], g["t_embedder.mlp.0.bias"][...] = linear_backward(dc, t1_cache)
        dtokens, dw_patch, g["x_embedder.proj.bias"][...] = linear_backward(dh, patch_cache)  # pos is fixed
        g["x_embedder.proj.weight"][...] = dw_patch.reshape(g["x_embedder.proj.weight"].shape)
        return patchify_backward(dtokens, x_shape)

    def __repr__(self) -> str:
        return f"DiT({self.config}, {self.num_parameters:,} parameters)"
