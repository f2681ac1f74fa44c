"""Adam(W), gradient-norm clipping and an EMA of the weights, on flat parameter dicts.

Generic over models: anything with `params` (name -> float array, updated in place) and
`grads` (the same keys) works, the MLP and the reference UNet alike. The arithmetic follows
torch.optim.Adam / AdamW (foreach=False) so the torch library can be held to it.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

__all__ = ["Adam", "EMA", "clip_grad_norm", "global_norm"]


def _check_param_dict(params, name: str) -> dict:
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"{name} must be a non-empty dict of name -> NumPy array, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(value, np.ndarray) or value.dtype not in (np.float32, np.float64):
            got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise TypeError(f"{name}[{key!r}] must be a float32/float64 NumPy array, got {got}")
    return params


def _check_grads(grads, params: Mapping, name: str = "grads") -> None:
    if not isinstance(grads, Mapping):
        raise TypeError(f"{name} must be a dict of name -> array, got {type(grads).__name__}")
    if set(grads) != set(params):
        missing, unexpected = set(params) - set(grads), set(grads) - set(params)
        raise ValueError(f"{name} keys differ from params: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    for key, p in params.items():
        g = np.asarray(grads[key])
        if g.shape != p.shape:
            raise ValueError(f"{name}[{key!r}] must have shape {p.shape}, got {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError(f"{name}[{key!r}] contains NaN or inf")


def _check_rate(value, name: str, lo: float, hi: float, *, hi_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not np.isfinite(value) or not ok:
        raise ValueError(f"{name} must lie in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")
    return value


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    """sqrt(sum over all arrays of sum g^2): the L2 norm of the concatenated gradients."""
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Scale `grads` in place so their global norm is at most max_norm; returns the norm before.

    As torch.nn.utils.clip_grad_norm_: coefficient min(1, max_norm / (norm + 1e-6)).
    """
    max_norm = _check_rate(max_norm, "max_norm", 0.0, np.inf)
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norm = global_norm(grads)
    coefficient = min(1.0, max_norm / (norm + 1e-6))
    if coefficient < 1.0:
        for g in grads.values():
            g *= coefficient
    return norm


class Adam:
    """Adam (Kingma & Ba 2015, Alg. 1, with bias correction); AdamW decay when weight_decay > 0.

        m_t = b1 m_{t-1} + (1 - b1) g_t          v_t = b2 v_{t-1} + (1 - b2) g_t^2
        p  <- p (1 - lr wd)                      (decoupled, Loshchilov & Hutter 2019)
        p  <- p - lr / (1 - b1^t) * m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps)

    params: the model's flat dict; its arrays are updated in place. lr: a number, or a callable
    step -> lr of the 1-based step count (e.g. warmup). Moments are kept in the params' dtype.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float | Callable[[int], float] = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params = _check_param_dict(params, "params")
        if not callable(lr):
            _check_rate(lr, "lr", 0.0, np.inf)
        self.lr = lr
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_check_rate(b1, "betas[0]", 0.0, 1.0), _check_rate(b2, "betas[1]", 0.0, 1.0))
        self.eps = _check_rate(eps, "eps", 0.0, np.inf)
        self.weight_decay = _check_rate(weight_decay, "weight_decay", 0.0, np.inf)
        self.step_count = 0
        self.exp_avg = {k: np.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: np.zeros_like(p) for k, p in params.items()}

    def current_lr(self, step: int | None = None) -> float:
        """The learning rate used at 1-based `step` (default: the next step)."""
        step = self.step_count + 1 if step is None else step
        lr = self.lr(step) if callable(self.lr) else self.lr
        return _check_rate(lr, "lr(step)", 0.0, np.inf)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One update of every parameter from `grads` (same keys and shapes, finite)."""
        _check_grads(grads, self.params)
        lr = self.current_lr()
        self.step_count += 1
        b1, b2 = self.betas
        bias_correction1 = 1.0 - b1 ** self.step_count
        bias_correction2_sqrt = np.sqrt(1.0 - b2 ** self.step_count)
        step_size = lr / bias_correction1
        for name, p in self.params.items():
            g = np.asarray(grads[name], dtype=p.dtype)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            m += (1.0 - b1) * (g - m)        # torch's lerp: m + (1 - b1) (g - m)
            v *= b2
            v += (1.0 - b2) * g * g
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            p -= step_size * m / denom

    def state_dict(self) -> dict:
        """Copies of the step count and both moment dicts (to resume exactly)."""
        return {"step_count": self.step_count,
                "exp_avg": {k: v.copy() for k, v in self.exp_avg.items()},
                "exp_avg_sq": {k: v.copy() for k, v in self.exp_avg_sq.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("exp_avg", "exp_avg_sq"):
            _check_grads(state[key], self.params, f"state[{key!r}]")
            for name in self.params:
                np.copyto(getattr(self, key)[name], state[key][name], casting="same_kind")
        self.step_count = int(state["step_count"])


class EMA:
    """Exponential moving average of the weights (as DDPM's decay 0.9999 EMA used for sampling).

        shadow <- d_n shadow + (1 - d_n) param,  d_n = decay, or with warmup
        d_n = min(decay, (1 + n) / (10 + n)) for the n-th update (0-based; TF's
        ExponentialMovingAverage num_updates rule), so early averages do not cling to the init.
    """

    def __init__(self, params: dict[str, np.ndarray], decay: float = 0.9999, warmup: bool = False):
        _check_param_dict(params, "params")
        self.decay = _check_rate(decay, "decay", 0.0, 1.0, hi_open=False)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = {name: p.copy() for name, p in params.items()}

    def decay_at(self, n: int) -> float:
        """The decay of update n (0-based)."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self, params: Mapping[str, np.ndarray]) -> None:
        """shadow <- d shadow + (1 - d) params (params: the same keys and shapes as at init)."""
        _check_grads(params, self.shadow, "params")
        d = self.decay_at(self.num_updates)
        for name, s in self.shadow.items():
            s -= (1.0 - d) * (s - params[name])
        self.num_updates += 1

    def copy_to(self, params: Mapping[str, np.ndarray]) -> None:
        """Write the averaged weights into `params` in place (e.g. a copy of the model for sampling)."""
        _check_grads(params, self.shadow, "params")
        for name, s in self.shadow.items():
            np.copyto(params[name], s, casting="same_kind")

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "shadow": {k: v.copy() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        _check_grads(state["shadow"], self.shadow, "state['shadow']")
        for name in self.shadow:
            np.copyto(self.shadow[name], state["shadow"][name], casting="same_kind")
        self.num_updates = int(state["num_updates"])
