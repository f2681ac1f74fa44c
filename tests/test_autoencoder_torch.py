"""ddpm.AutoencoderKL (torch) against reference.AutoencoderKL in float64, and diffusers interop.

Same weights by name; the training loss through the reparameterised sample (reference noise) is
compared: the loss, the reconstruction, mean and logvar, the input gradient and EVERY parameter
gradient, relative error <= 1e-10 per tensor (max |a - b| / max |b|; both compute the same float64
operations in another order, ~1e-15 in practice). The key-bias gradients are exactly 0 in exact
arithmetic (softmax ignores a per-row constant), so they are compared absolutely (<= 1e-12).
diffusers: identical outputs (float64 <= 1e-12) from a state dict, a save_pretrained folder and our
export, with scaling_factor and shift_factor carried both ways.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import kernels
import reference
from ddpm.autoencoder import autoencoder_loss, posterior_noise
from ddpm.autoencoder_io import autoencoder_diffusers_config
from tests.helpers import rel_error

REL_TOL = 1e-10
CONFIGS = {
    "tiny": reference.AutoencoderConfig.tiny(),
    "three_levels": reference.AutoencoderConfig(image_size=8, in_channels=2, out_channels=2, latent_channels=3,
                                                block_out_channels=(4, 4, 6), layers_per_block=2, groups=2,
                                                use_quant_conv=False, shift_factor=0.25, scaling_factor=0.7),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_equals_reference(name):
    cfg = CONFIGS[name]
    ref = reference.AutoencoderKL(cfg, seed=5)
    model = ddpm.AutoencoderKL(cfg).double()
    model.load_numpy_params(ref.params)
    assert [n for n, _ in model.named_parameters()] == list(reference.autoencoder_parameter_shapes(cfg))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, cfg.in_channels, cfg.image_size, cfg.image_size))
    noise = rng.standard_normal((3,) + cfg.latent_shape)

    x_hat = ref.forward(x, noise)
    loss, rec, kl, cache = reference.autoencoder_loss(x_hat, x, ref.mean, ref.logvar, 0.3)
    dx = ref.backward(*reference.autoencoder_loss_backward(cache))

    xt = torch.from_numpy(x).requires_grad_()
    x_hat_t, mean_t, logvar_t = model(xt, torch.from_numpy(noise))
    loss_t, rec_t, kl_t = autoencoder_loss(x_hat_t, xt.detach(), mean_t, logvar_t, 0.3)
    loss_t.backward()
    for a, b, what in ((x_hat_t, x_hat, "x_hat"), (mean_t, ref.mean, "mean"), (logvar_t, ref.logvar, "logvar"),
                       (xt.grad, dx, "dx")):
        assert rel_error(a.detach(), b) <= REL_TOL, what
    assert abs(loss_t.item() - loss) <= REL_TOL * abs(loss) and abs(kl_t.item() - kl) <= REL_TOL * abs(kl)
    for pname, p in model.named_parameters():
        if pname.endswith("to_k.bias"):
            assert p.grad.abs().max() <= 1e-12 and np.abs(ref.grads[pname]).max() <= 1e-12
        else:
            assert rel_error(p.grad, ref.grads[pname]) <= REL_TOL, pname


def test_group_norm_silu_runs_through_the_kernels():
    model = ddpm.AutoencoderKL(CONFIGS["tiny"])
    fused = [m for m in model.modules() if isinstance(m, kernels.GroupNormSiLU)]
    assert fused and not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    # every ResBlock norm, the attention norms (activation off) and both conv_norm_out
    assert sum(not m.activation for m in fused) == 2


def test_posterior_noise_is_the_reference_stream():
    got = posterior_noise(7, torch.arange(3), 11, (2, 2, 2))
    want = reference.normal(7, np.arange(3), reference.autoencoder_stream(11), (2, 2, 2))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def _diffusers_model(cfg, seed=0):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in autoencoder_diffusers_config(cfg).items() if not k.startswith("_")}
    return diffusers.AutoencoderKL(**kwargs).double().eval()


def _same_outputs(ours, theirs, cfg, atol=1e-12):
    x = torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size, dtype=torch.float64) * 2 - 1
    z = torch.randn((2,) + cfg.latent_shape, dtype=torch.float64)
    with torch.no_grad():
        dist = theirs.encode(x).latent_dist
        mean, logvar = ours.encode(x)
        torch.testing.assert_close(mean, dist.mean, rtol=0, atol=atol)
        torch.testing.assert_close(logvar, dist.logvar, rtol=0, atol=atol)
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, rtol=0, atol=atol)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_diffusers_state_dict_and_folder(name, tmp_path):
    cfg = CONFIGS[name]
    theirs = _diffusers_model(cfg)
    ours = ddpm.AutoencoderKL.from_diffusers(theirs.state_dict(), autoencoder_diffusers_config(cfg))
    assert ours.config == cfg and ours.dtype == torch.float64
    _same_outputs(ours, theirs, cfg)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = ddpm.AutoencoderKL.from_diffusers(tmp_path / "theirs")
    assert loaded.config.scaling_factor == cfg.scaling_factor and loaded.config.shift_factor == cfg.shift_factor
    _same_outputs(loaded, theirs, cfg)


def test_export_loads_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = CONFIGS["three_levels"]
    ours = ddpm.AutoencoderKL(cfg).double()
    ours.save_diffusers(tmp_path / "ours")
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours").double().eval()
    assert theirs.config.scaling_factor == 0.7 and theirs.config.shift_factor == 0.25
    _same_outputs(ours, theirs, cfg)
    fresh = _diffusers_model(cfg, seed=1)
    fresh.load_state_dict(ours.to_diffusers())  # the state dict alone loads by name, strictly
    _same_outputs(ours, fresh, cfg)


def test_from_diffusers_bad_input(tmp_path):
    cfg = CONFIGS["tiny"]
    state = _diffusers_model(cfg).state_dict()
    with pytest.raises(ValueError, match="carries no config"):
        ddpm.AutoencoderKL.from_diffusers(state)
    bad = dict(state)
    bad["decoder.conv_out.bias"] = torch.full_like(bad["decoder.conv_out.bias"], float("nan"))
    with pytest.raises(ValueError, match="decoder.conv_out.bias contains NaN"):
        ddpm.AutoencoderKL.from_diffusers(bad, autoencoder_diffusers_config(cfg))
    with pytest.raises(ValueError, match="latent_channels"):
        ddpm.AutoencoderKL.from_diffusers(state, {**autoencoder_diffusers_config(cfg), "latent_channels": 8})


def test_bad_inputs_name_the_argument():
    cfg = CONFIGS["tiny"]
    model = ddpm.AutoencoderKL(cfg)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 4, 4\)"):
        model.encode(torch.zeros(1, 1, 8, 8))
    z = torch.zeros((1,) + cfg.latent_shape)
    z[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="z \\(the latent\\) holds 1 non-finite"):
        model.decode(z)
