"""ddpm.losses (Improved DDPM) against the reference in float64: normal_kl, the decoder, the per-t
terms, the three losses and every gradient, bits/dim through a UNet with a learned variance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm import losses
from helpers import assert_close

COS = reference.make_schedule("cosine", 40)
TOL = dict(atol=1e-13, rtol=1e-10)  # float64 on the same formulas: round-off only


def grid(rng, shape):
    return rng.integers(-20, 276, shape).clip(0, 255) / 127.5 - 1.0


def test_normal_kl_and_decoder_equal_the_reference():
    rng = np.random.default_rng(0)
    a = [rng.standard_normal((3, 5)) for _ in range(4)]
    assert_close(losses.normal_kl(*map(torch.from_numpy, a)), reference.normal_kl(*a), name="kl", **TOL)
    x = grid(rng, (4, 300))
    means = x + rng.standard_normal(x.shape) * rng.choice([0.01, 0.1, 1.0], x.shape)
    log_scales = np.log(rng.uniform(1e-3, 2.0, x.shape))
    got = losses.discretized_gaussian_log_likelihood(*map(torch.from_numpy, (x, means, log_scales)))
    assert_close(got, reference.discretized_gaussian_log_likelihood(x, means, log_scales), name="log P", **TOL)
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
        losses.discretized_gaussian_log_likelihood(torch.full((1,), 1.5), torch.zeros(1), torch.zeros(1))


@pytest.mark.parametrize("variance", ["learned", "fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vlb_terms_and_their_gradient_equal_the_reference(variance, prediction):
    rng = np.random.default_rng(1)
    x0 = grid(rng, (5, 2, 3, 3))
    t = np.array([0, 1, 7, 20, 39])
    x_t = reference.q_sample(x0, t, rng.standard_normal(x0.shape), COS)
    out = rng.standard_normal((5, 4 if variance == "learned" else 2, 3, 3)) * 0.5
    w = rng.standard_normal(5)
    terms, cache = reference.vlb_terms(out, x0, x_t, t, COS, prediction, variance)
    tables = losses.VariationalTables(COS, prediction, dtype=torch.float64)
    out_t = torch.from_numpy(out).requires_grad_()
    got = losses.vlb_terms(out_t, torch.from_numpy(x0), torch.from_numpy(x_t), torch.from_numpy(t), tables, variance)
    assert_close(got.detach(), terms, name="L_t", **TOL)
    (got * torch.from_numpy(w)).sum().backward()
    assert_close(out_t.grad, reference.vlb_terms_backward(w, cache), name="d output", **TOL)


@pytest.mark.parametrize("loss, variance", [("hybrid", "learned"), ("vlb", "learned"), ("vlb", "fixed_small"),
                                            ("simple", "fixed_small")])
def test_losses_and_gradients_equal_the_reference(loss, variance):
    rng = np.random.default_rng(2)
    x0 = grid(rng, (6, 1, 4, 4))
    t = np.array([0, 0, 3, 11, 25, 39])
    eps = rng.standard_normal(x0.shape)
    x_t = reference.q_sample(x0, t, eps, COS)
    out = rng.standard_normal((6, 2 if variance == "learned" else 1, 4, 4)) * 0.5
    weights = rng.uniform(0.2, 3.0, 6) if loss == "vlb" else None
    value, terms, cache = reference.variational_loss(out, x0, x_t, eps, t, COS, loss=loss, variance=variance,
                                                     weights=weights)
    tables = losses.VariationalTables(COS, dtype=torch.float64)
    out_t = torch.from_numpy(out).requires_grad_()
    got, got_terms = losses.variational_loss(
        out_t, torch.from_numpy(x0), torch.from_numpy(x_t), torch.from_numpy(eps), torch.from_numpy(t), tables,
        loss=loss, variance=variance, weights=None if weights is None else torch.from_numpy(weights))
    assert_close(got.detach(), np.float64(value), name="loss", **TOL)
    assert_close(got_terms, terms, name="terms", **TOL)
    got.backward()
    assert_close(out_t.grad, reference.variational_loss_backward(cache), name="d output", **TOL)


def _learned_unet():
    config = reference.UNetConfig.tiny(in_channels=1, out_channels=2)
    ref = reference.UNet(config, seed=3, zero_init=False)
    model = ddpm.UNet(config).double()
    model.load_numpy_params(ref.params)
    return config, ref, model


def test_hybrid_loss_through_the_unet_gives_every_parameter_gradient_of_the_reference():
    config, ref, model = _learned_unet()
    rng = np.random.default_rng(4)
    x0 = grid(rng, (3, 1, 4, 4))
    t = np.array([0, 9, 33])
    eps = rng.standard_normal(x0.shape)
    x_t = reference.q_sample(x0, t, eps, COS)
    out = ref.forward(x_t, t)
    value, _, cache = reference.variational_loss(out, x0, x_t, eps, t, COS, loss="hybrid", variance="learned")
    ref.backward(reference.variational_loss_backward(cache))
    tables = losses.VariationalTables(COS, dtype=torch.float64)
    got, _ = losses.variational_loss(model(torch.from_numpy(x_t), torch.from_numpy(t), None), torch.from_numpy(x0),
                                     torch.from_numpy(x_t), torch.from_numpy(eps), torch.from_numpy(t), tables,
                                     loss="hybrid", variance="learned")
    got.backward()
    assert_close(got.detach(), np.float64(value), name="loss", **TOL)
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert set(grads) == set(ref.grads)
    for name, g in grads.items():
        scale = max(np.abs(ref.grads[name]).max(), 1e-300)
        assert np.abs(g.numpy() - ref.grads[name]).max() <= 1e-10 * scale + 1e-15, name


def test_bits_per_dim_through_the_unet_equals_the_reference():
    config, ref, model = _learned_unet()
    S = reference.make_schedule("cosine", 12)
    x0 = grid(np.random.default_rng(5), (2, 1, 4, 4))
    total, terms = reference.bits_per_dim(ref, x0, S, seed=11)
    got_total, got_terms = losses.bits_per_dim(model, torch.from_numpy(x0), S, seed=11)
    assert got_terms.shape == (2, 13)
    assert_close(got_terms, terms, name="per-t terms", **TOL)
    assert_close(got_total, total, name="bits/dim", **TOL)
    with pytest.raises(ValueError, match="x0 must lie on the 8-bit grid"):
        losses.bits_per_dim(model, torch.from_numpy(x0) * 0.999, S)
    with pytest.raises(ValueError, match="x0 must lie in"):
        losses.bits_per_dim(model, torch.from_numpy(x0) * 2, S)
    with pytest.raises(ValueError, match="a variance half: use variance='learned'"):
        losses.bits_per_dim(model, torch.from_numpy(x0), S, variance="fixed_small")
    plain = ddpm.UNet(reference.UNetConfig.tiny()).double()
    with pytest.raises(ValueError, match="no variance half"):
        losses.bits_per_dim(plain, torch.from_numpy(x0), S, variance="learned")
