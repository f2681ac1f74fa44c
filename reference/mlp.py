"""The toy eps-model: an MLP on low-dimensional data with hand-written forward and backward.

The seed's `DDPM` MLP (x_t and t in, the noise estimate out), in the model protocol of
`reference.train` (`params`, `grads`, `forward`, `backward`):

    h_0 = [x_t, temb(t), cemb(y)]                   (N, D + E_t [+ E_c])
    h_l = act(h_{l-1} W_l^T + b_l),   l = 0..L-1    (N, H)
    out = h_{L-1} W_out^T + b_out                   (N, D)

temb is the parameter-free sinusoidal embedding of the integer timestep (Vaswani et al. 2017, as
in the DDPM UNet; `layers.timestep_embedding`); cemb is a learned table of num_classes + 1 rows
whose last row, id `num_classes`, is the null class of classifier-free guidance (Ho & Salimans
2022). act is SiLU or ELU. float64 unless the model is built with dtype=float32.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_class_labels, check_float_array, check_timesteps
from .layers import (
    elu,
    elu_backward,
    embedding,
    embedding_backward,
    linear,
    linear_backward,
    silu,
    silu_backward,
    timestep_embedding,
)

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS = {"silu": (silu, silu_backward), "elu": (elu, elu_backward)}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class MLP:
    """An eps-model for (N, data_dim) data: `forward(x_t, t, y=None) -> (N, data_dim)`.

    Args:
        data_dim: D, the dimension of a data point.
        hidden_dim: H, the width of every hidden layer.
        num_layers: L >= 1 hidden layers (linear + activation), then a linear output layer.
        time_embed_dim: E_t, the width of the sinusoidal timestep embedding (>= 4, even).
        activation: "silu" or "elu".
        num_classes: None for an unconditional model; else labels 0..num_classes-1 plus the null
            class id `num_classes` (also what y=None means for a conditional model).
        class_embed_dim: E_c, the width of a class embedding row.
        num_timesteps: T; t must lie in [0, T).
        seed: initialisation seed (torch's nn.Linear default init, N(0, 1) embedding rows).
        dtype: np.float64 (default) or np.float32, the dtype of the parameters and the math.

    Parameters (`params`, a flat dict name -> array): "layers.{l}.weight" (H, in), "layers.{l}.bias"
    (H,), "out.weight" (D, H), "out.bias" (D,), and "class_embed.weight" (num_classes + 1, E_c)
    for a conditional model. `grads` has the same keys, overwritten by every `backward`.
    """

    def __init__(self, data_dim: int = 2, hidden_dim: int = 128, num_layers: int = 3,
                 time_embed_dim: int = 32, activation: str = "silu", num_classes: int | None = None,
                 class_embed_dim: int = 16, num_timesteps: int = 1000, seed: int = 0,
                 dtype=np.float64):
        self.data_dim = _positive_int(data_dim, "data_dim")
        self.hidden_dim = _positive_int(hidden_dim, "hidden_dim")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.time_embed_dim = _positive_int(time_embed_dim, "time_embed_dim")
        if self.time_embed_dim < 4 or self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even and >= 4, got {time_embed_dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.num_classes = None if num_classes is None else _positive_int(num_classes, "num_classes")
        self.class_embed_dim = _positive_int(class_embed_dim, "class_embed_dim")
        self.num_timesteps = _positive_int(num_timesteps, "num_timesteps")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.dtype = np.dtype(dtype)

        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        if self.num_classes is not None:
            self.params["class_embed.weight"] = rng.standard_normal(
                (self.num_classes + 1, self.class_embed_dim)).astype(self.dtype)
        fan_in = self.input_dim
        for layer in range(self.num_layers):
            self._init_linear(rng, f"layers.{layer}", self.hidden_dim, fan_in)
            fan_in = self.hidden_dim
        self._init_linear(rng, "out", self.data_dim, fan_in)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._cache = None

    def _init_linear(self, rng, prefix: str, fan_out: int, fan_in: int) -> None:
        # torch.nn.Linear's default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / np.sqrt(fan_in)
        self.params[f"{prefix}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(self.dtype)
        self.params[f"{prefix}.bias"] = rng.uniform(-bound, bound, (fan_out,)).astype(self.dtype)

    @property
    def input_dim(self) -> int:
        """Width of h_0 = [x_t, temb(t), cemb(y)]."""
        extra = self.class_embed_dim if self.num_classes is not None else 0
        return self.data_dim + self.time_embed_dim + extra

    @property
    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    # ------------------------------------------------------------------------- inputs

    def _check_inputs(self, x_t, t, y):
        x_t = check_float_array(x_t, "x_t", min_ndim=2)
        if x_t.ndim != 2 or x_t.shape[1] != self.data_dim:
            raise ValueError(f"x_t must have shape (N, {self.data_dim}), got {x_t.shape}")
        n = x_t.shape[0]
        t = check_timesteps(t, n, self.num_timesteps)
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y must be None for an unconditional model (num_classes=None)")
            return x_t, t, None
        if y is None:
            return x_t, t, np.full(n, self.num_classes, dtype=np.int64)
        y_arr = np.asarray(y)
        if y_arr.dtype == bool or not np.issubdtype(y_arr.dtype, np.integer):
            raise TypeError(f"y must be an integer array or None, got dtype {y_arr.dtype}")
        if y_arr.shape != (n,):
            raise ValueError(f"y must have shape ({n},), got {y_arr.shape}")
        return x_t, t, check_class_labels(y_arr, self.num_classes, "y", allow_null=True)

    # ------------------------------------------------------------------------- forward / backward

    def _run(self, x_t, t, y, keep_cache: bool) -> np.ndarray:
        x_t, t, y = self._check_inputs(x_t, t, y)
        act, _ = ACTIVATIONS[self.activation]
        p = self.params
        pieces = [x_t.astype(self.dtype, copy=False),
                  timestep_embedding(t, self.time_embed_dim, dtype=self.dtype)]
        embed_cache = None
        if self.num_classes is not None:
            class_rows, embed_cache = embedding(y, p["class_embed.weight"])
            pieces.append(class_rows)
        h = np.concatenate(pieces, axis=1)                          # h_0 (N, input_dim)
        layer_caches = []
        for layer in range(self.num_layers):
            h, linear_cache = linear(h, p[f"layers.{layer}.weight"], p[f"layers.{layer}.bias"])
            h, act_cache = act(h)                                   # h_l (N, H)
            layer_caches.append((linear_cache, act_cache))
        out, out_cache = linear(h, p["out.weight"], p["out.bias"])  # (N, D)
        if keep_cache:
            self._cache = (embed_cache, layer_caches, out_cache, out.shape)
        return out

    def forward(self, x_t: np.ndarray, t, y=None, *, train: bool = False) -> np.ndarray:
        """x_t (N, D) float, t (N,) ints in [0, T) or an int, y (N,) ints in [0, num_classes] or
        None -> eps estimate (N, D) in the model's dtype; caches what `backward` needs.
        `train` is accepted for the training protocol (the MLP has no dropout)."""
        return self._run(x_t, t, y, keep_cache=True)

    def __call__(self, x_t: np.ndarray, t, y=None) -> np.ndarray:
        """Inference: the same as `forward` without keeping a cache (for the samplers)."""
        return self._run(x_t, t, y, keep_cache=False)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (N, D) = dL/d out of the last `forward` -> dL/dx_t (N, D); fills `self.grads`.

        Gradients are overwritten, not accumulated. The cache is released afterwards.
        """
        if self._cache is None:
            raise RuntimeError("backward needs a preceding forward (the cache is empty)")
        embed_cache, layer_caches, out_cache, out_shape = self._cache
        dout = check_float_array(dout, "dout", min_ndim=2)
        if dout.shape != out_shape:
            raise ValueError(f"dout must have the shape of the last output {out_shape}, got {dout.shape}")
        _, act_backward = ACTIVATIONS[self.activation]
        g = self.grads
        dh, g["out.weight"], g["out.bias"] = linear_backward(dout.astype(self.dtype, copy=False), out_cache)
        for layer in reversed(range(self.num_layers)):
            linear_cache, act_cache = layer_caches[layer]
            dpre = act_backward(dh, act_cache)                      # dL/d(pre-activation)
            dh, g[f"layers.{layer}.weight"], g[f"layers.{layer}.bias"] = linear_backward(dpre, linear_cache)
        # dh = dL/dh_0; split along [x_t, temb(t), cemb(y)]; temb has no parameters.
        if self.num_classes is not None:
            start = self.data_dim + self.time_embed_dim
            g["class_embed.weight"] = embedding_backward(dh[:, start:], embed_cache)
        self._cache = None
        return dh[:, : self.data_dim].copy()

    # ------------------------------------------------------------------------- parameters

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of `params`."""
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into `params` in place; keys and shapes must match exactly."""
        missing, unexpected = set(self.params) - set(state), set(state) - set(self.params)
        if missing or unexpected:
            raise ValueError(f"state keys differ: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for name, p in self.params.items():
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"state[{name!r}] must have shape {p.shape}, got {value.shape}")
            np.copyto(p, value, casting="same_kind")

    def copy(self) -> "MLP":
        """An independent model with the same configuration and a copy of the parameters."""
        clone = MLP.__new__(MLP)
        clone.__dict__.update(self.__dict__)
        clone.params = self.state_dict()
        clone.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        clone._cache = None
        return clone

    def __repr__(self) -> str:
        return (f"MLP(data_dim={self.data_dim}, hidden_dim={self.hidden_dim}, num_layers={self.num_layers}, "
                f"time_embed_dim={self.time_embed_dim}, activation={self.activation!r}, "
                f"num_classes={self.num_classes}, num_timesteps={self.num_timesteps}, "
                f"dtype={self.dtype.name}, parameters={self.num_parameters})")
