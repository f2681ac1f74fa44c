"""reference.AutoencoderKL: hand-written backward against central differences, float64.

The scalar checked is the training loss itself, reconstruction + kl_weight * KL through the
reparameterised sample, so every term's backward (loss, posterior sample with its clamp,
decoder, encoder) is on the path. Central differences with eps 1e-6 have an error
O(eps^2 f''') + O(u |f| / eps) ~ 1e-10 relative here; the bound is 1e-6 relative to the largest
finite-difference entry of each tensor (tests.helpers.check_gradient), a few entries per tensor.
Also: the parameter names are diffusers' (order included), outputs equal diffusers' in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from reference.autoencoder import posterior_sample, posterior_sample_backward
from tests.helpers import check_gradient, numerical_gradient

CONFIGS = {
    "tiny": reference.AutoencoderConfig.tiny(),
    # three levels, two layers per block, no quant convs, no mid attention, 3 channels
    "plain": reference.AutoencoderConfig(image_size=8, in_channels=3, out_channels=3, latent_channels=3,
                                         block_out_channels=(4, 4, 6), layers_per_block=2, groups=2,
                                         mid_block_add_attention=False, use_quant_conv=False,
                                         use_post_quant_conv=False),
}


def _loss_fn(model, x, noise, kl_weight):
    def f():
        x_hat = model.forward(x, noise)
        return reference.autoencoder_loss(x_hat, x, model.mean, model.logvar, kl_weight)[0]
    return f


@pytest.mark.parametrize("name", list(CONFIGS))
def test_backward_matches_finite_differences(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(1)
    model = reference.AutoencoderKL(cfg, seed=2)
    x = rng.uniform(-1, 1, (2, cfg.in_channels, cfg.image_size, cfg.image_size))
    noise = rng.standard_normal((2,) + cfg.latent_shape)
    f = _loss_fn(model, x, noise, kl_weight=0.5)
    x_hat = model.forward(x, noise)
    _, _, _, cache = reference.autoencoder_loss(x_hat, x, model.mean, model.logvar, 0.5)
    model.backward(*reference.autoencoder_loss_backward(cache))
    grads = {k: v.copy() for k, v in model.grads.items()}
    for pname, p in model.params.items():
        idx = rng.choice(p.size, size=min(2, p.size), replace=False)
        if pname.endswith("to_k.bias"):
            # softmax is invariant to a key bias (it adds q.b_k to a whole row of scores): the
            # gradient is exactly 0, so a relative error is meaningless; both must be ~0
            assert np.max(np.abs(grads[pname])) < 1e-12
            assert np.nanmax(np.abs(numerical_gradient(f, p, 1e-6, idx))) < 1e-8
            continue
        check_gradient(f, p, grads[pname], rtol=1e-6, name=pname, indices=idx)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_backward_input_gradient(name):
    """dL/dx through encoder and decoder, with a fixed target (the loss's own x-dependence aside)."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(3)
    model = reference.AutoencoderKL(cfg, seed=4)
    x = rng.uniform(-1, 1, (2, cfg.in_channels, cfg.image_size, cfg.image_size))
    target = rng.uniform(-1, 1, (2, cfg.out_channels, cfg.image_size, cfg.image_size))
    noise = rng.standard_normal((2,) + cfg.latent_shape)

    def f():
        x_hat = model.forward(x, noise)
        return reference.autoencoder_loss(x_hat, target, model.mean, model.logvar, 0.25)[0]

    x_hat = model.forward(x, noise)
    cache = reference.autoencoder_loss(x_hat, target, model.mean, model.logvar, 0.25)[3]
    dx = model.backward(*reference.autoencoder_loss_backward(cache))
    check_gradient(f, x, dx, rtol=1e-6, name="dx", indices=rng.choice(x.size, 12, replace=False))


def test_loss_backward_and_kl_closed_form():
    rng = np.random.default_rng(5)
    x_hat, x = rng.standard_normal((3, 1, 4, 4)), rng.standard_normal((3, 1, 4, 4))
    mean, logvar = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 2, 2, 2))
    loss, rec, kl, cache = reference.autoencoder_loss(x_hat, x, mean, logvar, 0.7)
    assert np.isclose(rec, np.mean((x_hat - x) ** 2))
    assert np.isclose(kl, 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar) / 3)  # diffusers' kl()
    dx_hat, dmean, dlogvar = reference.autoencoder_loss_backward(cache)
    for arr, grad, name in ((x_hat, dx_hat, "dx_hat"), (mean, dmean, "dmean"), (logvar, dlogvar, "dlogvar")):
        check_gradient(lambda: reference.autoencoder_loss(x_hat, x, mean, logvar, 0.7)[0], arr, grad,
                       rtol=1e-7, name=name)


def test_posterior_sample_clamp_and_gradient():
    rng = np.random.default_rng(6)
    moments = rng.standard_normal((2, 4, 2, 2))
    moments[0, 2, 0, 0], moments[1, 3, 1, 1] = 25.0, -35.0          # outside [-30, 20]
    noise = rng.standard_normal((2, 2, 2, 2))
    mean, logvar, z, cache = posterior_sample(moments, noise)
    assert logvar[0, 0, 0, 0] == 20.0 and logvar[1, 1, 1, 1] == -30.0
    np.testing.assert_allclose(z, mean + np.exp(logvar / 2) * noise, rtol=1e-15)
    g = rng.standard_normal(z.shape)
    dmoments = posterior_sample_backward(g, None, None, cache)
    assert dmoments[0, 2, 0, 0] == 0.0 and dmoments[1, 3, 1, 1] == 0.0  # the clamp is flat there
    check_gradient(lambda: float(np.sum(g * posterior_sample(moments, noise)[2])), moments, dmoments,
                   rtol=1e-7, name="dmoments")


def test_names_and_outputs_equal_diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from ddpm.autoencoder_io import autoencoder_diffusers_config

    for cfg in CONFIGS.values():
        kwargs = {k: v for k, v in autoencoder_diffusers_config(cfg).items() if not k.startswith("_")}
        theirs = diffusers.AutoencoderKL(**kwargs).double()
        state = theirs.state_dict()
        shapes = reference.autoencoder_parameter_shapes(cfg)
        assert list(state) == list(shapes)
        assert {k: tuple(v.shape) for k, v in state.items()} == dict(shapes)
        ours = reference.AutoencoderKL(cfg, {k: v.numpy() for k, v in state.items()})
        x = np.random.default_rng(7).uniform(-1, 1, (2, cfg.in_channels, cfg.image_size, cfg.image_size))
        with torch.no_grad():
            dist = theirs.encode(torch.from_numpy(x)).latent_dist
            mean, logvar = ours.encode(x)
            np.testing.assert_allclose(mean, dist.mean.numpy(), rtol=0, atol=1e-12)
            np.testing.assert_allclose(logvar, dist.logvar.numpy(), rtol=0, atol=1e-12)
            z = np.random.default_rng(8).standard_normal((2,) + cfg.latent_shape)
            np.testing.assert_allclose(ours.decode(z), theirs.decode(torch.from_numpy(z)).sample.numpy(),
                                       rtol=0, atol=1e-12)


def test_bad_input_names_it():
    model = reference.AutoencoderKL(CONFIGS["tiny"])
    with pytest.raises(ValueError, match="x must have shape"):
        model.encode(np.zeros((1, 1, 8, 8)))
    z = np.zeros((1,) + CONFIGS["tiny"].latent_shape)
    z[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="z"):
        model.decode(z)
    with pytest.raises(ValueError, match="latents hold"):
        reference.latent_scaling_factor(np.full((2, 2, 2, 2), np.inf))


def test_scaling_factor_is_inverse_std_and_round_trips():
    z = np.random.default_rng(9).normal(0.3, 2.5, (64, 4, 3, 3))
    s = reference.latent_scaling_factor(z, shift_factor=0.3)
    assert np.isclose(np.std(reference.scale_latents(z, s, 0.3)), 1.0)
    np.testing.assert_allclose(reference.unscale_latents(reference.scale_latents(z, s, 0.3), s, 0.3), z, rtol=1e-14)
