"""UNetConfig.head_channels: a fixed head width, so each level has its own head count.

diffusers' UNet2DModel gives every attention block heads = channels // attention_head_dim; its
default config (attention_head_dim=8 on 224..896 channels) has 28, 56, 84 and 112 heads. Here: the
config's validation and serialisation, and the reference UNet's hand-written backward against
central finite differences on such a config (reference vs torch is in test_unet_torch.py,
vs diffusers in test_diffusers_config_inference.py).

Finite-difference bound (as tests/test_unet_reference.py states it): eps = 1e-6, loss =
sum(g * out), one random entry of every attention tensor (the head split is all that changes;
test_unet_reference.py checks the rest of the backward) and 8 of x, whose gradient runs through
every block; per entry
|analytic - numerical| <= 1e-8 + 1e-6 |numerical| (1e-8 ~ 5x the estimate's round-off
u |loss| / eps ~ 1e-9, and covers gradients that are exactly zero, e.g. to_k.bias).
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from reference import UNet, UNetConfig, count_parameters
from tests.helpers import assert_close, numerical_gradient, rel_error

# 4- and 16-channel levels, both with attention (2 and 8 heads of 2 channels), the mid block
# too (8 heads), classes; 4x4 images keep the finite differences fast
HEADS_PER_LEVEL = UNetConfig(image_size=4, in_channels=1, out_channels=2, ch=4, ch_mult=(1, 4),
                             num_res_blocks=1, attn_resolutions=(4, 2), dropout=0.0, groups=2,
                             head_channels=2, num_classes=2)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Every matrix here is small: BLAS threads only add synchronisation."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def test_heads_follow_the_channels_of_each_level():
    config = HEADS_PER_LEVEL
    assert [config.heads(c) for c in config.block_channels] == [2, 8]
    assert config.attention_channels == (4, 16)
    assert UNetConfig.tiny(num_heads=2).heads(8) == 2  # a fixed count: the same at every level


def test_cifar10_preset_and_old_config_dicts_are_unchanged():
    cifar = UNetConfig.ddpm_cifar10()
    assert cifar.head_channels is None and count_parameters(cifar) == 35_746_307
    old = cifar.to_dict()
    del old["head_channels"]  # a dict saved before the field existed (e.g. in a checkpoint)
    assert UNetConfig.from_dict(old) == cifar


@pytest.mark.parametrize("change, match", [
    ({"head_channels": 0}, "head_channels must be None or a positive int, got 0"),
    ({"head_channels": True}, "head_channels must be None or a positive int, got True"),
    ({"head_channels": 3}, "head_channels=3 must divide the channels 4"),
    ({"head_channels": 2, "num_heads": 2}, "not both: got num_heads=2, head_channels=2"),
])
def test_bad_head_channels_name_the_field_and_value(change, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**{**HEADS_PER_LEVEL.to_dict(), **change})


def test_heads_only_need_to_divide_attention_channels():
    # attention on 8 channels only (level 1 and the mid block): level 0's 4 channels need not split
    base = dict(image_size=4, in_channels=1, out_channels=1, ch=4, ch_mult=(1, 2), groups=2,
                num_res_blocks=1, attn_resolutions=(2,))
    assert UNetConfig(**base, num_heads=8).heads(8) == 8
    assert UNetConfig(**base, head_channels=8).heads(8) == 1
    with pytest.raises(ValueError, match="attention channels 8 are not divisible by num_heads=3"):
        UNetConfig(**base, num_heads=3)


def test_unet_backward_with_heads_per_level_matches_finite_differences():
    config = HEADS_PER_LEVEL
    net = UNet(config, seed=1, zero_init=False)
    rng = np.random.default_rng(101)
    for name, value in net.params.items():  # GroupNorm affine away from 1 and 0
        if "norm" in name:
            value += 0.3 * rng.standard_normal(value.shape)
    x = rng.standard_normal((2, config.in_channels, config.image_size, config.image_size))
    t, y = np.array([3, 700]), np.array([1, config.num_classes])
    g = rng.standard_normal(net.forward(x, t, y).shape)
    dx = net.backward(g)
    grads = dict(net.grads)

    def loss():
        return float(np.sum(g * net.forward(x, t, y)))

    analytic_all, numerical_all = [], []
    attention = [(name, value) for name, value in net.params.items() if ".attentions." in name]
    for name, value in [*attention, ("x", x)]:
        indices = rng.choice(value.size, 8 if name == "x" else 1, replace=False)
        numerical = numerical_gradient(loss, value, 1e-6, indices).reshape(-1)[indices]
        analytic = (dx if name == "x" else grads[name]).reshape(-1)[indices]
        assert_close(analytic, numerical, atol=1e-8, rtol=1e-6, name=f"d{name}")
        analytic_all.append(analytic)
        numerical_all.append(numerical)
    assert rel_error(np.concatenate(analytic_all), np.concatenate(numerical_all)) <= 1e-7
