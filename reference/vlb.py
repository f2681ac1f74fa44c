"""The variational bound in bits per dimension, per timestep, from a model's output
(Improved DDPM, Nichol & Dhariwal 2021, Sec. 2 and 3.1; improved-diffusion's `_vb_terms_bpd`).

A model output of shape (N, C_out, ...) is read by `variance`:

    "learned"      C_out = 2 C: the first C channels are the mean part (eps / x0 / v as the
                   model's `prediction`), the last C are v of Eq. 15 (`learned_log_variance`)
    "fixed_small"  C_out = C, sigma^2 = beta_tilde_t (log clipped at t = 0 as the Schedule does)
    "fixed_large"  C_out = C, sigma^2 = beta_t, with beta_tilde_1 at t = 0 (improved-diffusion)

p(x_{t-1} | x_t) = N(mu, sigma^2) with mu the posterior mean of (x0_hat, x_t) (DDPM Eq. 7), and

    L_t (t > 0) = mean_dims KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) / ln 2
    L_0         = -mean_dims log p(x0 | x_1) / ln 2   (the discretized Gaussian decoder)
    L_T (prior) = mean_dims KL(q(x_{T-1} | x0) || N(0, I)) / ln 2

so the NLL bound is sum_{t=0}^{T-1} L_t + L_T bits per dimension.
"""

from __future__ import annotations

import math

import numpy as np

from ._validate import check_float_array, check_samples, check_seed, check_timesteps, per_sample, result_dtype
from .noise import normal
from .process import PREDICTIONS, prediction_coefficients, q_posterior_mean_variance, q_sample
from .schedules import Schedule, check_schedule
from .variational import (
    CDF_KINDS,
    check_8bit_grid,
    discretized_gaussian_log_likelihood,
    discretized_gaussian_log_likelihood_backward,
    learned_log_variance,
    learned_log_variance_backward,
    normal_kl,
    normal_kl_backward,
)

__all__ = ["VARIANCE_KINDS", "BPD_STREAM_BASE", "split_model_output", "fixed_log_variance",
           "vlb_terms", "vlb_terms_backward", "prior_bpd", "bits_per_dim", "bpd_stream"]

VARIANCE_KINDS = ("learned", "fixed_small", "fixed_large")
LN2 = math.log(2.0)
# bits_per_dim draws the noise of timestep t from stream BPD_STREAM_BASE + t (DESIGN contract
# 2): above any sampler's step streams in practice (2^30 steps), below training's (2^31 + step).
BPD_STREAM_BASE = 1 << 30


def bpd_stream(t: int) -> int:
    """The noise stream of timestep t in `bits_per_dim`."""
    return BPD_STREAM_BASE + int(t)


def _check_variance(variance: str) -> str:
    if variance not in VARIANCE_KINDS:
        raise ValueError(f"variance must be one of {VARIANCE_KINDS}, got {variance!r}")
    return variance


def split_model_output(model_output: np.ndarray, channels: int, variance: str):
    """(mean part (N, C, ...), v (N, C, ...) or None) of a model output for C data channels.

    A learned variance needs 2 C output channels, a fixed one exactly C: anything else is a
    ValueError naming model_output (and the variance it was read with).
    """
    _check_variance(variance)
    model_output = check_float_array(model_output, "model_output", min_ndim=2)
    got = model_output.shape[1]
    if variance == "learned":
        if got != 2 * channels:
            raise ValueError(f"model_output has {got} channels; variance='learned' needs 2 x {channels} "
                             f"= {2 * channels} (the mean part, then v): the model has no variance half "
                             f"(config out_channels must be 2 x in_channels)")
        return model_output[:, :channels], model_output[:, channels:]
    if got != channels:
        hint = (" (a variance half: use variance='learned')" if got == 2 * channels else "")
        raise ValueError(f"model_output has {got} channels; variance={variance!r} needs {channels}{hint}")
    return model_output, None


def fixed_log_variance(t, schedule: Schedule, variance: str) -> np.ndarray:
    """log sigma^2_t of a fixed variance: beta_tilde_t or beta_t, each with t = 0 -> beta_tilde_1."""
    schedule = check_schedule(schedule)
    t = schedule.check_t(t)
    if _check_variance(variance) == "learned":
        raise ValueError("variance='learned' has no fixed table; use learned_log_variance")
    if variance == "fixed_small":
        return schedule.posterior_log_variance_clipped[t]
    large = np.log(np.append(schedule.posterior_variance[1], schedule.betas[1:])
                   if schedule.T > 1 else schedule.betas)
    return large[t]


def vlb_terms(model_output, x0, x_t, t, schedule: Schedule, prediction: str = "epsilon",
              variance: str = "learned", cdf: str = "exact"):
    """L_t in bits/dim for each sample (module docstring): returns ((N,) float64, cache).

    model_output (N, C_out, ...) read by `variance`; x0, x_t (N, C, ...); t (N,) ints. The
    decoder term (t = 0) needs x0 in [-1, 1]; `bits_per_dim` also checks the 8-bit grid.
    """
    schedule = check_schedule(schedule)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if cdf not in CDF_KINDS:
        raise ValueError(f"cdf must be one of {CDF_KINDS}, got {cdf!r}")
    x0, x_t = check_float_array(x0, "x0", min_ndim=2), check_float_array(x_t, "x_t", min_ndim=2)
    if x_t.shape != x0.shape:
        raise ValueError(f"x_t must have the shape of x0 {x0.shape}, got {x_t.shape}")
    mean_out, v = split_model_output(model_output, x0.shape[1], variance)
    if mean_out.shape != x0.shape:
        raise ValueError(f"model_output's mean part must have the shape of x0 {x0.shape}, got {mean_out.shape}")
    t = check_timesteps(t, x0.shape[0], schedule.T)
    nd = x0.ndim
    x0_, x_t_, mean_out_ = (a.astype(np.float64) for a in (x0, x_t, mean_out))
    coef = prediction_coefficients(schedule.alpha_bars[t], prediction)
    x0_hat = per_sample(coef[:, 0], nd) * x_t_ + per_sample(coef[:, 1], nd) * mean_out_
    mean = (per_sample(schedule.posterior_mean_coef1[t], nd) * x0_hat
            + per_sample(schedule.posterior_mean_coef2[t], nd) * x_t_)
    if v is None:
        logvar = np.broadcast_to(per_sample(fixed_log_variance(t, schedule, variance), nd), x0.shape)
    else:
        logvar = learned_log_variance(v.astype(np.float64), t, schedule)
    true_mean, _, true_logvar = q_posterior_mean_variance(x0_, x_t_, t, schedule)
    D = x0[0].size
    kl = normal_kl(true_mean, true_logvar, mean, logvar).reshape(len(t), -1).mean(axis=1) / LN2
    decoder = t == 0
    nll = np.zeros(len(t))
    if np.any(decoder):
        logp = discretized_gaussian_log_likelihood(x0_[decoder], mean[decoder], 0.5 * logvar[decoder], cdf)
        nll[decoder] = -logp.reshape(int(decoder.sum()), -1).mean(axis=1) / LN2
    terms = np.where(decoder, nll, kl)
    cache = dict(t=t, x0=x0_, mean=mean, logvar=logvar, true_mean=true_mean, true_logvar=true_logvar,
                 coef=coef, schedule=schedule, learned=v is not None, D=D, cdf=cdf,
                 dtype=result_dtype(model_output), shape=model_output.shape)
    return terms, cache


def vlb_terms_backward(dterms, cache, stop_mean_gradient: bool = False) -> np.ndarray:
    """d sum_i(dterms_i L_t_i) / d model_output (N, C_out, ...), in the output's dtype.

    stop_mean_gradient: the mean part gets no gradient (Improved DDPM Sec. 3.1: in L_hybrid,
    L_vlb trains only the variance; improved-diffusion detaches the mean half).
    """
    if cache["cdf"] != "exact":
        raise ValueError("vlb_terms_backward needs the forward with cdf='exact'")
    t, nd, D = cache["t"], cache["x0"].ndim, cache["D"]
    dterms = np.broadcast_to(np.asarray(dterms, dtype=np.float64), t.shape)
    scale = per_sample(dterms / (D * LN2), nd)  # mean over dims, then nats -> bits
    _, _, dmean, dlogvar = normal_kl_backward(np.ones_like(cache["mean"]), cache["true_mean"],
                                              cache["true_logvar"], cache["mean"], cache["logvar"])
    decoder = t == 0
    if np.any(decoder):
        dmean_0, dlog_scale_0 = discretized_gaussian_log_likelihood_backward(
            -1.0, cache["x0"][decoder], cache["mean"][decoder], 0.5 * cache["logvar"][decoder])
        dmean[decoder], dlogvar[decoder] = dmean_0, 0.5 * dlog_scale_0
    dmean, dlogvar = scale * dmean, scale * dlogvar
    schedule, coef = cache["schedule"], cache["coef"]
    # mu = coef1_t (c_out out + c_xt x_t) + coef2_t x_t: d mu / d out = coef1_t c_out
    dmean_out = per_sample(schedule.posterior_mean_coef1[t] * coef[:, 1], nd) * dmean
    if stop_mean_gradient:
        dmean_out = np.zeros_like(dmean_out)
    if not cache["learned"]:
        return dmean_out.astype(cache["dtype"])
    dv = learned_log_variance_backward(dlogvar, t, schedule)
    return np.concatenate([dmean_out, dv], axis=1).astype(cache["dtype"])


def prior_bpd(x0, schedule: Schedule) -> np.ndarray:
    """L_T per sample: mean_dims KL(q(x_{T-1} | x0) || N(0, I)) / ln 2, (N,) float64."""
    schedule = check_schedule(schedule)
    x0 = check_float_array(x0, "x0", min_ndim=2).astype(np.float64)
    last = schedule.T - 1
    mean = np.sqrt(schedule.alpha_bars[last]) * x0
    logvar = np.full(x0.shape, np.log1p(-schedule.alpha_bars[last]))
    return normal_kl(mean, logvar, 0.0, 0.0).reshape(x0.shape[0], -1).mean(axis=1) / LN2


def _model_channels(model, x0) -> str:
    """The variance a model's config implies: 'learned' when out_channels = 2 in_channels."""
    config = getattr(model, "config", None)
    out, cin = getattr(config, "out_channels", None), getattr(config, "in_channels", None)
    if out is not None and cin is not None and out == 2 * cin:
        return "learned"
    return "fixed_small"


def bits_per_dim(model, x0, schedule: Schedule, *, seed: int = 0, y=None, samples=None,
                 prediction: str = "epsilon", variance: str | None = None, cdf: str = "exact"):
    """The full variational bound of x0 in bits/dim: every t = T-1..0 (no Monte-Carlo subset
    of timesteps) and the prior; improved-diffusion's `calc_bpd_loop`.

    model: forward(x_t, t, y) -> output (the model protocol of reference.train); x0 (N, C, ...)
    on the 8-bit grid 2 k / 255 - 1; x_t = q_sample(x0, t, eps) with eps from the noise stream
    (seed, samples, bpd_stream(t)), so a batch's value does not depend on its split.
    variance None: "learned" when the model's config has out_channels = 2 in_channels, else
    "fixed_small". Returns (total (N,), terms (N, T + 1)): terms[:, t] = L_t, terms[:, T] = L_T,
    total = terms.sum(axis=1); all float64, in bits per dimension.
    """
    schedule = check_schedule(schedule)
    seed = check_seed(seed)
    x0 = check_float_array(x0, "x0", min_ndim=2)
    check_8bit_grid(x0, "x0")
    variance = _model_channels(model, x0) if variance is None else _check_variance(variance)
    n, T = x0.shape[0], schedule.T
    samples = check_samples(samples, n)
    terms = np.zeros((n, T + 1))
    for t in range(T - 1, -1, -1):
        t_batch = np.full(n, t, dtype=np.int64)
        noise = normal(seed, samples, bpd_stream(t), x0.shape[1:]).astype(x0.dtype)
        x_t = q_sample(x0, t_batch, noise, schedule)
        out = model.forward(x_t, t_batch, y)
        terms[:, t], _ = vlb_terms(out, x0, x_t, t_batch, schedule, prediction, variance, cdf)
    terms[:, T] = prior_bpd(x0, schedule)
    return terms.sum(axis=1), terms
