"""Noise schedules and the tables derived from them (DESIGN contract 1).

Timesteps are integers t = 0..T-1, t = 0 the least noisy (the paper's t = 1..T shifted by one,
as diffusers and improved-diffusion index them). Every table is float64 and computed here once;
torch code casts these tables, it never recomputes them.

    beta_t                         the variance added at step t
    alpha_t      = 1 - beta_t
    alpha_bar_t  = prod_{s<=t} alpha_s                         (DDPM Eq. 4)
    alpha_bar_prev_t = alpha_bar_{t-1}, and 1 "before t = 0"
    beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)   (DDPM Eq. 7)
    posterior mean = coef1_t x0 + coef2_t x_t                  (DDPM Eq. 7)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Schedule", "check_schedule", "make_schedule", "timestep_subset", "SCHEDULE_KINDS", "SPACINGS"]

SCHEDULE_KINDS = ("linear", "cosine", "sigmoid")
SPACINGS = ("leading", "trailing", "linspace")


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise TypeError(f"T must be an int, got {type(T).__name__}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return int(T)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A variance schedule and its derived float64 tables, all of shape (T,).

    Build one with `make_schedule(kind, T)` or `Schedule.from_betas(betas)`.
    """

    betas: np.ndarray
    kind: str = "custom"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        betas = np.asarray(self.betas)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.issubdtype(betas.dtype, np.floating):
            raise TypeError(f"betas must be floating point, got dtype {betas.dtype}")
        betas = betas.astype(np.float64)
        if not np.all(np.isfinite(betas)):
            raise ValueError("betas must be finite (found NaN or inf)")
        if np.any(betas <= 0) or np.any(betas >= 1):
            bad = int(np.flatnonzero((betas <= 0) | (betas >= 1))[0])
            raise ValueError(f"betas must lie in (0, 1); betas[{bad}] = {betas[bad]!r}")
        # Respaced schedules skip this: uneven timestep gaps (linspace/trailing spacing) give
        # non-monotone betas while alpha_bar still decreases strictly.
        if not self.kind.startswith("respaced") and np.any(np.diff(betas) < 0):
            bad = int(np.flatnonzero(np.diff(betas) < 0)[0])
            raise ValueError(
                f"betas must be non-decreasing; betas[{bad + 1}] = {betas[bad + 1]!r} "
                f"< betas[{bad}] = {betas[bad]!r}"
            )
        betas.setflags(write=False)
        object.__setattr__(self, "betas", betas)

        def frozen(a):
            a = np.ascontiguousarray(a, dtype=np.float64)
            a.setflags(write=False)
            return a

        alphas = 1.0 - betas
        alpha_bars = np.cumprod(alphas)
        alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
        # beta_tilde_t (DDPM Eq. 7); zero at t = 0, where x_{-1} = x_0 is deterministic.
        posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
        tables = dict(
            alphas=alphas,
            alpha_bars=alpha_bars,
            alpha_bars_prev=alpha_bars_prev,
            sqrt_alpha_bars=np.sqrt(alpha_bars),
            sqrt_one_minus_alpha_bars=np.sqrt(1.0 - alpha_bars),
            # x0 = sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) eps   (inverse of DDPM Eq. 4)
            sqrt_recip_alpha_bars=np.sqrt(1.0 / alpha_bars),
            sqrt_recipm1_alpha_bars=np.sqrt(1.0 / alpha_bars - 1.0),
            posterior_variance=posterior_variance,
            # log beta_tilde with the t = 0 entry replaced by t = 1's (improved-diffusion),
            # since beta_tilde_0 = 0.
            posterior_log_variance_clipped=np.log(
                np.append(posterior_variance[1], posterior_variance[1:])
                if betas.size > 1
                else np.array([betas[0]])
            ),
            posterior_mean_coef1=betas * np.sqrt(alpha_bars_prev) / (1.0 - alpha_bars),
            posterior_mean_coef2=(1.0 - alpha_bars_prev) * np.sqrt(alphas) / (1.0 - alpha_bars),
            snr=alpha_bars / (1.0 - alpha_bars),
        )
        for name, value in tables.items():
            object.__setattr__(self, name, frozen(value))

    # declared for type checkers; set in __post_init__
    alphas: np.ndarray = field(init=False, repr=False)
    alpha_bars: np.ndarray = field(init=False, repr=False)
    alpha_bars_prev: np.ndarray = field(init=False, repr=False)
    sqrt_alpha_bars: np.ndarray = field(init=False, repr=False)
    sqrt_one_minus_alpha_bars: np.ndarray = field(init=False, repr=False)
    sqrt_recip_alpha_bars: np.ndarray = field(init=False, repr=False)
    sqrt_recipm1_alpha_bars: np.ndarray = field(init=False, repr=False)
    posterior_variance: np.ndarray = field(init=False, repr=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False, repr=False)
    posterior_mean_coef1: np.ndarray = field(init=False, repr=False)
    posterior_mean_coef2: np.ndarray = field(init=False, repr=False)
    snr: np.ndarray = field(init=False, repr=False)

    @property
    def T(self) -> int:
        return int(self.betas.size)

    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        """A schedule from custom betas: non-decreasing, each in (0, 1)."""
        return cls(np.asarray(betas), kind="custom")

    def alpha_bar_at(self, t) -> np.ndarray:
        """alpha_bar[t] with alpha_bar[-1] = 1 ("before t = 0"); t int or integer array."""
        t = np.asarray(t)
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(f"t must be integer, got dtype {t.dtype}")
        if np.any(t < -1) or np.any(t >= self.T):
            raise ValueError(f"t must lie in [-1, {self.T - 1}], got min {t.min()} max {t.max()}")
        return np.where(t >= 0, self.alpha_bars[np.clip(t, 0, None)], 1.0)

    def check_t(self, t, name: str = "t") -> np.ndarray:
        """Validate integer timesteps in [0, T) and return them as an int64 array."""
        arr = np.asarray(t)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be an integer or integer array, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.T):
            raise ValueError(
                f"{name} must lie in [0, {self.T - 1}] for T = {self.T}, "
                f"got min {arr.min()} max {arr.max()}"
            )
        return arr.astype(np.int64)

    def respace(self, timesteps) -> "Schedule":
        """The schedule seen by a sampler that only visits `timesteps` (Improved DDPM Sec. 4).

        Returns a Schedule of length len(timesteps) whose alpha_bars equal
        self.alpha_bars[sorted(timesteps)]: beta_k = 1 - alpha_bar[t_k] / alpha_bar[t_{k-1}].
        The model must still be called with the original timesteps.
        """
        ts = np.sort(self.check_t(timesteps, "timesteps"))
        if ts.size == 0 or np.any(np.diff(ts) == 0):
            raise ValueError("timesteps must be non-empty and without repeats")
        alpha_bars = self.alpha_bars[ts]
        # alpha_bar of the respaced schedule is the product of its alphas: alpha_k = ratio of
        # consecutive visited alpha_bars (1 "before t = 0")
        betas = 1.0 - alpha_bars / np.concatenate([[1.0], alpha_bars[:-1]])
        return Schedule(betas, kind=f"respaced-{self.kind}", params={"timesteps": ts.tolist()})

    def __repr__(self) -> str:
        return f"Schedule(kind={self.kind!r}, T={self.T}, params={self.params})"


def check_schedule(schedule, name: str = "schedule") -> Schedule:
    """`schedule` if it is a reference Schedule, else a TypeError naming the argument."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{name} must be a reference Schedule, got {type(schedule).__name__}")
    return schedule


def _linear_betas(T: int, beta_start: float, beta_end: float, rescale: bool) -> np.ndarray:
    if rescale:  # improved-diffusion: keep the T = 1000 endpoints' meaning for other T
        scale = 1000.0 / T
        beta_start, beta_end = scale * beta_start, scale * beta_end
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def _cosine_betas(T: int, s: float, max_beta: float) -> np.ndarray:
    # Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2);
    # beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), max_beta).
    def alpha_bar(u):
        return np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

    u = np.arange(T + 1, dtype=np.float64) / T
    alpha_bars = alpha_bar(u)
    return np.minimum(1.0 - alpha_bars[1:] / alpha_bars[:-1], max_beta)


def _sigmoid_betas(T: int, start: float, end: float, tau: float, max_beta: float) -> np.ndarray:
    # lucidrains/denoising-diffusion-pytorch sigmoid_beta_schedule (Jabri et al. 2022).
    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    u = np.linspace(0, T, T + 1, dtype=np.float64) / T
    v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
    alpha_bars = (-sigmoid((u * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    alpha_bars = alpha_bars / alpha_bars[0]
    return np.clip(1.0 - alpha_bars[1:] / alpha_bars[:-1], 0.0, max_beta)


def make_schedule(kind: str, T: int, **params) -> Schedule:
    """The float64 schedule `kind` in {"linear", "cosine", "sigmoid"} with T steps.

    linear: beta_start=1e-4, beta_end=0.02, rescale=False (scale both by 1000/T when True);
    cosine: s=0.008, max_beta=0.999; sigmoid: start=-3, end=3, tau=1, max_beta=0.999.
    """
    T = _check_T(T)
    defaults = {
        "linear": dict(beta_start=1e-4, beta_end=0.02, rescale=False),
        "cosine": dict(s=0.008, max_beta=0.999),
        "sigmoid": dict(start=-3.0, end=3.0, tau=1.0, max_beta=0.999),
    }
    if kind not in defaults:
        raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    unknown = set(params) - set(defaults[kind])
    if unknown:
        raise TypeError(f"unknown parameter(s) for {kind!r} schedule: {sorted(unknown)}")
    p = {**defaults[kind], **params}
    for name, value in p.items():
        if name == "rescale":
            continue
        if not isinstance(value, (int, float, np.floating, np.integer)) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if kind == "linear":
        if not isinstance(p["rescale"], (bool, np.bool_)):
            raise TypeError(f"rescale must be a bool, got {p['rescale']!r}")
        scale = 1000.0 / T if p["rescale"] else 1.0
        if not (0.0 < scale * p["beta_start"] <= scale * p["beta_end"] < 1.0):
            extra = f" (rescaled by 1000/T = {scale:g} for T = {T})" if p["rescale"] else ""
            raise ValueError(
                "linear schedule needs 0 < beta_start <= beta_end < 1" + extra + ", got "
                f"beta_start={p['beta_start']}, beta_end={p['beta_end']}"
            )
        betas = _linear_betas(T, p["beta_start"], p["beta_end"], bool(p["rescale"]))
    elif kind == "cosine":
        if not (0.0 <= p["s"]):
            raise ValueError(f"s must be >= 0, got {p['s']}")
        if not (0.0 < p["max_beta"] < 1.0):
            raise ValueError(f"max_beta must lie in (0, 1), got {p['max_beta']}")
        betas = _cosine_betas(T, float(p["s"]), float(p["max_beta"]))
    else:
        if not (p["start"] < p["end"]) or p["tau"] <= 0:
            raise ValueError(
                f"sigmoid schedule needs start < end and tau > 0, got {p['start']}, "
                f"{p['end']}, {p['tau']}"
            )
        if not (0.0 < p["max_beta"] < 1.0):
            raise ValueError(f"max_beta must lie in (0, 1), got {p['max_beta']}")
        betas = _sigmoid_betas(T, p["start"], p["end"], p["tau"], float(p["max_beta"]))
    return Schedule(betas, kind=kind, params=p)


def timestep_subset(T: int, num_steps: int, spacing: str = "leading", offset: int = 0) -> np.ndarray:
    """Descending int64 timesteps in [0, T) for a num_steps sampler, as diffusers spaces them.

    leading:  (arange(n) * (T // n))[::-1] + offset
    trailing: round(arange(T, 0, -T/n)) - 1
    linspace: round(linspace(0, T-1, n))[::-1]
    A sampler walks them in order; the step after the last one goes to t = -1 (alpha_bar = 1).
    """
    T = _check_T(T)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must lie in [1, T={T}], got {num_steps}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset and spacing != "leading":
        raise ValueError(f"offset applies to leading spacing only (diffusers' steps_offset), got "
                         f"offset={offset} with spacing={spacing!r}")
    if spacing == "leading":
        ts = (np.arange(num_steps, dtype=np.int64) * (T // num_steps))[::-1] + int(offset)
    elif spacing == "trailing":
        # T - k T/n for k < n: the values of diffusers' arange(T, 0, -T/n), whose float end
        # point can add an (n+1)-th element rounding to -1 (e.g. T=15, n=13).
        ts = np.round(T - np.arange(num_steps) * (T / num_steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, num_steps)).astype(np.int64)[::-1]
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    if ts.min() < 0 or ts.max() >= T:
        raise ValueError(f"offset={offset} puts timesteps outside [0, {T - 1}]")
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"{spacing!r} spacing with num_steps={num_steps}, T={T} repeats a timestep")
    return ts
