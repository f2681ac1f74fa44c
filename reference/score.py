"""The score view: variance-exploding noise levels, denoising score matching, score models.

Song & Ermon 2019 (NCSN) perturb the data with noise levels sigma_1 > sigma_2 > ... > sigma_L
(a geometric sequence) and learn the score of each perturbed density,

    q_sigma(x~ | x) = N(x~; x, sigma^2 I),   grad log q_sigma(x~ | x) = -(x~ - x) / sigma^2,

with the denoising score matching loss (their Eq. 5-6), weighted by lambda(sigma) = sigma^2:

    l(theta; sigma) = 1/2 E ||s_theta(x~, sigma) + (x~ - x) / sigma^2||^2
    L = 1/L sum_i lambda(sigma_i) l(theta; sigma_i).

Indexing (DESIGN contract 1): a VE schedule indexes its levels like timesteps, t = 0..L-1 with
t = 0 the LEAST noisy, so `VESchedule.sigmas[t]` ascends in t and the paper's sigma_i is
sigmas[L - i]. The perturbation x_t = x0 + sigma_t z is the VP `q_sample` with the tables
(1, sigma_t) (SMLD, Song et al. 2021 Eq. 31, discretised).

The noise-conditional score model is the project's UNet, conditioned on the level through its
time embedding with the level INDEX t (the embedding NCSN++ uses with "positional" embeddings:
score_sde's ncsnpp takes `time_cond` = the index of sigma). The network predicts the noise z
and the score is s = -out / sigma_t (NCSNv2, Song & Ermon 2020, Technique 3: s(x, sigma) =
s(x) / sigma). With lambda = sigma^2 the loss then reads sigma^2 ||-out/sigma + z/sigma||^2 =
||out - z||^2: denoising score matching IS the eps-prediction loss of DDPM in this view. Here it
is averaged over elements (= Song & Ermon's Eq. 6 times 2 / D, a constant) so that its scale,
learning rate and gradient clipping are those of the DDPM loss.

A DDPM (VP) model has a score too: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps gives
grad log q(x_t | x0) = -eps / sqrt(1 - alpha_bar_t), so s(x_t, t) = -eps_theta / sqrt(1 -
alpha_bar_t) (Song et al. 2021, Appendix B): `score_scale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._validate import check_float_array, check_same_shape, check_timesteps, per_sample
from .schedules import Schedule

__all__ = ["VESchedule", "ve_schedule", "geometric_sigmas", "check_process_schedule", "PROCESSES",
           "score_scale", "dsm_loss", "dsm_loss_backward", "ScoreModel", "ve_perturb"]

PROCESSES = ("vp", "ve")


def _positive_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> np.ndarray:
    """sigma_1 > ... > sigma_L, geometric from sigma_max to sigma_min (Song & Ermon 2019, Sec. 4.2),
    in the PAPER's order (descending), float64 (L,)."""
    sigma_max = _positive_finite(sigma_max, "sigma_max")
    sigma_min = _positive_finite(sigma_min, "sigma_min")
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)):
        raise TypeError(f"num_levels must be an int, got {type(num_levels).__name__}")
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must be > sigma_min, got sigma_max={sigma_max} sigma_min={sigma_min}")
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), int(num_levels)))


@dataclass(frozen=True, eq=False)
class VESchedule:
    """L variance-exploding noise levels; `sigmas[t]` ascending in t (t = 0 the least noisy).

    Build one with `ve_schedule(sigma_max, sigma_min, L)` or `VESchedule.from_sigmas(levels)`
    with levels in the paper's order sigma_1 > ... > sigma_L (strictly decreasing, positive).
    """

    sigmas: np.ndarray
    kind: str = "custom"
    params: dict = field(default_factory=dict)
    process = "ve"

    def __post_init__(self):
        sigmas = np.array(self.sigmas, dtype=np.float64)
        if sigmas.ndim != 1 or sigmas.size < 2:
            raise ValueError(f"sigmas must be a 1-D array of at least 2 levels, got shape {sigmas.shape}")
        if not np.all(np.isfinite(sigmas)) or np.any(sigmas <= 0):
            raise ValueError("sigmas must be positive and finite")
        if np.any(np.diff(sigmas) <= 0):
            bad = int(np.flatnonzero(np.diff(sigmas) <= 0)[0])
            raise ValueError(f"sigmas must be strictly decreasing in the paper's order (sigma_1 > ... > "
                             f"sigma_L, Song & Ermon 2019): levels {bad} and {bad + 1} from the "
                             f"least noisy are {sigmas[bad]!r} and {sigmas[bad + 1]!r}")
        sigmas.setflags(write=False)
        object.__setattr__(self, "sigmas", sigmas)

    @classmethod
    def from_sigmas(cls, levels) -> "VESchedule":
        """From levels in the paper's order (strictly decreasing); a ValueError naming `sigmas`
        when they are not."""
        levels = np.asarray(levels, dtype=np.float64)
        if levels.ndim == 1 and levels.size >= 2 and np.any(np.diff(levels) >= 0):
            bad = int(np.flatnonzero(np.diff(levels) >= 0)[0])
            raise ValueError(f"sigmas must be strictly decreasing (sigma_1 > ... > sigma_L, Song & "
                             f"Ermon 2019), got sigmas[{bad}] = {levels[bad]!r} <= "
                             f"sigmas[{bad + 1}] = {levels[bad + 1]!r}")
        return cls(levels[::-1].copy())

    @property
    def T(self) -> int:
        """L, the number of levels (the model's t runs over 0..L-1)."""
        return int(self.sigmas.size)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def check_t(self, t, name: str = "t") -> np.ndarray:
        arr = np.asarray(t)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be an integer or integer array, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.T):
            raise ValueError(f"{name} must lie in [0, {self.T - 1}] for L = {self.T}, got min "
                             f"{arr.min()} max {arr.max()}")
        return arr.astype(np.int64)

    def __repr__(self) -> str:
        return (f"VESchedule(kind={self.kind!r}, L={self.T}, sigma_min={self.sigma_min:g}, "
                f"sigma_max={self.sigma_max:g})")


def ve_schedule(sigma_max: float = 10.0, sigma_min: float = 0.01, num_levels: int = 100) -> VESchedule:
    """The geometric VE schedule of NCSN (Song & Ermon 2019): `num_levels` levels."""
    sigmas = geometric_sigmas(sigma_max, sigma_min, num_levels)
    return VESchedule(sigmas[::-1].copy(), kind="geometric",
                      params={"sigma_max": float(sigma_max), "sigma_min": float(sigma_min),
                              "num_levels": int(num_levels)})


def check_process_schedule(schedule, name: str = "schedule"):
    """(schedule, "vp" | "ve"): a reference.Schedule (DDPM, variance preserving) or a VESchedule
    (a score model, variance exploding); anything else is a TypeError naming the argument."""
    if isinstance(schedule, VESchedule):
        return schedule, "ve"
    if isinstance(schedule, Schedule):
        return schedule, "vp"
    raise TypeError(f"{name} must be a reference Schedule (VP, a DDPM model) or a "
                    f"reference.VESchedule (VE, a score model), got {type(schedule).__name__}")


def score_scale(schedule, t) -> np.ndarray:
    """(N,) float64 c with score = c * model_output: -1 / sigma_t (VE: the network predicts z) or
    -1 / sqrt(1 - alpha_bar_t) (VP: the DDPM eps-model; Song et al. 2021, Appendix B)."""
    schedule, process = check_process_schedule(schedule)
    t = np.atleast_1d(schedule.check_t(t))
    if process == "ve":
        return -1.0 / schedule.sigmas[t]
    return -1.0 / schedule.sqrt_one_minus_alpha_bars[t]


def ve_perturb(x0: np.ndarray, t, noise: np.ndarray, schedule: VESchedule) -> np.ndarray:
    """x_t = x0 + sigma_t z (the VE perturbation kernel q_sigma); x0, noise (N, ...), t (N,) or int."""
    x0 = check_float_array(x0, "x0")
    noise = check_float_array(noise, "noise")
    check_same_shape(x0, noise, "x0", "noise")
    if not isinstance(schedule, VESchedule):
        raise TypeError(f"schedule must be a reference.VESchedule, got {type(schedule).__name__}")
    t = check_timesteps(t, x0.shape[0], schedule.T)
    return x0 + per_sample(schedule.sigmas[t], x0.ndim) * noise


def dsm_loss(model_output: np.ndarray, noise: np.ndarray, sigma) -> tuple[float, tuple]:
    """Denoising score matching with lambda(sigma) = sigma^2 (Song & Ermon 2019, Eqs. 5-6).

    model_output (N, ...) the network's output (score s = -out / sigma), noise (N, ...) the z of
    x~ = x + sigma z, sigma (N,) the levels. Returns (loss, cache) with
        loss = mean_{n, j} sigma_n^2 (s_nj + z_nj / sigma_n)^2
    (the per-element mean: Eq. 6 times 2 / D). The score is formed explicitly so that the
    backward below is the chain rule through s, not the eps-loss in disguise.
    """
    out = check_float_array(model_output, "model_output", min_ndim=2)
    noise = check_float_array(noise, "noise", min_ndim=2)
    check_same_shape(out, noise, "model_output", "noise")
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    if sigma.shape != (out.shape[0],) or not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
        raise ValueError(f"sigma must be ({out.shape[0]},) positive finite levels, got {sigma!r}")
    s = per_sample(sigma, out.ndim)
    score = -out / s
    residual = score + noise / s                     # s_theta + (x~ - x) / sigma^2
    weighted = s * s * residual * residual           # lambda(sigma) = sigma^2
    return float(weighted.mean()), (residual, s, out.size)


def dsm_loss_backward(cache) -> np.ndarray:
    """d loss / d model_output (N, ...) from `dsm_loss`'s cache."""
    residual, s, size = cache
    d_score = 2.0 * s * s * residual / size          # d/ds of sigma^2 (s + z/sigma)^2, mean
    return -d_score / s                              # s = -out / sigma


class ScoreModel:
    """The noise-conditional score s(x, sigma_t) = c_t * net(x, t) of a network `net` (e.g. a
    reference.UNet: `.params`, `.forward(x, t, y=None)`, `.backward(dout)`, `.grads`), with
    c_t = `score_scale(schedule, t)` (VE: -1 / sigma_t; VP: -1 / sqrt(1 - alpha_bar_t)).

    forward(x, t, y=None) -> score (N, ...); backward(d_score) -> dx, the net's parameter
    gradients in `.grads` (the chain rule through the per-sample scale c_t)."""

    def __init__(self, net, schedule):
        self.net = net
        self.schedule, self.process = check_process_schedule(schedule)
        self._scale = None

    @property
    def params(self) -> dict:
        return self.net.params

    @property
    def grads(self) -> dict:
        return self.net.grads

    def forward(self, x: np.ndarray, t, y=None) -> np.ndarray:
        t = check_timesteps(t, np.asarray(x).shape[0], self.schedule.T)
        self._scale = per_sample(score_scale(self.schedule, t), np.asarray(x).ndim)
        out = self.net.forward(x, t, y) if y is not None else self.net.forward(x, t)
        return self._scale * out

    def backward(self, d_score: np.ndarray) -> np.ndarray:
        if self._scale is None:
            raise RuntimeError("backward needs a forward first")
        return self.net.backward(self._scale * d_score)
