"""The score view in the reference: VE levels, DSM loss and its backward, the score model's
backward through the UNet, the Langevin rule and the plans, and what the samplers sample.

Finite differences: central, eps 1e-6, float64. The DSM loss is quadratic in the output, so its
central difference is exact up to round-off (bound 1e-8); the ScoreModel's check goes through
the whole tiny UNet (bound atol 1e-8 + rtol 1e-6, as tests/test_unet_reference.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from tests.helpers import check_gradient

VE = reference.ve_schedule(10.0, 0.01, 25)
VP = reference.make_schedule("linear", 200)
VE200 = reference.ve_schedule(10.0, 0.01, 200)


def test_geometric_levels_and_indexing():
    s = reference.ve_schedule(50.0, 0.01, 10)
    ratios = s.sigmas[1:] / s.sigmas[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)  # geometric
    assert s.sigma_min == pytest.approx(0.01) and s.sigma_max == pytest.approx(50.0)
    assert np.all(np.diff(s.sigmas) > 0)  # ascending in t: t = 0 the least noisy (contract 1)
    paper = reference.geometric_sigmas(50.0, 0.01, 10)
    np.testing.assert_array_equal(reference.VESchedule.from_sigmas(paper).sigmas, paper[::-1])


def test_dsm_loss_is_the_eps_loss_and_its_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    out, z = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    sigma = np.array([0.01, 1.0, 7.0])
    loss, cache = reference.dsm_loss(out, z, sigma)
    # lambda = sigma^2: sigma^2 (-out/sigma + z/sigma)^2 = (out - z)^2 (Song & Ermon Eq. 6 x 2/D)
    assert loss == pytest.approx(np.mean((out - z) ** 2), rel=1e-13)
    grad = reference.dsm_loss_backward(cache)
    check_gradient(lambda: reference.dsm_loss(out, z, sigma)[0], out, grad, rtol=1e-8, name="dsm d out")


def test_score_model_backward_through_the_unet_matches_finite_differences():
    config = reference.UNetConfig.tiny()
    net = reference.UNet(config)
    rng = np.random.default_rng(1)
    for k in net.params:
        net.params[k][...] = rng.standard_normal(net.params[k].shape) * 0.2
    model = reference.ScoreModel(net, VE)
    x = rng.standard_normal((2, config.in_channels, config.image_size, config.image_size))
    t = np.array([0, 24])
    z = rng.standard_normal(x.shape)

    def loss():
        score = model.forward(x, t)
        return float(np.sum(score * z))

    score = model.forward(x, t)
    np.testing.assert_allclose(score, -net.forward(x, t) / VE.sigmas[t][:, None, None, None], rtol=1e-14)
    dx = model.backward(z)
    picks = [int(i) for i in np.argsort(-np.abs(dx).reshape(-1))[:3]] + [5, 17]
    check_gradient(loss, x, dx, rtol=1e-6, name="ScoreModel dx", indices=picks)
    name = "conv_in.weight"
    grad = model.grads[name].copy()
    check_gradient(loss, net.params[name], grad, rtol=1e-6, name=name,
                   indices=[int(np.argmax(np.abs(grad))), 3])


def test_langevin_snr_rows_follow_song_et_al():
    rng = np.random.default_rng(2)
    out, z = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    row = np.array([1.0, -0.5, 0.0, 0.0, 0.16, 0.9, 0.0])
    rows = reference.langevin_snr_coefficients(row, out, z)
    g = -0.5 * out
    step = 2 * 0.9 * (0.16 * np.linalg.norm(z, axis=1) / np.linalg.norm(g, axis=1)) ** 2
    np.testing.assert_allclose(rows[:, 2], step, rtol=1e-14)
    np.testing.assert_allclose(rows[:, 3], np.sqrt(2 * step), rtol=1e-14)
    batch = reference.langevin_snr_coefficients(np.concatenate([row[:6], [1.0]]), out, z)  # batch means
    mean_step = 2 * 0.9 * (0.16 * np.linalg.norm(z, axis=1).mean() / np.linalg.norm(g, axis=1).mean()) ** 2
    np.testing.assert_allclose(batch[:, 2], mean_step, rtol=1e-14)


def _gaussian_model(process, schedule, s):
    """The exact noise prediction of data N(0, s^2): VE out = sigma x / (s^2 + sigma^2);
    VP out = sqrt(1 - ab) x / (ab s^2 + 1 - ab) (so that score = -x / Var[x_t])."""
    def model(x, t):
        if process == "ve":
            v = schedule.sigmas[t] ** 2
            return (np.sqrt(v) / (s * s + v))[:, None] * x
        ab = schedule.alpha_bars[t]
        return (np.sqrt(1 - ab) / (ab * s * s + 1 - ab))[:, None] * x
    return model


@pytest.mark.parametrize("process", ["vp", "ve"])
@pytest.mark.parametrize("sampler, options, num_steps", [
    ("annealed_langevin", {"step_size": 2e-4, "steps_per_level": 50}, 10),
    ("pc", {"snr": 0.05, "corrector_steps": 1}, 200),
    ("langevin", {"step_size": 0.02, "level": 0}, 400),
])
def test_samplers_draw_the_right_variance_from_exact_scores(process, sampler, options, num_steps):
    """Data N(0, 0.5^2 I) in 64 dims (the regime of images: the snr rule's per-sample norms
    concentrate), 50 samples: the sample variance within 10% of 0.25 (standard error of a
    variance from 3200 numbers ~2.5%). Plain Langevin at the least noisy VE level starts from
    N(0, sigma_max^2): 400 steps of 0.02 mix it (relaxation ~ s^2 / eps). Both PC parts are
    first-order biased upwards on a Gaussian (the predictor by ~(v - v')^2 / (s^2 + v) per level,
    the corrector's unadjusted Langevin by a factor 1 / (1 - h / 2V) with h = 2 snr^2 V): 200
    levels and snr 0.05 keep the sum under 5% (snr 0.16 gives +11% here, measured)."""
    schedule = VE200 if process == "ve" else VP
    x = reference.sample_score(_gaussian_model(process, schedule, 0.5), (50, 64), schedule, sampler, 0,
                               num_steps=num_steps, **options)
    assert abs(np.var(x) - 0.25) < 0.025, f"variance {np.var(x):.4f}"
    assert abs(np.mean(x)) < 0.05
