"""reference.schedules: the tables of DESIGN contract 1, timestep spacings, respacing, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close
from reference import SCHEDULE_KINDS, SPACINGS, Schedule, make_schedule, timestep_subset

Ts = st.integers(min_value=1, max_value=2000)


# ----------------------------------------------------------------------------- properties

@given(kind=st.sampled_from(SCHEDULE_KINDS), T=Ts)
def test_schedule_is_monotone_with_alpha_bar_in_unit_interval(kind, T):
    s = make_schedule(kind, T)
    assert s.T == T
    for name in ("betas", "alphas", "alpha_bars"):
        table = getattr(s, name)
        assert table.dtype == np.float64 and table.shape == (T,), name
    assert np.all((s.betas > 0) & (s.betas < 1))
    assert np.all(np.diff(s.betas) >= 0)
    assert np.all((s.alpha_bars > 0) & (s.alpha_bars <= 1))
    assert np.all(np.diff(s.alpha_bars) < 0)          # strictly more noise at every step
    assert np.all(np.diff(s.snr) < 0)


@given(kind=st.sampled_from(SCHEDULE_KINDS), T=st.integers(2, 1500))
def test_derived_tables_match_their_formulas(kind, T):
    s = make_schedule(kind, T)
    ab, ab_prev = s.alpha_bars, np.concatenate([[1.0], s.alpha_bars[:-1]])
    tol = dict(atol=0.0, rtol=1e-12)
    assert_close(s.alphas, 1.0 - s.betas, **tol, name="alphas")
    assert_close(ab, np.cumprod(1.0 - s.betas), **tol, name="alpha_bars")
    assert_close(s.alpha_bars_prev, ab_prev, **tol, name="alpha_bars_prev")
    assert_close(s.sqrt_alpha_bars ** 2, ab, **tol, name="sqrt_alpha_bars")
    assert_close(s.sqrt_one_minus_alpha_bars ** 2, 1.0 - ab, **tol, name="sqrt_one_minus_alpha_bars")
    assert_close(s.sqrt_recip_alpha_bars * s.sqrt_alpha_bars, np.ones(T), **tol, name="sqrt_recip")
    assert_close(s.sqrt_recipm1_alpha_bars ** 2, 1.0 / ab - 1.0, atol=0, rtol=1e-10, name="sqrt_recipm1")
    # DDPM Eq. 7: beta_tilde_t = beta_t (1 - ab_{t-1}) / (1 - ab_t); zero at t = 0
    assert_close(s.posterior_variance, s.betas * (1 - ab_prev) / (1 - ab), **tol, name="beta_tilde")
    assert s.posterior_variance[0] == 0.0
    assert_close(np.exp(s.posterior_log_variance_clipped[1:]), s.posterior_variance[1:], atol=0, rtol=1e-12,
                 name="log beta_tilde")
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert_close(s.snr, ab / (1 - ab), **tol, name="snr")
    assert all(not getattr(s, name).flags.writeable for name in ("betas", "alpha_bars", "snr"))


def test_linear_schedule_known_values():
    s = make_schedule("linear", 1000)
    assert s.betas[0] == 1e-4 and s.betas[-1] == 0.02
    assert_close(s.betas, np.linspace(1e-4, 0.02, 1000), atol=0, rtol=0, name="betas")
    # alpha_bar_999 of DDPM's schedule: exp(sum log(1 - beta)) ~ 4.0358e-5
    assert abs(s.alpha_bars[-1] - 4.035829765375676e-05) < 1e-15
    r = make_schedule("linear", 250, rescale=True)  # improved-diffusion: scaled by 1000 / T
    assert_close(r.betas[[0, -1]], [4e-4, 0.08], atol=0, rtol=1e-12, name="rescaled ends")


@given(T=st.integers(1, 2000))
def test_cosine_alpha_bar_is_nichol_dhariwal_eq17(T):
    # Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi / 2); betas clipped
    # at 0.999, which only bites at the very last steps.
    s = make_schedule("cosine", T)
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = f[1:] / f[0]
    unclipped = np.cumsum(s.betas >= 0.999) == 0
    assert_close(s.alpha_bars[unclipped], expected[unclipped], atol=0, rtol=1e-10, name="alpha_bar")


def test_schedules_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for kind, beta_schedule in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
        ours = make_schedule(kind, 1000)
        # diffusers builds betas in float32: agreement to float32 rounding.
        assert_close(ours.betas, theirs.betas.double().numpy(), atol=1e-9, rtol=1e-6, name=kind)


# ----------------------------------------------------------------------------- spacings

@given(data=st.data(), spacing=st.sampled_from(SPACINGS))
def test_timestep_subset_is_strictly_descending_and_in_range(data, spacing):
    T = data.draw(st.integers(1, 3000), label="T")
    n = data.draw(st.integers(1, T), label="num_steps")
    ts = timestep_subset(T, n, spacing)
    assert ts.dtype == np.int64 and ts.shape == (n,)
    assert ts.min() >= 0 and ts.max() <= T - 1
    assert np.all(np.diff(ts) < 0)


def test_timestep_subset_known_answers():
    assert timestep_subset(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert timestep_subset(1000, 10, "leading", offset=1).tolist() == list(range(901, 0, -100))
    assert timestep_subset(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert timestep_subset(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    # T=15, n=13: round(15 - 15 k / 13) - 1 for k < 13 (diffusers' float arange(15, 0, -15/13)
    # has a 14th element ~1e-15 that rounds to -1).
    assert timestep_subset(15, 13, "trailing").tolist() == [14, 13, 12, 11, 9, 8, 7, 6, 5, 4, 2, 1, 0]


def test_timestep_subset_matches_diffusers_ddim():
    diffusers = pytest.importorskip("diffusers")
    for spacing in SPACINGS:
        for T, n in ((1000, 50), (1000, 7), (1000, 999), (100, 30), (64, 64)):
            scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
            scheduler.set_timesteps(n)
            assert timestep_subset(T, n, spacing).tolist() == scheduler.timesteps.tolist(), (spacing, T, n)


@given(data=st.data(), kind=st.sampled_from(SCHEDULE_KINDS), spacing=st.sampled_from(SPACINGS))
def test_respaced_schedule_keeps_alpha_bar_at_the_visited_timesteps(data, kind, spacing):
    T = data.draw(st.integers(2, 1000), label="T")
    n = data.draw(st.integers(1, T), label="num_steps")
    s = make_schedule(kind, T)
    ts = timestep_subset(T, n, spacing)
    r = s.respace(ts)
    assert r.T == n
    # alpha_bar is rebuilt as cumprod(1 - beta) with beta = 1 - ratio: an absolute error of a few
    # ulp(1) per step (relative error ~1e-16 / alpha_bar, so absolute, not relative, tolerance).
    assert_close(r.alpha_bars, s.alpha_bars[np.sort(ts)], atol=1e-14, rtol=1e-12, name="respaced alpha_bar")
    assert np.all((r.betas > 0) & (r.betas < 1))


def test_alpha_bar_at_minus_one_is_one():
    s = make_schedule("linear", 10)
    assert_close(s.alpha_bar_at(np.array([-1, 0, 9])), [1.0, s.alpha_bars[0], s.alpha_bars[9]],
                 atol=0, rtol=0, name="alpha_bar_at")
    assert_close(Schedule.from_betas([0.1, 0.2]).alpha_bars, [0.9, 0.72], atol=0, rtol=1e-15, name="custom")


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error, match", [
    (lambda: make_schedule("linear", 0), ValueError, "T must be >= 1"),
    (lambda: make_schedule("linear", 10.0), TypeError, "T must be an int"),
    (lambda: make_schedule("linear", True), TypeError, "T must be an int"),
    (lambda: make_schedule("quadratic", 10), ValueError, "kind must be one of"),
    (lambda: make_schedule("linear", 10, s=0.1), TypeError, "unknown parameter"),
    (lambda: make_schedule("linear", 10, beta_start=float("nan")), ValueError, "beta_start must be a finite"),
    (lambda: make_schedule("linear", 10, beta_start=0.1, beta_end=0.01), ValueError, "beta_start <= beta_end"),
    (lambda: make_schedule("linear", 10, beta_end=1.0), ValueError, "beta_end < 1"),
    (lambda: make_schedule("cosine", 10, max_beta=1.0), ValueError, "max_beta"),
    (lambda: make_schedule("cosine", 10, s=-0.1), ValueError, "s must be >= 0"),
    (lambda: make_schedule("sigmoid", 10, tau=0.0), ValueError, "tau > 0"),
    (lambda: Schedule.from_betas([0.1, float("nan")]), ValueError, "finite"),
    (lambda: Schedule.from_betas([0.1, 1.0]), ValueError, r"betas\[1\]"),
    (lambda: Schedule.from_betas([0.0, 0.1]), ValueError, r"betas\[0\]"),
    (lambda: Schedule.from_betas([0.2, 0.1]), ValueError, "non-decreasing"),
    (lambda: Schedule.from_betas([[0.1, 0.2]]), ValueError, "1-D"),
    (lambda: Schedule.from_betas([1, 2]), TypeError, "floating point"),
    (lambda: timestep_subset(10, 0), ValueError, "num_steps must lie in"),
    (lambda: timestep_subset(10, 11), ValueError, "num_steps must lie in"),
    (lambda: timestep_subset(10, 2.0), TypeError, "num_steps must be an int"),
    (lambda: timestep_subset(10, 5, "uniform"), ValueError, "spacing must be one of"),
    (lambda: timestep_subset(10, 5, "leading", offset=2), ValueError, "offset=2"),
    (lambda: make_schedule("linear", 10).alpha_bar_at(10), ValueError, r"t must lie in \[-1, 9\]"),
    (lambda: make_schedule("linear", 10).alpha_bar_at(1.5), TypeError, "t must be integer"),
    (lambda: make_schedule("linear", 10).check_t([0, 10]), ValueError, r"\[0, 9\]"),
    (lambda: make_schedule("linear", 10).respace([3, 3]), ValueError, "without repeats"),
    (lambda: make_schedule("linear", 10).respace([0, 10]), ValueError, "timesteps must lie in"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_rescale_and_offset_are_checked():
    with pytest.raises(TypeError, match="rescale must be a bool"):
        make_schedule("linear", 500, rescale="no")
    with pytest.raises(ValueError, match="rescaled by 1000/T"):
        make_schedule("linear", 10, rescale=True)
    with pytest.raises(TypeError, match="offset must be an int"):
        timestep_subset(100, 10, "leading", offset=0.7)
    with pytest.raises(ValueError, match="offset applies to leading spacing only"):
        timestep_subset(100, 10, "trailing", offset=1)
    assert timestep_subset(100, 10, "leading", offset=1)[0] == 91


def test_sigmoid_schedule_matches_lucidrains():
    """lucidrains/denoising-diffusion-pytorch's sigmoid_beta_schedule, re-typed here from its
    source (start=-3, end=3, tau=1, clamp to [0, 0.999]). Verbatim, its v_start/v_end are float32
    tensors (torch.tensor of a Python float), which moves betas by ~1e-5 relative; the reference
    is float64 throughout, equal to the same formula with float64 endpoints to round-off."""
    torch = pytest.importorskip("torch")

    def lucidrains(timesteps, start=-3, end=3, tau=1, endpoint_dtype=torch.float64):
        steps = timesteps + 1
        t = torch.linspace(0, timesteps, steps, dtype=torch.float64) / timesteps
        v_start = torch.tensor(start / tau, dtype=endpoint_dtype).sigmoid()
        v_end = torch.tensor(end / tau, dtype=endpoint_dtype).sigmoid()
        alphas_cumprod = (-((t * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
        return torch.clip(betas, 0, 0.999)

    for T, kw in ((1000, {}), (37, dict(start=-2.0, end=4.0, tau=0.7))):
        got = make_schedule("sigmoid", T, **kw).betas
        np.testing.assert_allclose(got, lucidrains(T, **kw).numpy(), rtol=1e-9, atol=1e-15)
        verbatim = lucidrains(T, **kw, endpoint_dtype=torch.float32).numpy()
        np.testing.assert_allclose(got, verbatim, rtol=5e-5)
