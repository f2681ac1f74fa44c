"""Improved DDPM's objectives and likelihood in torch (Nichol & Dhariwal 2021), equal to the
reference: `reference.variational` and `reference.vlb` define every number here.

The schedule tables come from the reference (float64, cast once); the per-element math is the
reference's, written with torch ops so autograd gives the gradients (the reference writes them
by hand; tests/test_improved_ddpm_torch.py holds the two together in float64 to 1e-10).

    normal_kl, discretized_gaussian_log_likelihood      per element, natural log
    VariationalTables(schedule, prediction)             the float64 tables, cast to a device/dtype
    vlb_terms(...)                                       L_t in bits/dim per sample
    variational_loss(...)                                simple / hybrid / vlb training losses
    bits_per_dim(model, x0, schedule)                    the full bound over every t, and the prior
"""

from __future__ import annotations

import math

import numpy as np
import torch

import kernels
import reference

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "VariationalTables", "vlb_terms",
           "variational_loss", "bits_per_dim"]

LN2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, nats (reference.normal_kl)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _tail(z: torch.Tensor) -> torch.Tensor:
    """1 - Phi(z) = erfc(z / sqrt 2) / 2."""
    return 0.5 * torch.special.erfc(z / math.sqrt(2.0))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) per element of 8-bit data in [-1, 1] (reference.discretized_gaussian_log_likelihood,
    the exact CDF, each bin mass in its non-cancelling tail, floored at 1e-12)."""
    if x.numel() and (float(x.min()) < -1.0 or float(x.max()) > 1.0):
        raise ValueError(f"x must lie in [-1, 1] (8-bit data scaled as 2 k / 255 - 1), got min "
                         f"{float(x.min())} max {float(x.max())}")
    return _log_likelihood(x, means, log_scales)


def _log_likelihood(x, means, log_scales):
    """discretized_gaussian_log_likelihood without the range check (a host sync on a GPU)."""
    half_bin = reference.variational.HALF_BIN
    inv_scale = torch.exp(-log_scales)
    centered = x - means
    plus, minus = inv_scale * (centered + half_bin), inv_scale * (centered - half_bin)
    low, high = x < -1.0 + half_bin, x > 1.0 - half_bin
    inner = torch.where(minus >= 0, _tail(minus) - _tail(plus),
                        torch.where(plus <= 0, _tail(-plus) - _tail(-minus), 1.0 - _tail(plus) - _tail(-minus)))
    mass = torch.where(low, _tail(-plus), torch.where(high, _tail(minus), inner))
    return torch.log(mass.clamp(min=reference.variational.MIN_PROBABILITY))


class VariationalTables:
    """The reference's float64 schedule tables that the bound reads, cast once to (device, dtype).

    Per timestep t: x0_hat = x0_from_xt x_t + x0_from_out out (the `prediction`'s coefficients),
    posterior mean coefficients, log beta_tilde clipped at t = 0, log beta_t, the fixed_large
    table, sqrt(alpha_bar) and sqrt(1 - alpha_bar) (for q_sample).
    """

    def __init__(self, schedule, prediction: str = "epsilon", *, device=None, dtype=torch.float32):
        schedule = schedule if isinstance(schedule, reference.Schedule) else getattr(schedule, "reference", schedule)
        self.schedule = reference.schedules.check_schedule(schedule)
        if prediction not in reference.PREDICTIONS:
            raise ValueError(f"prediction must be one of {reference.PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        ts = np.arange(schedule.T)
        coef = reference.prediction_coefficients(schedule.alpha_bars, prediction)
        tables = dict(
            x0_from_xt=coef[:, 0], x0_from_out=coef[:, 1],
            posterior_mean_coef1=schedule.posterior_mean_coef1,
            posterior_mean_coef2=schedule.posterior_mean_coef2,
            fixed_small=reference.fixed_log_variance(ts, schedule, "fixed_small"),
            fixed_large=reference.fixed_log_variance(ts, schedule, "fixed_large"),
            log_betas=np.log(schedule.betas),
            sqrt_alpha_bars=schedule.sqrt_alpha_bars,
            sqrt_one_minus_alpha_bars=schedule.sqrt_one_minus_alpha_bars,
        )
        for name, value in tables.items():
            setattr(self, name, torch.tensor(np.asarray(value), dtype=dtype, device=device))

    @property
    def T(self) -> int:
        return self.schedule.T


def _at(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return table[t].reshape((-1,) + (1,) * (ndim - 1))


def _split(model_output: torch.Tensor, channels: int, variance: str):
    """(mean part, v or None) with the reference's checks (reference.split_model_output)."""
    if variance not in reference.VARIANCE_KINDS:
        raise ValueError(f"variance must be one of {reference.VARIANCE_KINDS}, got {variance!r}")
    reference.split_model_output(np.zeros((1, model_output.shape[1], 1)), channels, variance)  # the shape checks (zeros: np.empty may hold NaN and fail the finite check)
    if variance == "learned":
        return model_output[:, :channels], model_output[:, channels:]
    return model_output, None


def vlb_terms(model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              tables: VariationalTables, variance: str = "learned",
              stop_mean_gradient: bool = False) -> torch.Tensor:
    """(N,) L_t in bits/dim (reference.vlb_terms): KL for t > 0, the decoder NLL at t = 0.

    stop_mean_gradient: the mean part enters detached (L_hybrid: L_vlb trains only the variance).
    """
    mean_out, v = _split(model_output, x0.shape[1], variance)
    if stop_mean_gradient:
        mean_out = mean_out.detach()
    nd = x0.ndim
    x0_hat = _at(tables.x0_from_xt, t, nd) * x_t + _at(tables.x0_from_out, t, nd) * mean_out
    coef1, coef2 = _at(tables.posterior_mean_coef1, t, nd), _at(tables.posterior_mean_coef2, t, nd)
    mean = coef1 * x0_hat + coef2 * x_t
    if v is None:
        logvar = _at(getattr(tables, variance), t, nd).expand_as(x0)
    else:
        frac = (v + 1.0) / 2.0  # Improved DDPM Eq. 15
        logvar = frac * _at(tables.log_betas, t, nd) + (1.0 - frac) * _at(tables.fixed_small, t, nd)
    true_mean = coef1 * x0 + coef2 * x_t
    true_logvar = _at(tables.fixed_small, t, nd)
    kl = normal_kl(true_mean, true_logvar, mean, logvar).flatten(1).mean(dim=1) / LN2
    decoder = t == 0
    if not bool(decoder.any()):
        return kl
    x0_dec = torch.where(decoder.reshape((-1,) + (1,) * (nd - 1)), x0, torch.zeros_like(x0))
    nll = -_log_likelihood(x0_dec, mean, 0.5 * logvar).flatten(1).mean(dim=1) / LN2
    return torch.where(decoder, nll, kl)


def variational_loss(model_output, x0, x_t, target, t, tables: VariationalTables, *, loss: str = "hybrid",
                     variance: str = "learned", vlb_weight: float = reference.VLB_WEIGHT, weights=None):
    """(loss, terms (N,) detached L_t) of reference.variational_loss; terms are zeros for "simple"."""
    reference.check_loss_variance(loss, variance)
    mean_out, _ = _split(model_output, x0.shape[1], variance)
    w = torch.ones(x0.shape[0], dtype=model_output.dtype, device=model_output.device) if weights is None \
        else weights.to(model_output.dtype)
    value = torch.zeros((), dtype=model_output.dtype, device=model_output.device)
    terms = torch.zeros(x0.shape[0], dtype=model_output.dtype, device=model_output.device)
    if loss != "vlb":
        value = (w * (mean_out - target).pow(2).flatten(1).mean(dim=1)).mean()
    if loss != "simple":
        terms = vlb_terms(model_output, x0, x_t, t, tables, variance, stop_mean_gradient=loss == "hybrid")
        scale = vlb_weight * tables.T if loss == "hybrid" else float(tables.T)
        value = value + (scale * w * terms).mean()
    return value, terms.detach()


@torch.no_grad()
def bits_per_dim(model, x0: torch.Tensor, schedule, *, seed: int = 0, y=None, samples=None,
                 prediction: str = "epsilon", variance: str | None = None):
    """The full bound of x0 in bits/dim, every t and the prior (reference.bits_per_dim).

    model(x_t, t, y) -> output; x0 (N, C, H, W) on the 8-bit grid; the noise of timestep t is the
    stream reference.bpd_stream(t) for the rows `samples` (default arange(N)). variance None:
    "learned" when model.config.out_channels = 2 in_channels, else "fixed_small".
    Returns (total (N,), terms (N, T + 1)) in x0's dtype (float64 tensors for float64 x0).
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a float tensor, got {type(x0).__name__}")
    reference.check_8bit_grid(x0.detach().cpu().double().numpy(), "x0")
    config = getattr(model, "config", None)
    if variance is None:
        learned = config is not None and config.out_channels == 2 * config.in_channels
        variance = "learned" if learned else "fixed_small"
    seed = reference.check_seed(seed)
    tables = VariationalTables(schedule, prediction, device=x0.device, dtype=x0.dtype)
    n, T = x0.shape[0], tables.T
    samples = torch.arange(n, dtype=torch.int64) if samples is None else torch.as_tensor(samples, dtype=torch.int64)
    samples = samples.to(x0.device)
    terms = torch.zeros((n, T + 1), dtype=x0.dtype, device=x0.device)
    for step in range(T - 1, -1, -1):
        t = torch.full((n,), step, dtype=torch.int64, device=x0.device)
        noise = kernels.normal(seed, samples, reference.bpd_stream(step), tuple(x0.shape[1:]),
                               device=x0.device).to(x0.dtype)
        x_t = _at(tables.sqrt_alpha_bars, t, x0.ndim) * x0 + _at(tables.sqrt_one_minus_alpha_bars, t, x0.ndim) * noise
        out = model(x_t, t, y)
        terms[:, step] = vlb_terms(out.to(x0.dtype), x0, x_t, t, tables, variance)
    terms[:, T] = torch.as_tensor(reference.prior_bpd(x0.detach().cpu().double().numpy(), tables.schedule),
                                  dtype=x0.dtype, device=x0.device)
    return terms.sum(dim=1), terms
