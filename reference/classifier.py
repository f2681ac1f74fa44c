"""The noise-aware classifier p_phi(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

The denoiser's encoder plus a head, built from the reference UNet's blocks with their hand-written
backward passes. A `UNetConfig` describes it: its down path and middle block are the UNet's
(time embedding, ResBlocks with GroupNorm+SiLU, attention where `attn_resolutions` puts it,
stride-2 downsampling), and `config.num_classes` is the head's class count (the classifier has no
class embedding). Parameter names are the denoiser's for the shared part, so a trained
denoiser's encoder initialises it by name (`encoder_params`):

    conv_in.*, time_embedding.*, down_blocks.*, mid_block.*     as reference.parameter_shapes
    head.norm.weight / .bias                                    (C_mid,) GroupNorm + SiLU
    head.linear.weight / .bias                                  (num_classes, C_mid) / (num_classes,)

Forward (N = batch):

    temb_silu = SiLU(linear_2(SiLU(linear_1(sinusoidal(t)))))
    h = conv_in(x); down level i: ResBlock (+ Attention) x num_res_blocks, Downsample (not last)
    mid: ResBlock, Attention, ResBlock
    logits = head.linear(mean_HW(GNSiLU_head(h)))                                 (N, num_classes)

The classifier runs without dropout (its forward is the eval-mode forward of `ddpm.Classifier`).
`backward(dlogits)` fills `.grads` for every parameter and returns dL/dx, the input gradient that
guidance needs: `log_prob_gradient(x, t, y)` = grad_x log p_phi(y | x_t, t) per sample.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np

from ._validate import check_class_labels, check_float_array, check_parameter_names
from .attention import attention_block, attention_block_backward
from .conv import conv2d, conv2d_backward, downsample, downsample_backward
from .layers import linear, linear_backward, silu, silu_backward, timestep_embedding
from .noise import normal
from .norm import group_norm_silu, group_norm_silu_backward
from .optim import clip_grad_norm, global_norm
from .process import q_sample
from .train import training_draws
from .unet import _local, resnet_block, resnet_block_backward, time_embedding_mlp, time_embedding_mlp_backward
from .unet_config import UNetConfig, parameter_shapes

__all__ = ["Classifier", "ENCODER_PREFIXES", "classifier_parameter_shapes", "cross_entropy",
           "cross_entropy_backward", "log_softmax", "classifier_train_step", "holdout_split",
           "accuracy_timesteps", "ACCURACY_STREAM_BASE"]

# the denoiser's parameters the classifier shares (its down path and middle block)
ENCODER_PREFIXES = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")


def _check_config(config) -> UNetConfig:
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
    if config.num_classes is None:
        raise ValueError("config.num_classes must be the classifier's class count, got None")
    return config


def classifier_parameter_shapes(config: UNetConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """name -> shape of every classifier parameter: the UNet's encoder names, then the head."""
    config = _check_config(config)
    encoder = UNetConfig.from_dict({**config.to_dict(), "num_classes": None})  # no class embedding
    shapes = OrderedDict((name, shape) for name, shape in parameter_shapes(encoder).items()
                         if name.startswith(ENCODER_PREFIXES))
    c_mid = config.block_channels[-1]
    shapes["head.norm.weight"] = (c_mid,)
    shapes["head.norm.bias"] = (c_mid,)
    shapes["head.linear.weight"] = (config.num_classes, c_mid)
    shapes["head.linear.bias"] = (config.num_classes,)
    return shapes


# ----------------------------------------------------------------------------- the loss

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """logits (N, K) -> log softmax (N, K), shifted by the row max for stability."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, y) -> tuple[float, tuple]:
    """Mean cross-entropy -1/N sum_n log softmax(logits_n)[y_n]; logits (N, K), y (N,) in [0, K)."""
    logits = check_float_array(logits, "logits", min_ndim=2)
    y = check_class_labels(y, logits.shape[1], "y")
    if y.shape != (logits.shape[0],):
        raise ValueError(f"y must have shape ({logits.shape[0]},), got {y.shape}")
    log_p = log_softmax(logits)
    loss = -float(log_p[np.arange(len(y)), y].mean())
    return loss, (log_p, y)


def cross_entropy_backward(dloss: float, cache) -> np.ndarray:
    """dloss (scalar) -> dlogits (N, K) = dloss (softmax - onehot(y)) / N."""
    log_p, y = cache
    dlogits = np.exp(log_p)
    dlogits[np.arange(len(y)), y] -= 1.0
    return dlogits * (dloss / len(y))


# ----------------------------------------------------------------------------- the classifier

class Classifier:
    """p_phi(y | x_t, t): `forward(x, t) -> logits (N, num_classes)`, float64 by default.

    Args:
        config: a UNetConfig (encoder layout; num_classes = the head's class count).
        params: a mapping name -> array to load (exact names of `classifier_parameter_shapes`),
            or None to initialise (the UNet's scheme: torch's nn defaults drawn from
            default_rng(seed) in name order, GroupNorm 1/0; with zero_init every ResBlock's
            conv2 and attention's to_out.0 start at zero, so each block starts as the identity).
        dtype: np.float64 (default) or np.float32.
    Follows the model protocol of `reference.train` (params, grads, forward, backward).
    """

    def __init__(self, config: UNetConfig, params: Mapping[str, np.ndarray] | None = None,
                 seed: int = 0, *, zero_init: bool = True, dtype=np.float64):
        self.config = _check_config(config)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.shapes = classifier_parameter_shapes(config)
        if params is None:
            self.params = self._initial_params(np.random.default_rng(seed), zero_init)
        else:
            self.params = {name: np.zeros(shape, self.dtype) for name, shape in self.shapes.items()}
            self.load(params)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._tape = None

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def _initial_params(self, rng: np.random.Generator, zero_init: bool) -> dict[str, np.ndarray]:
        params = {}
        for name, shape in self.shapes.items():
            if ".norm" in name or "group_norm" in name:
                value = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
            else:  # nn.Conv2d / nn.Linear defaults: U(+-1/sqrt(fan_in)) for weight and bias
                fan_in = int(np.prod(self.shapes[name.rsplit(".", 1)[0] + ".weight"][1:]))
                value = rng.uniform(-1.0 / np.sqrt(fan_in), 1.0 / np.sqrt(fan_in), shape)
            params[name] = value.astype(self.dtype)
        if zero_init:
            for name in params:
                if ".conv2." in name or ".to_out.0." in name:
                    params[name][...] = 0.0
        return params

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy `params` (every name, exact shapes, finite floats) into `self.params` in place."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping name -> array, got {type(params).__name__}")
        check_parameter_names(self.shapes, params, "params", "the classifier config")
        for name in self.shapes:
            np.copyto(self.params[name], check_float_array(np.asarray(params[name]), f"params[{name!r}]"),
                      casting="same_kind")

    def encoder_params(self, denoiser_params: Mapping[str, np.ndarray]) -> list[str]:
        """Copy the encoder part (conv_in, time_embedding, down_blocks, mid_block) of a denoiser's
        parameters (a UNet of the same layout) into this classifier; returns the names copied.
        The head keeps its values. Shapes must match (a ValueError names the first that does not)."""
        copied = []
        for name in self.shapes:
            if name.startswith(ENCODER_PREFIXES):
                if name not in denoiser_params:
                    raise ValueError(f"denoiser parameters lack {name!r}: not a UNet of this layout")
                value = np.asarray(denoiser_params[name])
                if value.shape != self.shapes[name]:
                    raise ValueError(f"denoiser parameter {name!r} has shape {value.shape}, the "
                                     f"classifier needs {self.shapes[name]}")
                np.copyto(self.params[name], value, casting="same_kind")
                copied.append(name)
        return copied

    # ------------------------------------------------------------------------- forward

    def _check_inputs(self, x, t):
        cfg = self.config
        x = check_float_array(x, "x", min_ndim=4)
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"x must have shape (N, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}) (the classifier's image shape), got {x.shape}")
        t_arr = np.asarray(t)
        if t_arr.dtype == bool or not np.issubdtype(t_arr.dtype, np.integer):
            raise TypeError(f"t must be an int or an integer array, got {t_arr.dtype}")
        if t_arr.ndim == 0:
            t_arr = np.full(x.shape[0], int(t_arr), dtype=np.int64)
        if t_arr.shape != (x.shape[0],):
            raise ValueError(f"t must be an int or have shape ({x.shape[0]},), got {t_arr.shape}")
        if t_arr.size and t_arr.min() < 0:
            raise ValueError(f"t must be >= 0, got min {t_arr.min()}")
        return x.astype(self.dtype, copy=False), t_arr.astype(np.int64)

    def forward(self, x: np.ndarray, t) -> np.ndarray:
        """x (N, C, H, W), t (N,) ints >= 0 (or one int) -> logits (N, num_classes); caches for backward."""
        return self._run(x, t, keep_cache=True)

    def __call__(self, x: np.ndarray, t) -> np.ndarray:
        """Inference: the logits, no cache kept."""
        return self._run(x, t, keep_cache=False)

    def _run(self, x, t, keep_cache: bool) -> np.ndarray:
        cfg, p = self.config, self.params
        x, t = self._check_inputs(x, t)
        tape = []
        t_emb = timestep_embedding(t, cfg.ch, cfg.flip_sin_to_cos, cfg.freq_shift, dtype=self.dtype)
        temb, mlp_cache = time_embedding_mlp(t_emb, _local(p, "time_embedding"))
        temb_silu, temb_act_cache = silu(temb)

        def resnet(h, prefix):
            h, cache = resnet_block(h, temb_silu, _local(p, prefix), cfg.groups, cfg.eps)
            tape.append(("resnet", prefix, cache))
            return h

        def attention(h, prefix):
            h, cache = attention_block(h, _local(p, prefix), cfg.groups, cfg.eps, cfg.heads(h.shape[1]))
            tape.append(("attention", prefix, cache))
            return h

        h, cache = conv2d(x, p["conv_in.weight"], p["conv_in.bias"], 1, 1)
        tape.append(("conv", "conv_in", cache))
        for i in range(cfg.levels):
            for j in range(cfg.num_res_blocks):
                h = resnet(h, f"down_blocks.{i}.resnets.{j}")
                if cfg.level_has_attention(i):
                    h = attention(h, f"down_blocks.{i}.attentions.{j}")
            if i < cfg.levels - 1:
                prefix = f"down_blocks.{i}.downsamplers.0.conv"
                h, cache = downsample(h, p[prefix + ".weight"], p[prefix + ".bias"], cfg.downsample_padding)
                tape.append(("downsample", prefix, cache))
        h = resnet(h, "mid_block.resnets.0")
        if cfg.mid_attention:
            h = attention(h, "mid_block.attentions.0")
        h = resnet(h, "mid_block.resnets.1")

        h, cache = group_norm_silu(h, p["head.norm.weight"], p["head.norm.bias"], cfg.groups, cfg.eps)
        tape.append(("group_norm_silu", "head.norm", cache))
        pooled = h.mean(axis=(2, 3))                                   # global average pool (N, C)
        logits, linear_cache = linear(pooled, p["head.linear.weight"], p["head.linear.bias"])
        if keep_cache:
            self._tape = (tape, (mlp_cache, temb_act_cache), h.shape, linear_cache, logits.shape)
        return logits

    # ------------------------------------------------------------------------- backward

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """dlogits (N, num_classes) = dL/d logits of the last `forward` -> dL/dx (N, C, H, W).

        Fills `self.grads` for every parameter (overwritten). The cache is released afterwards.
        """
        if self._tape is None:
            raise RuntimeError("backward needs a preceding forward (the cache is empty)")
        tape, (mlp_cache, temb_act_cache), pooled_from, linear_cache, logits_shape = self._tape
        dlogits = check_float_array(dlogits, "dlogits", min_ndim=2)
        if dlogits.shape != logits_shape:
            raise ValueError(f"dlogits must have the shape of the last logits {logits_shape}, got {dlogits.shape}")
        g = {}
        dpooled, g["head.linear.weight"], g["head.linear.bias"] = linear_backward(
            dlogits.astype(self.dtype, copy=False), linear_cache)
        n, c, height, width = pooled_from
        dh = np.broadcast_to(dpooled[:, :, None, None] / (height * width), pooled_from).copy()
        dtemb_silu = np.zeros(temb_act_cache[0].shape, dtype=self.dtype)
        for kind, prefix, cache in reversed(tape):
            if kind == "resnet":
                dh, dtemb_part, local = resnet_block_backward(dh, cache)
                dtemb_silu += dtemb_part
                g.update({f"{prefix}.{name}": value for name, value in local.items()})
            elif kind == "attention":
                dh, local = attention_block_backward(dh, cache)
                g.update({f"{prefix}.{name}": value for name, value in local.items()})
            elif kind == "conv":
                dh, g[prefix + ".weight"], g[prefix + ".bias"] = conv2d_backward(dh, cache)
            elif kind == "downsample":
                dh, g[prefix + ".weight"], g[prefix + ".bias"] = downsample_backward(dh, cache)
            elif kind == "group_norm_silu":
                dh, g[prefix + ".weight"], g[prefix + ".bias"] = group_norm_silu_backward(dh, cache)
            else:  # pragma: no cover - the tape holds only the kinds above
                raise AssertionError(kind)
        dtemb = silu_backward(dtemb_silu, temb_act_cache)
        _, local = time_embedding_mlp_backward(dtemb, mlp_cache)  # t is an integer input
        g.update({f"time_embedding.{name}": value for name, value in local.items()})
        assert set(g) == set(self.params), "every parameter gets a gradient"
        self.grads.update(g)
        self._tape = None
        return np.ascontiguousarray(dh)

    def log_prob_gradient(self, x: np.ndarray, t, y) -> tuple[np.ndarray, np.ndarray]:
        """(log p_phi(y | x_t, t) (N,), grad_x log p_phi(y | x_t, t) (N, C, H, W)).

        The guidance gradient of Dhariwal & Nichol 2021, Algorithms 1 and 2: each sample's own
        log-probability differentiated by the hand backward (d log softmax_y / d logits =
        onehot(y) - softmax). y: (N,) class ids in [0, num_classes). Parameter grads are
        overwritten as a side effect.
        """
        logits = self.forward(x, t)
        y = check_class_labels(y, self.num_classes, "y")
        y = np.broadcast_to(y, (logits.shape[0],)) if y.ndim == 0 else y
        if y.shape != (logits.shape[0],):
            raise ValueError(f"y must have shape ({logits.shape[0]},), got {y.shape}")
        log_p = log_softmax(logits)
        rows = np.arange(len(y))
        dlogits = -np.exp(log_p)
        dlogits[rows, y] += 1.0
        return log_p[rows, y], self.backward(dlogits)

    def __repr__(self) -> str:
        size = int(sum(v.size for v in self.params.values()))
        return f"Classifier({self.config}, parameters={size:,}, dtype={self.dtype.name})"


# ----------------------------------------------------------------------------- training

def classifier_train_step(classifier: Classifier, optimizer, x0: np.ndarray, y, schedule, seed: int,
                          step: int, *, samples=None, grad_clip: float | None = None) -> dict:
    """One optimisation step of the noise-aware classifier (Dhariwal & Nichol 2021, Sec. 4).

    t ~ U{0..T-1} and eps ~ N(0, I) are the denoiser's training draws for (seed, samples, step)
    (`reference.training_draws`, the noise stream), x_t = q_sample(x0, t, eps), loss = the mean
    cross-entropy of classifier(x_t, t) against y; then backward, optional gradient-norm clipping
    and the optimiser step (a reference.Adam over classifier.params). Returns
    {"loss", "grad_norm" (before clipping), "t", "accuracy"}.
    """
    x0 = check_float_array(x0, "x0", min_ndim=4)
    samples = np.arange(x0.shape[0]) if samples is None else np.asarray(samples)
    draws = training_draws(seed, samples, step, schedule.T)
    noise = normal(seed, samples, draws.stream, x0.shape[1:]).astype(x0.dtype)
    x_t = q_sample(x0, draws.t, noise, schedule)
    logits = classifier.forward(x_t, draws.t)
    loss, cache = cross_entropy(logits, y)
    classifier.backward(cross_entropy_backward(1.0, cache))
    grads = classifier.grads
    grad_norm = clip_grad_norm(grads, grad_clip) if grad_clip is not None else global_norm(grads)
    optimizer.step(grads)
    accuracy = float((logits.argmax(axis=1) == np.asarray(y)).mean())
    return {"loss": loss, "grad_norm": grad_norm, "t": draws.t, "accuracy": accuracy}


# ----------------------------------------------------------------------------- evaluation plan

def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of n items: a default_rng([seed, 2]) permutation, the last
    round(fraction n) held out (at least one of each when 0 < fraction < 1), both sorted."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2 (items to split), got {n!r}")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    held = min(max(int(round(fraction * n)), 1), n - 1)
    order = np.random.default_rng([int(seed), 2]).permutation(n)
    return np.sort(order[: n - held]), np.sort(order[n - held:])


def accuracy_timesteps(T: int, count: int = 20) -> np.ndarray:
    """(count,) int64 timesteps spread evenly over [0, T-1] (fewer when T < count): where the
    classifier's held-out accuracy is measured."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    return np.unique(np.round(np.linspace(0, T - 1, min(int(count), int(T)))).astype(np.int64))


# accuracy-vs-t evaluation: the noise of grid point k is stream ACCURACY_STREAM_BASE + k (apart
# from x_T (0), sampler steps (k + 1), bits/dim (1 << 30) and training (1 << 31) streams)
ACCURACY_STREAM_BASE = (1 << 30) + (1 << 29)
