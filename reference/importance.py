"""Importance sampling of t for L_vlb (Improved DDPM Sec. 3.3, Eq. 18; improved-diffusion's
`LossSecondMomentResampler`).

    p_t ∝ sqrt(E[L_t^2]),   L_vlb = E_{t ~ p_t}[L_t / p_t],   sum p_t = 1,

E[L_t^2] estimated from the last `history` values of L_t seen at each t; until every t has
`history` values, t is uniform (the plain draw of `training_draws`). As in the paper's code, the
importance distribution is mixed with `uniform_prob` of the uniform one so no p_t is 0.

The draw (`reference.train.importance_draws`) is a function of the noise stream (DESIGN contract 2), so NumPy and torch trainers given
the same history draw the same t: word 2 of counter j = 0 of the step's stream (the word
`training_draws` turns into a uniform t) read as u = word / 2^32 in [0, 1), and t = the first
index whose cumulative probability exceeds u (inverse CDF, exact in float64).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LossSecondMomentHistory"]


class LossSecondMomentHistory:
    """The last `history` values of L_t per t, and the sampling distribution they give."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        for name, value in (("T", T), ("history", history)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob!r}")
        self.T, self.history, self.uniform_prob = int(T), int(history), float(uniform_prob)
        self.losses = np.zeros((self.T, self.history))
        self.counts = np.zeros(self.T, dtype=np.int64)

    @property
    def warmed_up(self) -> bool:
        """Every t has `history` values: the importance distribution is in use."""
        return bool(np.all(self.counts == self.history))

    def probabilities(self) -> np.ndarray | None:
        """(T,) float64 p_t (Eq. 18 mixed with uniform_prob of uniform), or None before warm-up."""
        if not self.warmed_up:
            return None
        p = np.sqrt(np.mean(self.losses**2, axis=1))
        p = p / p.sum() * (1.0 - self.uniform_prob) + self.uniform_prob / self.T
        return p / p.sum()

    def update(self, t, losses) -> None:
        """Record L_t of each sample (in order; the oldest value of a full row drops out)."""
        t = np.asarray(t, dtype=np.int64).reshape(-1)
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if t.shape != losses.shape:
            raise ValueError(f"t and losses must have the same length, got {t.shape} and {losses.shape}")
        if t.size and (t.min() < 0 or t.max() >= self.T):
            raise ValueError(f"t must lie in [0, {self.T - 1}], got min {t.min()} max {t.max()}")
        if not np.all(np.isfinite(losses)):
            raise ValueError("losses contain NaN or inf (a skipped step must not be recorded)")
        for ti, loss in zip(t, losses):
            if self.counts[ti] == self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:]
                self.losses[ti, -1] = loss
            else:
                self.losses[ti, self.counts[ti]] = loss
                self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {"T": self.T, "history": self.history, "uniform_prob": self.uniform_prob,
                "losses": self.losses.copy(), "counts": self.counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        if (state["T"], state["history"]) != (self.T, self.history):
            raise ValueError(f"history state for T={state['T']}, history={state['history']} does not "
                             f"fit T={self.T}, history={self.history}")
        self.uniform_prob = float(state["uniform_prob"])
        self.losses = np.array(state["losses"], dtype=np.float64)
        self.counts = np.array(state["counts"], dtype=np.int64)
