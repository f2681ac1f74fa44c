"""The plain-torch backend: every op with ordinary torch operations, on any device and dtype.

This is the backend of CPU tensors and of float64 (the torch UNet is checked against the NumPy
reference in float64). It follows the reference's operation order so that float64 results agree
with it to the last bit or so:

- `philox_words` / `normal`: reference.philox_words / reference.normal, bit-for-bit on the CPU.
  The 32-bit Philox words are computed in int64 tensors masked to 32 bits (torch has no full
  uint32 arithmetic); the uniform is Triton's uint_to_uniform_float in float32; Box-Muller is
  evaluated in float64 and rounded once to float32, exactly as the reference does. On CPU
  tensors `normal` and `q_sample`'s drawn noise run compiled (kernels/cpu: the same numbers,
  6-7x faster on one thread, benchmarks/results/cpu-q-sample.md); this pure-torch code is the
  fallback without a C++ compiler (and the CUDA path).
- `q_sample`: reference.q_sample (DDPM Eq. 4).
- `sampler_step`: reference.sampler_step (+ reference.classifier_free_guidance first).
- `learned_variance_step`: reference.learned_variance_step (Improved DDPM Eq. 15).
- `group_norm_silu`: reference.group_norm_silu written with torch ops (autograd, any dtype).
- `langevin_step`: reference.langevin_step (the score samplers' update).

Inputs arrive validated by the public functions in kernels/__init__.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu import philox as cpu_philox

__all__ = ["philox_words", "normal", "q_sample", "sampler_step", "learned_variance_step",
           "group_norm_silu", "langevin_step"]

_MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9  # golden ratio, the Weyl key increment
PHILOX_KEY_B = 0xBB67AE85  # sqrt(3) - 1
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10  # Triton's: (2**23 - 1) / 2**23 * 2**-31, as float32
TWO_PI = 6.283185307179586


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product a * b (a < 2**32, b in [0, 2**32) int64).

    The int64 product wraps modulo 2**64 (two's complement, on every torch device), so its 64
    bits are the unsigned product's: hi = bits 32..63 (masked after the arithmetic shift),
    lo = bits 0..31. The Random123 known answers (0xFFFFFFFF words) and the bit-exact tests check it.
    """
    prod = b * a
    return (prod >> 32) & _MASK32, prod & _MASK32


def philox4x32(c0, c1, c2, c3, seed: int, rounds: int = 10, words: int = 4):
    """Philox4x32-R (Salmon et al. 2011) on int64 tensors holding uint32 words; key from seed.

    The words broadcast against each other (a counter word that is the same along a dimension
    can have size 1 there). words=2 returns (c0, c1) only, skipping the last round's other product.
    From the third round on, when all four words are full-size, the rounds run in place in two
    product buffers: a fresh 8-byte-per-element tensor per operation costs more in page faults
    than the operation itself.
    """
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    state = [c0, c1, c2, c3]
    buffers = None
    for round_index in range(rounds):
        last = words == 2 and round_index == rounds - 1
        if buffers is None and round_index >= 2 and not last:
            state = [w.contiguous() for w in torch.broadcast_tensors(*state)]
            buffers = (torch.empty_like(state[0]), torch.empty_like(state[0]))
        if buffers is not None and not last:
            _round_in_place(state, buffers, k0, k1)
        else:
            hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, state[2])
            if last:
                return hi_b ^ state[1] ^ k0, lo_b
            hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, state[0])
            state = [hi_b ^ state[1] ^ k0, lo_b, hi_a ^ state[3] ^ k1, lo_a]
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return tuple(state) if words == 4 else tuple(state[:2])


def _round_in_place(state: list, buffers: tuple, k0: int, k1: int) -> None:
    """One Philox round on full-size contiguous words, no allocation (see _mulhilo32)."""
    c0, c1, c2, c3 = state
    prod_a, prod_b = buffers
    torch.mul(c0, PHILOX_ROUND_A, out=prod_a)
    torch.mul(c2, PHILOX_ROUND_B, out=prod_b)
    torch.bitwise_right_shift(prod_b, 32, out=c0)
    c0.bitwise_xor_(c1).bitwise_xor_(k0).bitwise_and_(_MASK32)   # hi(B c2) ^ c1 ^ k0
    torch.bitwise_and(prod_b, _MASK32, out=c1)                    # lo(B c2)
    torch.bitwise_right_shift(prod_a, 32, out=c2)
    c2.bitwise_xor_(c3).bitwise_xor_(k1).bitwise_and_(_MASK32)   # hi(A c0) ^ c3 ^ k1
    torch.bitwise_and(prod_a, _MASK32, out=c3)                    # lo(A c0)


def _counters(samples: torch.Tensor, stream, numel: int):
    """Counter words (j, 0, samples[n], stream[n]) as broadcastable int64: (1, numel), (1, 1),
    (N, 1), (N, 1); round 1 then multiplies N samples, not N * numel copies of them."""
    n, device = samples.numel(), samples.device
    j = torch.arange(numel, dtype=torch.int64, device=device).reshape(1, numel)
    i = samples.reshape(n, 1).to(torch.int64)
    if isinstance(stream, torch.Tensor):
        s = stream.reshape(-1, 1).to(torch.int64).expand(n, 1)
    else:
        s = torch.full((n, 1), int(stream), dtype=torch.int64, device=device)
    return j, torch.zeros((1, 1), dtype=torch.int64, device=device), i, s


def philox_words(seed: int, samples: torch.Tensor, stream, numel: int) -> torch.Tensor:
    """reference.philox_words: the words for counters (j, 0, samples[n], stream[n]), j < numel.

    samples: (N,) int64; stream: int or (N,) int64. Returns int64 (N, numel, 4) in [0, 2**32).
    """
    words = philox4x32(*_counters(samples, stream, numel), seed)
    return torch.stack(torch.broadcast_tensors(*words), dim=-1).expand(samples.numel(), numel, 4)


def uint_to_uniform_float(words: torch.Tensor) -> torch.Tensor:
    """Triton's uint32 -> float32 uniform in [0, 1): as int32, negatives folded (~x), times scale."""
    folded = torch.where(words >= 2**31, words ^ _MASK32, words)  # ~x of the int32 reading
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=words.device)


def pair_uniform_to_normal(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """reference.pair_uniform_to_normal, first output: r cos(theta) in float64, rounded to float32."""
    u1 = torch.clamp_min(u1, 1.0e-7).to(torch.float64)  # clamp in float32, as Triton does
    theta = TWO_PI * u2.to(torch.float64)
    r = torch.sqrt(-2.0 * torch.log(u1))
    return (r * torch.cos(theta)).to(torch.float32)


def normal(seed: int, samples: torch.Tensor, stream, shape: tuple[int, ...],
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """reference.normal: (N, *shape) standard normals of the noise stream, on samples.device."""
    numel = 1
    for d in shape:
        numel *= d
    compiled = cpu_philox.normal(seed, samples, stream, numel)  # CPU tensors: the same numbers, faster
    if compiled is not None:
        return compiled.reshape((samples.numel(),) + tuple(shape)).to(dtype)
    word0, word1 = philox4x32(*_counters(samples, stream, numel), seed, words=2)
    z = pair_uniform_to_normal(uint_to_uniform_float(word0), uint_to_uniform_float(word1))
    return z.expand(samples.numel(), numel).reshape((samples.numel(),) + tuple(shape)).to(dtype)


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.reshape(values.shape + (1,) * (ndim - values.dim()))


def _gather_guarded(table: torch.Tensor, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """table[t] in `dtype`; entries with t out of [0, T) become NaN (the device-side guard)."""
    T = table.numel()
    valid = (t >= 0) & (t < T)
    values = table[t.clamp(0, T - 1)].to(dtype)
    return torch.where(valid, values, torch.full_like(values, float("nan")))


def q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, noise, seed, samples, stream):
    """reference.q_sample: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps  (DDPM Eq. 4).

    Computed in float64 for float64 x0, else float32 (one rounding to x0.dtype at the end).
    With noise None, eps = normal(seed, samples, stream) (float32) and is returned in x0.dtype.
    """
    compute = torch.float64 if x0.dtype == torch.float64 else torch.float32
    a = _per_sample(_gather_guarded(sqrt_alpha_bar, t, compute), x0.dim())
    s = _per_sample(_gather_guarded(sqrt_one_minus_alpha_bar, t, compute), x0.dim())
    if noise is None and compute == torch.float32:
        fused = cpu_philox.q_sample(x0, a, s, seed, samples, stream)  # one pass on the CPU
        if fused is not None:
            return fused
    if noise is None:
        eps = normal(seed, samples, stream, tuple(x0.shape[1:]))
        noise = eps.to(x0.dtype)
    else:
        eps = noise
    x_t = a * x0.to(compute) + s * eps.to(compute)
    return x_t.to(x0.dtype), noise


def _step_mean(col, xt, out, clip, grad=None, grad_col=None, shift_mean: bool = True):
    """The noise-free part of reference.sampler_step (columns 0..6, shared by both step ops):
    x0_hat, eps_hat from (x_t, out) [+ the classifier-guidance terms a0 g, a1 g], x0_hat
    clipped, then the posterior/DDIM mean [+ a2 g unless shift_mean is False: the learned-
    variance step adds a2 Sigma g itself]."""
    x0 = col[0] * xt + col[1] * out
    eps = col[2] * xt + col[3] * out
    if grad is not None:
        x0 = x0 + grad_col[0] * grad
        eps = eps + grad_col[1] * grad
    if clip is not None:
        x0 = torch.clamp(x0, clip[0], clip[1])
    mean = col[4] * x0 + col[5] * xt + col[6] * eps
    return mean if grad is None or not shift_mean else mean + grad_col[2] * grad


def sampler_step(x_t, model_output, coefficients, model_output_uncond, guidance_scale, clip,
                 noise, seed, samples, stream, host_sigma_nonzero, classifier_grad=None,
                 classifier_coefficients=None):
    """reference.sampler_step in float64 (the reference's operation order), rounded once.

    coefficients: (N, 8) float64 on x_t's device. host_sigma_nonzero: None when the coefficients
    live on a device (then samples with sigma != 0 and no noise source become NaN).
    classifier_grad (N, ...) with classifier_coefficients (N, 3) float64: classifier guidance.
    """
    compute = torch.float64
    ndim = x_t.dim()
    col = [_per_sample(coefficients[:, k].to(compute), ndim) for k in range(8)]
    out = model_output
    if model_output_uncond is not None:
        # reference.classifier_free_guidance, in the storage precision (float32 at least), as
        # the reference computes it for float32 arrays (w rounded to float32, NEP 50)
        storage = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        out, uncond = out.to(storage), model_output_uncond.to(storage)
        out = uncond + guidance_scale * (out - uncond)
    out = out.to(compute)
    xt = x_t.to(compute)
    grad = grad_col = None
    if classifier_grad is not None:
        grad = classifier_grad.to(compute)  # stored values, exactly (the kernels read them so)
        grad_col = [_per_sample(classifier_coefficients[:, k].to(compute), ndim) for k in range(3)]
    x_prev = _step_mean(col, xt, out, clip, grad, grad_col)
    has_noise = _per_sample(coefficients[:, 7] != 0, ndim)
    if noise is not None or seed is not None:
        if host_sigma_nonzero is None or host_sigma_nonzero:
            if noise is None:
                noise = normal(seed, samples, stream, tuple(x_t.shape[1:]))
            term = col[7] * noise.to(compute)
            x_prev = x_prev + torch.where(has_noise, term, torch.zeros_like(term))
    elif host_sigma_nonzero is None:
        x_prev = torch.where(has_noise, torch.full_like(x_prev, float("nan")), x_prev)
    if x_t.dtype != torch.float64:
        x_prev = x_prev.to(torch.float32)  # float64 -> float32 -> storage, as the fused kernels
    return x_prev.to(x_t.dtype)


def learned_variance_step(x_t, model_output, coefficients, clip, noise, seed, samples, stream,
                          host_has_noise, classifier_grad=None, classifier_coefficients=None):
    """reference.learned_variance_step in float64 (the reference's operation order), rounded once.

    model_output: (N, 2C, ...), the mean part then v; coefficients: (N, 10) float64 on x_t's
    device. host_has_noise: None when the coefficients live on a device (then samples with
    has_noise != 0 and no noise source become NaN). classifier_grad (N, C, ...) with
    classifier_coefficients (N, 3) float64: classifier guidance, a2 times Sigma g (Alg. 1).
    """
    compute = torch.float64
    ndim = x_t.dim()
    channels = x_t.shape[1]
    col = [_per_sample(coefficients[:, k].to(compute), ndim) for k in range(10)]
    out = model_output[:, :channels].to(compute)
    v = model_output[:, channels:].to(compute)
    xt = x_t.to(compute)
    grad = grad_col = None
    if classifier_grad is not None:
        grad = classifier_grad.to(compute)  # stored values, exactly (the kernels read them so)
        grad_col = [_per_sample(classifier_coefficients[:, k].to(compute), ndim) for k in range(3)]
    x_prev = _step_mean(col, xt, out, clip, grad, grad_col, shift_mean=False)
    frac = (v + 1.0) / 2.0
    log_variance = frac * col[7] + (1.0 - frac) * col[8]  # Improved DDPM Eq. 15
    if grad is not None:  # Dhariwal & Nichol Alg. 1: mu + s Sigma g with the learned Sigma
        x_prev = x_prev + grad_col[2] * (torch.exp(log_variance) * grad)
    has_noise = _per_sample(coefficients[:, 9] != 0, ndim)
    if noise is not None or seed is not None:
        if host_has_noise is None or host_has_noise:
            if noise is None:
                noise = normal(seed, samples, stream, tuple(x_t.shape[1:]))
            term = torch.exp(0.5 * log_variance) * noise.to(compute)
            x_prev = x_prev + torch.where(has_noise, term, torch.zeros_like(term))
    elif host_has_noise is None:
        x_prev = torch.where(has_noise, torch.full_like(x_prev, float("nan")), x_prev)
    if x_t.dtype != torch.float64:
        x_prev = x_prev.to(torch.float32)  # float64 -> float32 -> storage, as the fused kernels
    return x_prev.to(x_t.dtype)


def group_norm_silu(x, weight, bias, groups: int, eps: float, activation: bool, shift):
    """silu(group_norm(x + shift[..., None, None]))  (Wu & He 2018; Elfwing et al. 2018).

    Written out as reference.group_norm_silu computes it, (h - mean) * rstd with the biased
    variance of the centred values, rather than with torch.group_norm, whose fused form
    x (rstd w) + (b - mean rstd w) loses ulp(|x| rstd |w|) in groups of nearly equal values
    (rstd ~ 1/sqrt(eps)) and which F.group_norm refuses for groups of one value. Autograd
    (and double backward) flow through these plain ops. float16/bfloat16 are computed in
    float32 and rounded back; the output keeps x's memory format.
    """
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    h = x.to(compute)
    if shift is not None:
        h = h + _per_sample(shift.to(compute), x.dim())
    n, c = h.shape[:2]
    h_groups = h.reshape(n, groups, -1)
    mean = h_groups.mean(dim=2, keepdim=True)
    centered = h_groups - mean
    var = (centered * centered).mean(dim=2, keepdim=True)     # biased, as nn.GroupNorm
    rstd = 1.0 / torch.sqrt(var + eps)
    y = (centered * rstd).reshape(h.shape)                     # x_hat
    per_channel = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.to(compute).reshape(per_channel)
    if bias is not None:
        y = y + bias.to(compute).reshape(per_channel)
    if activation:
        y = F.silu(y)
    y = y.to(x.dtype)
    if x.dim() in (4, 5) and not x.is_contiguous():
        memory_format = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=memory_format):
            y = y.contiguous(memory_format=memory_format)
    return y


def langevin_step(x, model_output, coefficients, noise, seed, samples, stream, host_has_noise):
    """reference.langevin_step in float64 (score = c1 out; (c0 x + c2 score) + c3 z), rounded once.

    coefficients: (N, 4) float64 on x's device. host_has_noise: None when the coefficients live
    on a device (then samples with c3 != 0 and no noise source become NaN).
    """
    compute = torch.float64
    ndim = x.dim()
    col = [_per_sample(coefficients[:, k].to(compute), ndim) for k in range(4)]
    score = col[1] * model_output.to(compute)
    x_next = col[0] * x.to(compute) + col[2] * score
    has_noise = _per_sample(coefficients[:, 3] != 0, ndim)
    if noise is not None or seed is not None:
        if host_has_noise is None or host_has_noise:
            if noise is None:
                noise = normal(seed, samples, stream, tuple(x.shape[1:]))
            term = col[3] * noise.to(compute)
            x_next = x_next + torch.where(has_noise, term, torch.zeros_like(term))
    elif host_has_noise is None:
        x_next = torch.where(has_noise, torch.full_like(x_next, float("nan")), x_next)
    if x.dtype != torch.float64:
        x_next = x_next.to(torch.float32)  # float64 -> float32 -> storage, as the fused kernels
    return x_next.to(x.dtype)


def layer_norm_modulate(x, shift, scale, eps: float):
    """x_hat (1 + scale) + shift, x_hat = LayerNorm(x) over the last dim without affine (DiT adaLN).

    Written as reference.layer_norm_modulate computes it (centred values, biased variance), so
    float64 agrees with the reference to round-off; autograd flows through these plain ops.
    float16/bfloat16 are computed in float32 and rounded back to x's dtype.
    """
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    h = x.to(compute)
    mean = h.mean(dim=-1, keepdim=True)
    centred = h - mean
    rstd = 1.0 / torch.sqrt((centred * centred).mean(dim=-1, keepdim=True) + eps)
    y = centred * rstd * (1.0 + scale.to(compute)[:, None, :]) + shift.to(compute)[:, None, :]
    return y.to(x.dtype)
