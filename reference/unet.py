"""The DDPM UNet (Ho et al. 2020, Appendix B; DESIGN contract 3) in NumPy with a full hand-written backward.

Architecture and parameter naming are those of `reference.unet_config` (diffusers `UNet2DModel`;
read its docstring for the block layout). Every parameter lives in ONE flat dict `UNet.params`
keyed by exactly the names of `parameter_shapes(config)`, the names the torch UNet and a
diffusers state dict use, e.g.

    conv_in.weight                                   (ch*ch_mult[0], in_channels, 3, 3)
    time_embedding.linear_1.weight / .bias           (4ch, ch) / (4ch,)
    class_embedding.weight                           (num_classes + 1, 4ch), row num_classes = null
    down_blocks.{i}.resnets.{j}.norm1.weight         ResBlock j of level i (i = 0 at full resolution)
        ... .conv1 .time_emb_proj .norm2 .conv2 [.conv_shortcut when channels change]
    down_blocks.{i}.attentions.{j}.group_norm / .to_q / .to_k / .to_v / .to_out.0
    down_blocks.{i}.downsamplers.0.conv.weight       stride-2 3x3 conv (all levels but the last)
    mid_block.resnets.{0,1}, mid_block.attentions.0
    up_blocks.{i}.resnets.{j} / .attentions.{j}      i = 0 at the coarsest level, j < num_res_blocks + 1
    up_blocks.{i}.upsamplers.0.conv.weight           nearest 2x + 3x3 conv (all up blocks but the last)
    conv_norm_out.weight / .bias, conv_out.weight / .bias

Forward (N = batch, temb = time embedding (N, 4ch)):

    temb = linear_2(SiLU(linear_1(sinusoidal(t, ch))))  [+ class_embedding[y]]
    h = conv_in(x); skips = [h]
    down level i: for j: h = ResBlock(h, temb); h = Attention(h) if level i has attention;
                  skips += [h];   then (not the last level) h = Downsample(h); skips += [h]
    mid:          h = ResBlock(h), Attention(h), ResBlock(h)
    up block i:   for j < num_res_blocks + 1: h = ResBlock(concat[h, skips.pop()], temb)
                  (+ Attention); then (not the last block) h = Upsample(h)
    out = conv_out(SiLU(GroupNorm(h)))       every GroupNorm+SiLU is one `group_norm_silu`

    ResBlock(x, temb) = skip(x) + conv2(Dropout(GNSiLU_2(conv1(GNSiLU_1(x)) + time_emb_proj(SiLU(temb)))))
    with skip a 1x1 conv when channels change, else the identity; the time-embedding add is
    the `shift` of the second group_norm_silu (what the fused kernel takes).

Dropout (inverted, as torch: kept values scaled by 1/(1 - p)) acts only in the ResBlocks and only
with `train=True` and config.dropout > 0. Its masks are a dict keyed by the ResBlock prefix
(e.g. "down_blocks.0.resnets.1", "mid_block.resnets.0", "up_blocks.1.resnets.2") holding a
boolean (or 0/1) array of shape (N, C_out, H, W) of that block's norm2 output, True = kept.
Blocks missing from `dropout_masks` draw `rng.random(shape) >= p` in forward order, from `rng`
or else the model's own `self.rng`; the masks used are left in `self.last_dropout_masks`.

Initialisation (`UNet(config, seed=...)`): torch's nn defaults, drawn in parameter_shapes order
from numpy.random.default_rng(seed): conv and linear weights kaiming_uniform(a=sqrt(5)), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), GroupNorm weight 1
and bias 0, class embedding N(0, 1). With zero_init=True (the default, as the original DDPM
code does) the weights and biases of every ResBlock's conv2, every attention's to_out.0 and of
conv_out are zero, so the untrained net outputs 0 and each residual block starts as the identity.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ._validate import check_class_labels, check_float_array, check_parameter_names
from .attention import attention_block, attention_block_backward
from .conv import conv2d, conv2d_backward, downsample, downsample_backward, upsample, upsample_backward
from .layers import embedding, embedding_backward, linear, linear_backward, silu, silu_backward, timestep_embedding
from .norm import group_norm_silu, group_norm_silu_backward
from .unet_config import UNetConfig, parameter_shapes

__all__ = ["UNet", "resnet_block", "resnet_block_backward", "dropout", "dropout_backward",
           "time_embedding_mlp", "time_embedding_mlp_backward"]


# ----------------------------------------------------------------------------- dropout

def dropout(x: np.ndarray, mask: np.ndarray | None, p: float):
    """x (any) -> x * mask / (1 - p) (inverted dropout, Srivastava et al. 2014); mask None = identity."""
    if mask is None:
        return x, None
    scale = 1.0 / (1.0 - p)
    keep = mask.astype(x.dtype) * scale
    return x * keep, keep


def dropout_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (any) -> dx = dout * mask / (1 - p)."""
    return dout if cache is None else dout * cache


# ----------------------------------------------------------------------------- ResBlock

def resnet_block(x: np.ndarray, temb_silu: np.ndarray, params: Mapping[str, np.ndarray],
                 groups: int, eps: float, dropout_mask: np.ndarray | None = None, p: float = 0.0):
    """ResnetBlock2D: x (N, C_in, H, W), temb_silu = SiLU(temb) (N, E) -> (N, C_out, H, W).

    params by local name (norm1.*, conv1.*, time_emb_proj.*, norm2.*, conv2.*, conv_shortcut.*
    when C_in != C_out). temb_silu None: a block without time embedding (no time_emb_proj, as
    diffusers' ResnetBlock2D with temb_channels=None in the autoencoder). Returns (out, cache).
    """
    h1, norm1_cache = group_norm_silu(x, params["norm1.weight"], params["norm1.bias"], groups, eps)
    h2, conv1_cache = conv2d(h1, params["conv1.weight"], params["conv1.bias"], 1, 1)
    temb_proj = proj_cache = None
    if temb_silu is not None:
        temb_proj, proj_cache = linear(temb_silu, params["time_emb_proj.weight"], params["time_emb_proj.bias"])
    h3, norm2_cache = group_norm_silu(h2, params["norm2.weight"], params["norm2.bias"], groups, eps,
                                      shift=temb_proj)                         # GNSiLU(h2 + temb_proj)
    h4, dropout_cache = dropout(h3, dropout_mask, p)
    h5, conv2_cache = conv2d(h4, params["conv2.weight"], params["conv2.bias"], 1, 1)
    if "conv_shortcut.weight" in params:
        skip, shortcut_cache = conv2d(x, params["conv_shortcut.weight"], params["conv_shortcut.bias"], 1, 0)
    else:
        skip, shortcut_cache = x, None
    cache = (norm1_cache, conv1_cache, proj_cache, norm2_cache, dropout_cache, conv2_cache, shortcut_cache)
    return skip + h5, cache


def resnet_block_backward(dout: np.ndarray, cache):
    """dout (N, C_out, H, W) -> dx (N, C_in, H, W), dtemb_silu (N, E) (None without temb), grads."""
    norm1_cache, conv1_cache, proj_cache, norm2_cache, dropout_cache, conv2_cache, shortcut_cache = cache
    g = {}
    dh4, g["conv2.weight"], g["conv2.bias"] = conv2d_backward(dout, conv2_cache)
    dh3 = dropout_backward(dh4, dropout_cache)
    dh2, g["norm2.weight"], g["norm2.bias"] = group_norm_silu_backward(dh3, norm2_cache)
    dtemb_silu = None
    if proj_cache is not None:
        dtemb_proj = dh2.sum(axis=(2, 3))                                      # the shift is broadcast over H, W
        dtemb_silu, g["time_emb_proj.weight"], g["time_emb_proj.bias"] = linear_backward(dtemb_proj, proj_cache)
    dh1, g["conv1.weight"], g["conv1.bias"] = conv2d_backward(dh2, conv1_cache)
    dx, g["norm1.weight"], g["norm1.bias"] = group_norm_silu_backward(dh1, norm1_cache)
    if shortcut_cache is None:
        dx = dx + dout
    else:
        dx_skip, g["conv_shortcut.weight"], g["conv_shortcut.bias"] = conv2d_backward(dout, shortcut_cache)
        dx = dx + dx_skip
    return dx, dtemb_silu, g


# ----------------------------------------------------------------------------- time embedding

def time_embedding_mlp(t_emb: np.ndarray, params: Mapping[str, np.ndarray]):
    """TimestepEmbedding: t_emb (N, ch) sinusoidal -> linear_1 -> SiLU -> linear_2 -> temb (N, 4ch).

    params by local name linear_1.weight/.bias, linear_2.weight/.bias. Returns (temb, cache).
    """
    e1, linear_1_cache = linear(t_emb, params["linear_1.weight"], params["linear_1.bias"])
    e2, silu_cache = silu(e1)
    temb, linear_2_cache = linear(e2, params["linear_2.weight"], params["linear_2.bias"])
    return temb, (linear_1_cache, silu_cache, linear_2_cache)


def time_embedding_mlp_backward(dtemb: np.ndarray, cache):
    """dtemb (N, 4ch) -> dt_emb (N, ch), grads {local name: array}."""
    linear_1_cache, silu_cache, linear_2_cache = cache
    g = {}
    de2, g["linear_2.weight"], g["linear_2.bias"] = linear_backward(dtemb, linear_2_cache)
    de1 = silu_backward(de2, silu_cache)
    dt_emb, g["linear_1.weight"], g["linear_1.bias"] = linear_backward(de1, linear_1_cache)
    return dt_emb, g


def _local(params: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The parameters under `prefix.` with the prefix removed."""
    cut = len(prefix) + 1
    return {name[cut:]: value for name, value in params.items() if name.startswith(prefix + ".")}


# ----------------------------------------------------------------------------- the UNet

class UNet:
    """The DDPM eps-model: `forward(x, t, y=None) -> (N, out_channels, H, W)`, float64 by default.

    Args:
        config: the UNetConfig (architecture; see `reference.unet_config`).
        params: a mapping name -> array to load (validated like `load`), or None to initialise.
        seed: initialisation seed (default_rng(seed)); `self.rng` = default_rng([seed, 1]) draws
            the dropout masks when neither masks nor an rng are passed to `forward`.
        zero_init: zero conv2 of each ResBlock, each attention's to_out.0 and conv_out (DDPM).
        dtype: np.float64 (default) or np.float32, the dtype of the parameters and the math.

    Follows the model protocol of `reference.train` (`params`, `grads`, `forward`, `backward`,
    `num_classes`); `model(x, t, y)` is an inference forward that keeps no cache (samplers).
    """

    def __init__(self, config: UNetConfig, params: Mapping[str, np.ndarray] | None = None,
                 seed: int = 0, *, zero_init: bool = True, dtype=np.float64):
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.config = config
        self.shapes = parameter_shapes(config)
        self.rng = np.random.default_rng([seed, 1])                    # dropout masks; init uses [seed]
        if params is None:
            self.params = self._initial_params(np.random.default_rng(seed), zero_init)
        else:
            self.params = {name: np.zeros(shape, self.dtype) for name, shape in self.shapes.items()}
            self.load(params)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.last_dropout_masks: dict[str, np.ndarray] = {}
        self._tape = None

    # ------------------------------------------------------------------------- parameters

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    @property
    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def _initial_params(self, rng: np.random.Generator, zero_init: bool) -> dict[str, np.ndarray]:
        params = {}
        for name, shape in self.shapes.items():
            if ".norm" in name or "group_norm" in name or name.startswith("conv_norm_out"):
                value = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
            elif name == "class_embedding.weight":
                value = rng.standard_normal(shape)                       # nn.Embedding: N(0, 1)
            else:
                # nn.Conv2d / nn.Linear: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)), bias likewise
                weight_shape = self.shapes[name.rsplit(".", 1)[0] + ".weight"]
                fan_in = int(np.prod(weight_shape[1:]))
                bound = 1.0 / np.sqrt(fan_in)
                value = rng.uniform(-bound, bound, shape)
            params[name] = value.astype(self.dtype)
        if zero_init:
            for name in params:
                if (".conv2." in name or ".to_out.0." in name or name.startswith("conv_out.")):
                    params[name][...] = 0.0
        return params

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy `params` into `self.params` (in place, so optimisers keep their references).

        Every name of parameter_shapes(config) must be present with its exact shape and a float
        dtype and finite values; all missing, unexpected and mis-shaped names are listed at once.
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping name -> array, got {type(params).__name__}")
        check_parameter_names(self.shapes, params, "params")
        for name in self.shapes:
            value = check_float_array(np.asarray(params[name]), f"params[{name!r}]")
            np.copyto(self.params[name], value, casting="same_kind")

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of `params`."""
        return {name: p.copy() for name, p in self.params.items()}

    # ------------------------------------------------------------------------- inputs

    def _check_inputs(self, x, t, y):
        cfg = self.config
        x = check_float_array(x, "x", min_ndim=4)
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or x.shape[1:] != want:
            divisor = 2 ** (cfg.levels - 1)
            note = ""
            if x.ndim == 4 and (x.shape[2] % divisor or x.shape[3] % divisor):
                note = (f"; spatial size {x.shape[2:]} is not divisible by 2^(levels-1) = {divisor} "
                        f"as the {cfg.levels} levels need")
            raise ValueError(f"x must have shape (N, in_channels={cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {x.shape}{note}")
        n = x.shape[0]
        t_arr = np.asarray(t)
        if t_arr.dtype == bool or not np.issubdtype(t_arr.dtype, np.integer):
            got = t_arr.dtype if t_arr.dtype != object else type(t).__name__
            raise TypeError(f"t must be an int or an integer array, got {got}")
        if t_arr.ndim == 0:
            t_arr = np.full(n, int(t_arr), dtype=np.int64)
        if t_arr.shape != (n,):
            raise ValueError(f"t must be an int or have shape ({n},), got {t_arr.shape}")
        if n and t_arr.min() < 0:
            raise ValueError(f"t must be >= 0, got min {t_arr.min()}")
        if cfg.num_classes is None:
            if y is not None:
                raise ValueError("y must be None for an unconditional UNet (config.num_classes is None)")
        else:
            if y is None:
                y = np.full(n, cfg.num_classes, dtype=np.int64)          # the null class
            y = np.asarray(y)
            if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
                raise TypeError(f"y must be an integer array or None, got dtype {y.dtype}")
            if y.ndim == 0:
                y = np.full(n, int(y), dtype=np.int64)
            if y.shape != (n,):
                raise ValueError(f"y must have shape ({n},), got {y.shape}")
            y = check_class_labels(y, cfg.num_classes, "y", allow_null=True)
        return x.astype(self.dtype, copy=False), t_arr.astype(np.int64), y

    def _resnet_prefixes(self) -> list[tuple[str, int]]:
        """(prefix, C_out) of every ResBlock in forward order."""
        cfg = self.config
        out = []
        for i, c in enumerate(cfg.block_channels):
            out += [(f"down_blocks.{i}.resnets.{j}", c) for j in range(cfg.num_res_blocks)]
        out += [("mid_block.resnets.0", cfg.block_channels[-1]), ("mid_block.resnets.1", cfg.block_channels[-1])]
        for i, c in enumerate(reversed(cfg.block_channels)):
            out += [(f"up_blocks.{i}.resnets.{j}", c) for j in range(cfg.num_res_blocks + 1)]
        return out

    def dropout_mask_shapes(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(prefix, (C_out, H, W)) of every ResBlock's dropout mask, in forward order."""
        cfg = self.config
        res = cfg.resolution
        shapes = []
        for prefix, c in self._resnet_prefixes():
            kind, index = prefix.split(".")[0], prefix.split(".")[1]
            level = (int(index) if kind == "down_blocks" else cfg.levels - 1 if kind == "mid_block"
                     else cfg.levels - 1 - int(index))
            shapes.append((prefix, (c, res(level), res(level))))
        return shapes

    def _check_masks(self, dropout_masks, train: bool):
        if dropout_masks is None:
            return {}
        if not train:
            raise ValueError("dropout_masks were given but train=False (dropout acts only when training)")
        if self.config.dropout == 0:
            raise ValueError("dropout_masks were given but config.dropout is 0")
        if not isinstance(dropout_masks, Mapping):
            raise TypeError(f"dropout_masks must be a dict prefix -> mask, got {type(dropout_masks).__name__}")
        known = {prefix for prefix, _ in self._resnet_prefixes()}
        unknown = sorted(set(dropout_masks) - known)
        if unknown:
            raise ValueError(f"dropout_masks has keys that are not ResBlock prefixes: {unknown}")
        return dropout_masks

    # ------------------------------------------------------------------------- forward

    def forward(self, x: np.ndarray, t, y=None, *, dropout_masks: Mapping[str, np.ndarray] | None = None,
                rng: np.random.Generator | None = None, train: bool = False) -> np.ndarray:
        """x (N, in_channels, H, W) float32/64, t (N,) ints >= 0 (or one int), y (N,) ints in
        [0, num_classes] or None (the null class) -> (N, out_channels, H, W) in the model's dtype.

        Caches what `backward` needs. Dropout only with train=True (masks: module docstring).
        """
        return self._run(x, t, y, dropout_masks, rng, train, keep_cache=True)

    def __call__(self, x: np.ndarray, t, y=None) -> np.ndarray:
        """Inference (no dropout, no cache): what the reference samplers call."""
        return self._run(x, t, y, None, None, False, keep_cache=False)

    def _embed(self, t, y):
        """SiLU(temb) (N, 4ch), shared by every ResBlock, and the caches of the embeddings."""
        cfg, p = self.config, self.params
        t_emb = timestep_embedding(t, cfg.ch, cfg.flip_sin_to_cos, cfg.freq_shift, dtype=self.dtype)
        temb, mlp_cache = time_embedding_mlp(t_emb, _local(p, "time_embedding"))
        class_cache = None
        if cfg.num_classes is not None:
            class_rows, class_cache = embedding(y, p["class_embedding.weight"])
            temb = temb + class_rows                                    # row num_classes = null class
        temb_silu, temb_act_cache = silu(temb)
        return temb_silu, (mlp_cache, class_cache, temb_act_cache)

    def _run(self, x, t, y, dropout_masks, rng, train, keep_cache):
        cfg, p = self.config, self.params
        x, t, y = self._check_inputs(x, t, y)
        dropout_masks = self._check_masks(dropout_masks, train)
        use_dropout = train and cfg.dropout > 0
        rng = self.rng if rng is None else rng
        masks_used: dict[str, np.ndarray] = {}
        tape = [] if keep_cache else None

        def record(kind, prefix, cache):
            if tape is not None:
                tape.append((kind, prefix, cache))

        temb_silu, embed_caches = self._embed(t, y)

        def resnet(h, prefix, c_out):
            mask = None
            if use_dropout:
                shape = (h.shape[0], c_out, h.shape[2], h.shape[3])
                if prefix in dropout_masks:
                    mask = np.asarray(dropout_masks[prefix])
                    if mask.shape != shape:
                        raise ValueError(f"dropout_masks[{prefix!r}] must have shape {shape}, got {mask.shape}")
                else:
                    mask = rng.random(shape) >= cfg.dropout
                masks_used[prefix] = mask
            h, cache = resnet_block(h, temb_silu, _local(p, prefix), cfg.groups, cfg.eps, mask, cfg.dropout)
            record("resnet", prefix, cache)
            return h

        def attention(h, prefix):
            h, cache = attention_block(h, _local(p, prefix), cfg.groups, cfg.eps, cfg.heads(h.shape[1]))
            record("attention", prefix, cache)
            return h

        h, cache = conv2d(x, p["conv_in.weight"], p["conv_in.bias"], 1, 1)
        record("conv", "conv_in", cache)
        skips = [h]
        record("push_skip", None, None)
        for i, c in enumerate(cfg.block_channels):
            for j in range(cfg.num_res_blocks):
                h = resnet(h, f"down_blocks.{i}.resnets.{j}", c)
                if cfg.level_has_attention(i):
                    h = attention(h, f"down_blocks.{i}.attentions.{j}")
                skips.append(h)
                record("push_skip", None, None)
            if i < cfg.levels - 1:
                prefix = f"down_blocks.{i}.downsamplers.0.conv"
                h, cache = downsample(h, p[prefix + ".weight"], p[prefix + ".bias"], cfg.downsample_padding)
                record("downsample", prefix, cache)
                skips.append(h)
                record("push_skip", None, None)

        h = resnet(h, "mid_block.resnets.0", cfg.block_channels[-1])
        if cfg.mid_attention:
            h = attention(h, "mid_block.attentions.0")
        h = resnet(h, "mid_block.resnets.1", cfg.block_channels[-1])

        for i, c in enumerate(reversed(cfg.block_channels)):
            level = cfg.levels - 1 - i
            for j in range(cfg.num_res_blocks + 1):
                record("pop_concat", None, h.shape[1])
                h = np.concatenate([h, skips.pop()], axis=1)            # [h, skip] on channels
                h = resnet(h, f"up_blocks.{i}.resnets.{j}", c)
                if cfg.level_has_attention(level):
                    h = attention(h, f"up_blocks.{i}.attentions.{j}")
            if i < cfg.levels - 1:
                prefix = f"up_blocks.{i}.upsamplers.0.conv"
                h, cache = upsample(h, p[prefix + ".weight"], p[prefix + ".bias"])
                record("upsample", prefix, cache)

        h, cache = group_norm_silu(h, p["conv_norm_out.weight"], p["conv_norm_out.bias"], cfg.groups, cfg.eps)
        record("group_norm_silu", "conv_norm_out", cache)
        out, cache = conv2d(h, p["conv_out.weight"], p["conv_out.bias"], 1, 1)
        record("conv", "conv_out", cache)

        self.last_dropout_masks = masks_used
        if keep_cache:
            self._tape = (tape, embed_caches, out.shape)
        return out

    # ------------------------------------------------------------------------- backward

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (N, out_channels, H, W) = dL/d output of the last `forward` -> dL/dx (N, in_channels, H, W).

        Fills `self.grads` for every parameter (overwritten, not accumulated; zeros for unused
        class-embedding rows). The cache is released afterwards.
        """
        if self._tape is None:
            raise RuntimeError("backward needs a preceding forward (the cache is empty)")
        tape, embed_caches, out_shape = self._tape
        dout = check_float_array(dout, "dout", min_ndim=4)
        if dout.shape != out_shape:
            raise ValueError(f"dout must have the shape of the last output {out_shape}, got {dout.shape}")
        g = {name: np.zeros_like(value) for name, value in self.params.items()}
        dh = dout.astype(self.dtype, copy=False)
        dtemb_silu = np.zeros(embed_caches[-1][0].shape, dtype=self.dtype)   # SiLU cache (temb, s)
        dskips: list[np.ndarray] = []

        def put(prefix, local_grads):
            for name, value in local_grads.items():
                g[f"{prefix}.{name}"] = value

        for kind, prefix, cache in reversed(tape):
            if kind == "conv":
                dh, g[prefix + ".weight"], g[prefix + ".bias"] = conv2d_backward(dh, cache)
            elif kind == "group_norm_silu":
                dh, g[prefix + ".weight"], g[prefix + ".bias"] = group_norm_silu_backward(dh, cache)
            elif kind == "resnet":
                dh, dtemb_part, local_grads = resnet_block_backward(dh, cache)
                dtemb_silu += dtemb_part
                put(prefix, local_grads)
            elif kind == "attention":
                dh, local_grads = attention_block_backward(dh, cache)
                put(prefix, local_grads)
            elif kind == "upsample":
                dh, g[prefix + ".weight"], g[prefix + ".bias"] = upsample_backward(dh, cache)
            elif kind == "downsample":
                dh, g[prefix + ".weight"], g[prefix + ".bias"] = downsample_backward(dh, cache)
            elif kind == "pop_concat":                      # h = concat[h, skip]: split the gradient
                c_h = cache
                dskips.append(dh[:, c_h:])
                dh = dh[:, :c_h]
            elif kind == "push_skip":                       # h went both on and into the skip stack
                dh = dh + dskips.pop()
            else:  # pragma: no cover - the tape only holds the kinds above
                raise AssertionError(kind)
        assert not dskips, "every skip consumed in forward must be returned in backward"

        mlp_cache, class_cache, temb_act_cache = embed_caches
        dtemb = silu_backward(dtemb_silu, temb_act_cache)
        if class_cache is not None:
            g["class_embedding.weight"] = embedding_backward(dtemb, class_cache)
        _, local_grads = time_embedding_mlp_backward(dtemb, mlp_cache)  # t is an integer input
        put("time_embedding", local_grads)

        self.grads.update(g)                                # same dict object, fresh arrays
        self._tape = None
        return np.ascontiguousarray(dh)

    def __repr__(self) -> str:
        return f"UNet({self.config}, parameters={self.num_parameters:,}, dtype={self.dtype.name})"
