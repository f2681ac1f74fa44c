"""reference.UNet: parameter count, full backward vs finite differences, diffusers parity, bad inputs.

Finite differences (central, eps = 1e-6), loss = sum(g * out), on entries chosen where the
ANALYTIC gradient is not zero: per parameter tensor its largest |gradient| entry and 2 random
entries among those with |gradient| >= 1e-3 of the tensor's largest (a bug that zeroes or
mis-scales a gradient cannot hide in entries that are zero anyway: unused class rows, 1x1
levels), and 8 entries of the input x. Tensors whose whole gradient is zero in exact arithmetic
(to_k.bias: softmax ignores a shift shared by all keys) hold only round-off (< 1e-12 of the
largest gradient); they get 2 random entries. Both configs have no 1x1 level, one is
class-conditional with dropout. Bound, per entry: |analytic - numerical| <= 1e-8 + 1e-6
|numerical|, where 1e-8 is ~5x the round-off of the estimate (u |loss| / eps ~ 1e-9: measured
max abs error 1.6e-9 / 3.3e-9) and covers the zero gradients; and over all sampled entries
max|a - n| / max|n| <= 1e-7 (measured ~7e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from reference import UNet, UNetConfig, count_parameters, parameter_shapes
from reference.layers import (
    embedding,
    embedding_backward,
    linear,
    linear_backward,
    silu,
    silu_backward,
    timestep_embedding,
)
from reference.unet import (
    dropout,
    dropout_backward,
    resnet_block,
    resnet_block_backward,
    time_embedding_mlp,
    time_embedding_mlp_backward,
)
from tests.helpers import assert_close, check_gradient, numerical_gradient, rel_error

@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Every matrix here is small: BLAS threads only add synchronisation (10x on a loaded machine)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


FD_ENTRIES_PER_TENSOR = 2
FD_ENTRIES_OF_X = 8

# The two gradient-check configs: every block type, both downsample paddings, heads, classes, dropout.
FD_CONFIGS = {
    "tiny": UNetConfig.tiny(),
    # 8x8 over 3 levels: 8, 4, 2 (no 1x1 level, where attention and GroupNorm gradients vanish)
    "tiny_conditional_dropout_3_levels": UNetConfig.tiny(
        num_classes=3, dropout=0.3, ch_mult=(1, 2, 2), image_size=8, attn_resolutions=(4,),
        num_heads=2, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0),
}


def _random_unet(config, seed=1):
    """zero_init off and GroupNorm affine perturbed, so no gradient vanishes by construction."""
    net = UNet(config, seed=seed, zero_init=False)
    rng = np.random.default_rng(seed + 100)
    for name, value in net.params.items():
        if "norm" in name:
            value += 0.3 * rng.standard_normal(value.shape)
    return net


def _inputs(config, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, config.in_channels, config.image_size, config.image_size))
    t = rng.integers(0, 1000, n)
    y = None if config.num_classes is None else rng.integers(0, config.num_classes + 1, n)
    return x, t, y, rng


# ----------------------------------------------------------------------------- building blocks
# Same FD bound as the layer tests: eps 1e-6, loss = sum(g * out), rtol 1e-7 of max |numerical|.

def test_linear_silu_and_class_embedding_backward_match_finite_differences():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    out, cache = linear(x, w, b)
    g = rng.standard_normal(out.shape)
    dx, dw, db = linear_backward(g, cache)
    for name, arr, grad in [("dx", x, dx), ("dweight", w, dw), ("dbias", b, db)]:
        check_gradient(lambda: float(np.sum(g * linear(x, w, b)[0])), arr, grad, rtol=1e-7, name=name)

    z = rng.standard_normal((2, 3, 1, 1)) * 4
    out, cache = silu(z)
    g = rng.standard_normal(out.shape)
    check_gradient(lambda: float(np.sum(g * silu(z)[0])), z, silu_backward(g, cache), rtol=1e-7, name="dsilu")

    table = rng.standard_normal((4, 6))                         # 3 classes + the null row 3
    ids = np.array([3, 0, 0, 2])                                # repeated ids sum their rows
    out, cache = embedding(ids, table)
    g = rng.standard_normal(out.shape)
    check_gradient(lambda: float(np.sum(g * embedding(ids, table)[0])), table,
                   embedding_backward(g, cache), rtol=1e-7, name="dtable")


def test_time_embedding_mlp_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    t_emb = timestep_embedding(np.array([0, 7, 999]), 6, freq_shift=1)
    params = {"linear_1.weight": rng.standard_normal((24, 6)), "linear_1.bias": rng.standard_normal(24),
              "linear_2.weight": rng.standard_normal((24, 24)) / 5, "linear_2.bias": rng.standard_normal(24)}
    temb, cache = time_embedding_mlp(t_emb, params)
    g = rng.standard_normal(temb.shape)
    dt_emb, grads = time_embedding_mlp_backward(g, cache)

    def loss():
        return float(np.sum(g * time_embedding_mlp(t_emb, params)[0]))

    check_gradient(loss, t_emb, dt_emb, rtol=1e-7, name="dt_emb")
    for name in params:
        check_gradient(loss, params[name], grads[name], rtol=1e-7, name=f"d{name}")


# name: (C_in, C_out, H, W, groups, dropout p) -- shortcut conv when C_in != C_out
RESNET_CASES = {
    "shortcut_odd_hw": (4, 6, 3, 5, 2, 0.0),
    "identity_groups_1": (3, 3, 2, 3, 1, 0.0),
    "identity_groups_eq_C_dropout": (4, 4, 3, 2, 4, 0.4),
    "shortcut_hw_1": (2, 4, 1, 1, 1, 0.0),
}


@pytest.mark.parametrize("case", list(RESNET_CASES))
def test_resnet_block_backward_matches_finite_differences(case):
    c_in, c_out, h, w, groups, p = RESNET_CASES[case]
    rng = np.random.default_rng(len(case))
    temb_dim = 5
    shapes = {"norm1.weight": (c_in,), "norm1.bias": (c_in,), "conv1.weight": (c_out, c_in, 3, 3),
              "conv1.bias": (c_out,), "time_emb_proj.weight": (c_out, temb_dim),
              "time_emb_proj.bias": (c_out,), "norm2.weight": (c_out,), "norm2.bias": (c_out,),
              "conv2.weight": (c_out, c_out, 3, 3), "conv2.bias": (c_out,)}
    if c_in != c_out:
        shapes.update({"conv_shortcut.weight": (c_out, c_in, 1, 1), "conv_shortcut.bias": (c_out,)})
    params = {name: rng.standard_normal(shape) * (0.5 if len(shape) > 1 else 1.0) for name, shape in shapes.items()}
    x = rng.standard_normal((2, c_in, h, w))
    temb_silu = rng.standard_normal((2, temb_dim))
    mask = (rng.random((2, c_out, h, w)) >= p) if p else None
    out, cache = resnet_block(x, temb_silu, params, groups, 1e-6, mask, p)
    g = rng.standard_normal(out.shape)
    dx, dtemb_silu, grads = resnet_block_backward(g, cache)
    assert set(grads) == set(params)

    def loss():
        return float(np.sum(g * resnet_block(x, temb_silu, params, groups, 1e-6, mask, p)[0]))

    # One channel per group: norm2 subtracts each channel's mean, so every per-channel constant
    # before it (conv1's bias, the time embedding) cancels exactly -- a property of the
    # architecture, not a bug. Those gradients must be 0 and their FD estimate round-off only.
    vanishing = {"conv1.bias", "time_emb_proj.weight", "time_emb_proj.bias"} if groups == c_out else set()
    checks = [("x", x, dx), ("temb_silu", temb_silu, dtemb_silu)]
    checks += [(name, params[name], grads[name]) for name in params]
    for name, arr, grad in checks:
        if name in vanishing or (vanishing and name == "temb_silu"):
            assert np.max(np.abs(grad)) <= 1e-12, f"d{name} should vanish"
            assert np.max(np.abs(numerical_gradient(loss, arr))) <= 1e-8, f"FD d{name}"
        else:
            check_gradient(loss, arr, grad, rtol=1e-7, name=f"d{name}")


def test_dropout_scales_kept_values_and_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 2, 2))
    mask = rng.random(x.shape) >= 0.25
    out, cache = dropout(x, mask, 0.25)
    assert_close(out, np.where(mask, x / 0.75, 0.0), atol=0, rtol=1e-15, name="inverted dropout")
    g = rng.standard_normal(x.shape)
    check_gradient(lambda: float(np.sum(g * dropout(x, mask, 0.25)[0])), x, dropout_backward(g, cache),
                   rtol=1e-7, name="dx")
    assert dropout(x, None, 0.25)[0] is x                      # no mask: the identity


# ----------------------------------------------------------------------------- presets

def test_cifar10_preset_has_the_ddpm_paper_parameter_count():
    config = UNetConfig.ddpm_cifar10()
    assert count_parameters(config) == 35_746_307          # "35.7M" (Ho et al. 2020, Sec. 4)
    net = UNet(config)
    assert net.num_parameters == 35_746_307
    assert {k: v.shape for k, v in net.params.items()} == dict(parameter_shapes(config))
    assert all(v.dtype == np.float64 for v in net.params.values())


@pytest.mark.parametrize("preset", ["digits8", "mnist", "tiny"])
def test_small_presets_run_forward_and_backward(preset):
    config = getattr(UNetConfig, preset)()
    net = _random_unet(config)
    x, t, y, rng = _inputs(config, n=1)
    out = net.forward(x, t, y)
    assert out.shape == (1, config.out_channels, config.image_size, config.image_size)
    dx = net.backward(rng.standard_normal(out.shape))
    assert dx.shape == x.shape and np.all(np.isfinite(dx))
    assert set(net.grads) == set(net.params)
    assert all(net.grads[k].shape == v.shape for k, v in net.params.items())


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("case", list(FD_CONFIGS))
def test_unet_backward_matches_finite_differences(case):
    config = FD_CONFIGS[case]
    net = _random_unet(config)
    x, t, y, rng = _inputs(config)
    train = config.dropout > 0
    out = net.forward(x, t, y, train=train, rng=np.random.default_rng(3))
    masks = net.last_dropout_masks if train else None
    if train:  # the masks really drop something, and are reused by every loss evaluation below
        assert len(masks) == config.levels * (2 * config.num_res_blocks + 1) + 2
        assert 0 < np.mean([m.mean() for m in masks.values()]) < 1
    g = rng.standard_normal(out.shape)
    dx = net.backward(g)
    grads = dict(net.grads)

    def loss():
        return float(np.sum(g * net.forward(x, t, y, train=train, dropout_masks=masks)))

    sampled_analytic, sampled_numerical = [], []
    scale = max(float(np.abs(v).max()) for v in grads.values())
    checked_nonzero = []
    for name, value in [*net.params.items(), ("x", x)]:
        count = FD_ENTRIES_OF_X if name == "x" else FD_ENTRIES_PER_TENSOR
        a = np.abs((dx if name == "x" else grads[name]).reshape(-1))
        if a.max() <= 1e-12 * scale:  # zero in exact arithmetic: round-off only
            indices = rng.choice(value.size, min(count, value.size), replace=False)
        else:
            largest = int(np.argmax(a))
            candidates = np.flatnonzero(a >= 1e-3 * a.max())
            candidates = candidates[candidates != largest]
            picked = rng.choice(candidates, min(count, candidates.size), replace=False)
            indices = np.concatenate([[largest], picked]).astype(np.int64)
            checked_nonzero.append(name)
        numerical = numerical_gradient(loss, value, 1e-6, indices)
        analytic = (dx if name == "x" else grads[name]).reshape(-1)[indices]
        numerical = numerical.reshape(-1)[indices]
        assert_close(analytic, numerical, atol=1e-8, rtol=1e-6, name=f"d{name}")
        sampled_analytic.append(analytic)
        sampled_numerical.append(numerical)
    assert rel_error(np.concatenate(sampled_analytic), np.concatenate(sampled_numerical)) <= 1e-7
    # the zero-gradient exemption covers only the tensors known to be zero (the key bias)
    exempt = {n for n in [*net.params, "x"] if n not in checked_nonzero}
    assert all(n.endswith("to_k.bias") for n in exempt), sorted(exempt)
    if config.num_classes is not None:
        assert "class_embedding.weight" in checked_nonzero


def test_unet_gradient_reaches_only_used_class_rows():
    config = UNetConfig.tiny(num_classes=4)
    net = _random_unet(config)
    x, t, _, rng = _inputs(config)
    out = net.forward(x, t, np.array([1, 4]))                   # 4 = the null class
    net.backward(rng.standard_normal(out.shape))
    row_norms = np.abs(net.grads["class_embedding.weight"]).sum(axis=1)
    assert np.all(row_norms[[0, 2, 3]] == 0) and np.all(row_norms[[1, 4]] > 0)


# ----------------------------------------------------------------------------- against diffusers

def _diffusers_unet(config):
    """diffusers' UNet2DModel for the same config, float64, with a float64 time projection."""
    from diffusers import UNet2DModel

    levels = range(config.levels)
    model = UNet2DModel(
        sample_size=config.image_size, in_channels=config.in_channels, out_channels=config.out_channels,
        layers_per_block=config.num_res_blocks, block_out_channels=config.block_channels,
        down_block_types=["AttnDownBlock2D" if config.level_has_attention(i) else "DownBlock2D" for i in levels],
        up_block_types=["AttnUpBlock2D" if config.level_has_attention(config.levels - 1 - i) else "UpBlock2D"
                        for i in levels],
        norm_num_groups=config.groups, norm_eps=config.eps, downsample_padding=config.downsample_padding,
        flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift,
        attention_head_dim=None if config.num_heads == 1 else config.block_channels[-1] // config.num_heads,
        num_class_embeds=None if config.num_classes is None else config.num_classes + 1,
        add_attention=config.mid_attention, dropout=config.dropout,
    ).double().eval()

    class Float64TimeProjection(torch.nn.Module):
        # diffusers computes the sinusoidal embedding in float32 ("timesteps ... will always
        # return f32 tensors"); the reference defines it in float64.
        def forward(self, t):
            return torch.tensor(timestep_embedding(t.numpy(), config.ch, config.flip_sin_to_cos,
                                                   config.freq_shift))

    model.time_proj = Float64TimeProjection()
    return model


@pytest.mark.parametrize("case", ["tiny", "tiny_conditional_2_heads", "digits8"])
def test_unet_matches_diffusers_unet2dmodel_float64(case):
    """Same names (strict load), same outputs, input gradient and every parameter gradient."""
    pytest.importorskip("diffusers", reason="diffusers is the optional peer implementation")
    config = {"tiny": UNetConfig.tiny(),
              "tiny_conditional_2_heads": UNetConfig.tiny(num_classes=3, num_heads=2, downsample_padding=1),
              "digits8": UNetConfig.digits8()}[case]
    net = _random_unet(config)
    model = _diffusers_unet(config)
    model.load_state_dict({k: torch.tensor(v) for k, v in net.params.items()}, strict=True)

    x, t, y, rng = _inputs(config, n=3)
    out = net.forward(x, t, y)
    g = rng.standard_normal(out.shape)
    dx = net.backward(g)

    xt = torch.tensor(x, requires_grad=True)
    ref = model(xt, torch.tensor(t), class_labels=None if y is None else torch.tensor(y)).sample
    ref.backward(torch.tensor(g))
    assert rel_error(out, ref) <= 1e-12, rel_error(out, ref)
    assert rel_error(dx, xt.grad) <= 1e-10
    # relative error per tensor; tensors whose gradient is exactly zero in exact arithmetic
    # (to_k.bias) hold only round-off, so they are measured against the largest gradient
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    for name, p in model.named_parameters():
        err = float(np.max(np.abs(net.grads[name] - p.grad.numpy())))
        denom = max(float(p.grad.abs().max()), 1e-6 * scale)
        assert err <= 1e-10 * denom, f"d{name}: relative error {err / denom:.2e}"


# ----------------------------------------------------------------------------- behaviour

def test_zero_init_gives_zero_output_and_torch_default_bounds():
    config = UNetConfig.tiny(num_classes=2)
    net = UNet(config, seed=0)
    x, t, y, _ = _inputs(config)
    assert np.all(net(x, t, y) == 0)                            # conv_out is zero
    for name, value in net.params.items():
        if ".conv2." in name or ".to_out.0." in name or name.startswith("conv_out."):
            assert np.all(value == 0), name
        elif "norm" in name:
            assert np.all(value == (1.0 if name.endswith("weight") else 0.0)), name
        elif name != "class_embedding.weight":
            fan_in = int(np.prod(parameter_shapes(config)[name.rsplit(".", 1)[0] + ".weight"][1:]))
            assert 0 < np.max(np.abs(value)) <= 1 / np.sqrt(fan_in), name
    assert np.any(UNet(config, seed=0, zero_init=False)(x, t, y) != 0)


def test_unet_output_of_a_sample_does_not_depend_on_its_batch():
    config = UNetConfig.tiny(num_classes=3)
    net = _random_unet(config)
    x, t, y, _ = _inputs(config, n=4)
    batch = net(x, t, y)
    for i in range(4):
        assert_close(net(x[i:i + 1], t[i:i + 1], y[i:i + 1]), batch[i:i + 1], atol=1e-14, rtol=1e-12,
                     name=f"sample {i}")


def test_dropout_masks_are_explicit_and_reproducible():
    config = UNetConfig.tiny(dropout=0.5)
    net = _random_unet(config)
    x, t, _, _ = _inputs(config)
    eval_out = net(x, t)
    assert_close(net.forward(x, t), eval_out, atol=0, rtol=0, name="train=False has no dropout")
    a = net.forward(x, t, train=True, rng=np.random.default_rng(7))
    masks = net.last_dropout_masks
    b = net.forward(x, t, train=True, rng=np.random.default_rng(7))
    c = net.forward(x, t, train=True, dropout_masks=masks)
    assert_close(a, b, atol=0, rtol=0, name="same rng")
    assert_close(a, c, atol=0, rtol=0, name="explicit masks")
    assert not np.allclose(a, eval_out)
    kept = np.mean(np.concatenate([m.reshape(-1) for m in masks.values()]))
    assert 0.35 < kept < 0.65
    # all-ones masks: inverted dropout scales the kept values by 1 / (1 - p)
    ones = {k: np.ones_like(m) for k, m in masks.items()}
    assert not np.allclose(net.forward(x, t, train=True, dropout_masks=ones), eval_out)


def test_float32_unet_is_close_to_float64():
    config = UNetConfig.tiny()
    net64 = _random_unet(config)
    net32 = UNet(config, params=net64.params, dtype=np.float32)
    x, t, _, _ = _inputs(config)
    out32 = net32(x.astype(np.float32), t)
    assert out32.dtype == np.float32
    assert rel_error(out32, net64(x, t)) < 1e-5


def test_load_copies_in_place_and_state_dict_round_trips():
    config = UNetConfig.tiny()
    net = UNet(config, seed=0)
    arrays = {k: id(v) for k, v in net.params.items()}
    other = _random_unet(config)
    net.load(other.state_dict())
    assert {k: id(v) for k, v in net.params.items()} == arrays          # optimisers keep references
    x, t, _, _ = _inputs(config)
    assert_close(net(x, t), other(x, t), atol=0, rtol=0, name="loaded net")


# ----------------------------------------------------------------------------- bad inputs

@pytest.fixture(scope="module")
def tiny_net():
    return _random_unet(UNetConfig.tiny(num_classes=3))


@pytest.mark.parametrize(
    "x_shape, dtype, t, y, error, match",
    [
        ((2, 2, 4, 4), np.float64, 1, None, ValueError, r"in_channels=1.*got \(2, 2, 4, 4\)"),
        ((2, 1, 5, 5), np.float64, 1, None, ValueError, r"not divisible by 2\^\(levels-1\) = 2"),
        ((2, 1, 8, 8), np.float64, 1, None, ValueError, r"must have shape \(N, in_channels=1, 4, 4\)"),
        ((2, 1, 4, 4), np.int64, 1, None, TypeError, "x must have dtype float32 or float64"),
        ((2, 1, 4, 4), np.float16, 1, None, TypeError, "x must have dtype"),
        ((2, 1, 4, 4), np.float64, 1.5, None, TypeError, "t must be an int or an integer array"),
        ((2, 1, 4, 4), np.float64, np.array([1, -1]), None, ValueError, "t must be >= 0"),
        ((2, 1, 4, 4), np.float64, np.array([1, 2, 3]), None, ValueError, r"t must be an int or have shape \(2,\)"),
        ((2, 1, 4, 4), np.float64, 1, np.array([0, 4]), ValueError, r"y must lie in \[0, 3\]"),
        ((2, 1, 4, 4), np.float64, 1, np.array([0.0, 1.0]), TypeError, "y must be an integer array"),
        ((2, 1, 4, 4), np.float64, 1, np.array([0]), ValueError, r"y must have shape \(2,\)"),
    ],
)
def test_unet_forward_rejects_bad_inputs(tiny_net, x_shape, dtype, t, y, error, match):
    with pytest.raises(error, match=match):
        tiny_net.forward(np.zeros(x_shape, dtype=dtype), t, y)


def test_unet_forward_rejects_nan_and_unconditional_labels():
    config = UNetConfig.tiny()
    net = UNet(config)
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="y must be None for an unconditional"):
        net.forward(x, 0, np.array([0]))
    x[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        net.forward(x, 0)


def test_unet_load_names_missing_extra_and_misshaped_parameters():
    config = UNetConfig.tiny()
    net = UNet(config)
    params = net.state_dict()
    del params["mid_block.attentions.0.to_q.bias"]
    params["mid_block.attentions.0.to_r.weight"] = np.zeros((8, 8))
    params["conv_out.weight"] = np.zeros((2, 4, 3, 3))
    with pytest.raises(ValueError) as info:
        net.load(params)
    message = str(info.value)
    assert "missing 1 key(s): ['mid_block.attentions.0.to_q.bias']" in message
    assert "unexpected 1 key(s): ['mid_block.attentions.0.to_r.weight']" in message
    assert "conv_out.weight: expected (1, 4, 3, 3), got (2, 4, 3, 3)" in message
    with pytest.raises(ValueError, match="missing"):
        UNet(config, params={})
    good = net.state_dict()
    good["conv_in.bias"] = np.array([0, 0, 0, np.inf])
    with pytest.raises(ValueError, match=r"params\['conv_in.bias'\] contains NaN or inf"):
        net.load(good)
    with pytest.raises(TypeError, match="params must be a mapping"):
        net.load([1, 2])


def test_unet_backward_and_dropout_misuse_are_errors():
    config = UNetConfig.tiny(dropout=0.1)
    net = UNet(config)
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(RuntimeError, match="backward needs a preceding forward"):
        net.backward(np.zeros((1, 1, 4, 4)))
    net.forward(x, 0)
    with pytest.raises(ValueError, match="dout must have the shape"):
        net.backward(np.zeros((2, 1, 4, 4)))
    with pytest.raises(ValueError, match="train=False"):
        net.forward(x, 0, dropout_masks={})
    with pytest.raises(ValueError, match=r"not ResBlock prefixes: \['mid_block.resnets.7'\]"):
        net.forward(x, 0, train=True, dropout_masks={"mid_block.resnets.7": np.ones((1, 8, 2, 2))})
    with pytest.raises(ValueError, match=r"dropout_masks\['mid_block.resnets.0'\] must have shape \(1, 8, 2, 2\)"):
        net.forward(x, 0, train=True, dropout_masks={"mid_block.resnets.0": np.ones((1, 8, 4, 4))})
    with pytest.raises(TypeError, match="config must be a UNetConfig"):
        UNet({"ch": 4})


def test_unet_config_rejects_channels_not_divisible_by_groups_and_sizes_not_divisible_by_levels():
    with pytest.raises(ValueError, match="not divisible by groups=3"):
        UNetConfig.tiny(groups=3)
    with pytest.raises(ValueError, match=r"image_size 6 must be divisible by 2\^\(levels-1\) = 4"):
        UNetConfig.tiny(image_size=6, ch_mult=(1, 2, 2), attn_resolutions=())
    # diffusers sizes the time embedding by ch * ch_mult[0]; the names only match when it is ch
    with pytest.raises(ValueError, match=r"ch_mult\[0\] must be 1"):
        UNetConfig.tiny(ch_mult=(2, 2))
