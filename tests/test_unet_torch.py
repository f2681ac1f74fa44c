"""ddpm.UNet (torch) against the NumPy reference UNet, in float64 on the CPU, same weights.

For each config the weights are copied by name (reference -> torch and torch -> reference) and
the output, the input gradient and EVERY parameter gradient are compared: torch autograd of
sum(out * g) against reference.UNet.backward(g). Both compute the same float64 operations in a
different order (im2col vs oneDNN convs, SDPA vs explicit softmax), so they agree to ~1e-15
relative; the bound is 1e-10 relative per tensor (max |a - b| / max |b|, tests.helpers.rel_error).
Also: parameter names/shapes, the kernel seams, initialisation, dtypes/memory formats, bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ddpm
import kernels
import reference
from reference.layers import timestep_embedding
from tests.helpers import assert_close, rel_error

REL_TOL = 1e-10

CONFIGS = {
    # attention at 2x2 and in the mid block, classes, 2 heads, 2 ResBlocks per level
    "attention_classes": reference.UNetConfig.tiny(num_classes=3, num_heads=2, num_res_blocks=2),
    # no attention anywhere, no classes, 1 ResBlock per level, the other embedding/padding variants
    "plain": reference.UNetConfig.tiny(attn_resolutions=(), mid_attention=False, flip_sin_to_cos=True,
                                       freq_shift=0, downsample_padding=1, in_channels=2,
                                       out_channels=3),
    # three levels, attention at the coarsest only, classes, dropout configured (off in eval)
    "three_levels": reference.UNetConfig(image_size=8, in_channels=1, out_channels=1, ch=4,
                                         ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(2,),
                                         dropout=0.3, groups=2, num_classes=2),
    # a head width instead of a head count (diffusers' attention_head_dim): 2, 8 and 8 heads at
    # the 4-, 16-channel levels and the mid block, classes
    "heads_per_level": reference.UNetConfig(image_size=8, in_channels=1, out_channels=2, ch=4,
                                            ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(8, 2),
                                            dropout=0.0, groups=2, head_channels=2, num_classes=2),
}


def _inputs(config, n=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, config.in_channels, config.image_size, config.image_size))
    t = np.array([0, 431, 999][:n])
    y = None if config.num_classes is None else np.array([0, config.num_classes, 1][:n])
    g = rng.standard_normal((n, config.out_channels, config.image_size, config.image_size))
    return x, t, y, g


def _torch_forward_backward(model, x, t, y, g):
    """out, dx and {name: grad} of sum(out * g) by torch autograd."""
    model.zero_grad(set_to_none=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt, torch.from_numpy(t), None if y is None else torch.from_numpy(y))
    (out * torch.from_numpy(g)).sum().backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p))
             for name, p in model.named_parameters()}
    return out.detach(), xt.grad, grads


def _assert_equal_to_reference(model, ref, x, t, y, g, dropout_masks=None):
    train = dropout_masks is not None
    expected = ref.forward(x, t, y, dropout_masks=dropout_masks, train=train)
    expected_dx = ref.backward(g)
    out, dx, grads = _torch_forward_backward(model, x, t, y, g)
    errors = {"output": rel_error(out, expected), "input gradient": rel_error(dx, expected_dx)}
    assert set(grads) == set(ref.grads)
    for name, grad in grads.items():
        if name.endswith("to_k.bias"):
            # Exactly zero in exact arithmetic (a key bias adds q.b_k to a whole row of scores,
            # which the softmax ignores): both sides hold round-off. Compare on the scale of the
            # same layer's to_k weight gradient instead of their own (~1e-17) magnitude.
            scale = np.abs(ref.grads[name.replace(".bias", ".weight")]).max()
            errors[name] = float(max(grad.abs().max(), np.abs(ref.grads[name]).max()) / scale)
        elif np.any(ref.grads[name]):
            errors[name] = rel_error(grad, ref.grads[name])
        else:  # unused class-embedding rows: exactly zero on both sides
            errors[name] = float(grad.abs().max())
    worst = max(errors, key=errors.get)
    assert errors[worst] <= REL_TOL, f"{worst}: relative error {errors[worst]:.2e} > {REL_TOL}"
    return errors


# ----------------------------------------------------------------------------- equality

@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_and_every_gradient_equal_reference_weights_copied_to_torch(name):
    config = CONFIGS[name]
    ref = reference.UNet(config, seed=1, zero_init=False)
    model = ddpm.UNet(config).double().eval()
    model.load_numpy_params(ref.params)
    _assert_equal_to_reference(model, ref, *_inputs(config))


@pytest.mark.parametrize("name", ["attention_classes", "plain", "heads_per_level"])
def test_output_and_every_gradient_equal_torch_weights_copied_to_reference(name):
    config = CONFIGS[name]
    torch.manual_seed(2)
    model = ddpm.UNet(config, zero_init=False).double().eval()
    with torch.no_grad():  # also move the norms away from 1 and 0
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.2 * torch.randn_like(p))
    ref = reference.UNet(config, params=model.numpy_params())
    _assert_equal_to_reference(model, ref, *_inputs(config, seed=3))


def test_heads_per_level_config_builds_one_head_count_per_level():
    model = ddpm.UNet(CONFIGS["heads_per_level"])
    heads = {name: m.num_heads for name, m in model.named_modules() if isinstance(m, ddpm.unet.AttentionBlock)}
    assert heads == {"down_blocks.0.attentions.0": 2, "down_blocks.2.attentions.0": 8,
                     "mid_block.attentions.0": 8, "up_blocks.0.attentions.0": 8,
                     "up_blocks.0.attentions.1": 8, "up_blocks.2.attentions.0": 2,
                     "up_blocks.2.attentions.1": 2}


def test_dropout_sits_where_the_reference_puts_it():
    """Train mode with the reference's masks substituted for nn.Dropout's: same outputs/grads."""
    config = CONFIGS["three_levels"]
    ref = reference.UNet(config, seed=4, zero_init=False)
    model = ddpm.UNet(config).double().train()
    model.load_numpy_params(ref.params)
    x, t, y, g = _inputs(config)
    rng = np.random.default_rng(5)
    # shapes of each ResBlock's norm2 output, from a forward hook
    shapes = {}
    hooks = [m.norm2.register_forward_hook(lambda mod, args, out, p=p: shapes.__setitem__(p, out.shape))
             for p, m in model.named_modules() if isinstance(m, ddpm.unet.ResnetBlock)]
    with torch.no_grad():
        model.eval()(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y))
    for h in hooks:
        h.remove()
    masks = {p: rng.random(tuple(s)) >= config.dropout for p, s in shapes.items()}

    class FixedMaskDropout(nn.Module):
        def __init__(self, mask, p):
            super().__init__()
            self.keep = torch.from_numpy(mask.astype(np.float64) / (1.0 - p))

        def forward(self, h):
            return h * self.keep

    for prefix, module in model.named_modules():
        if isinstance(module, ddpm.unet.ResnetBlock):
            module.dropout = FixedMaskDropout(masks[prefix], config.dropout)
    model.train()
    _assert_equal_to_reference(model, ref, x, t, y, g, dropout_masks=masks)


def test_eval_mode_is_deterministic_and_train_mode_drops_out():
    config = CONFIGS["three_levels"]
    torch.manual_seed(0)
    model = ddpm.UNet(config, zero_init=False).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, 5), model(x, 5))
        model.train()
        assert not torch.equal(model(x, 5), model(x, 5))


def test_timestep_embedding_is_the_reference_embedding_in_float64_whatever_the_model_dtype():
    config = CONFIGS["plain"]
    model = ddpm.UNet(config).float()  # casting must not round the float64 frequencies
    model.double()
    t = torch.tensor([0, 1, 17, 500, 999])
    expected = timestep_embedding(t.numpy(), config.ch, config.flip_sin_to_cos, config.freq_shift)
    assert_close(model.timestep_embedding(t), expected, atol=1e-13, rtol=0, name="embedding")


# ----------------------------------------------------------------------------- structure

@pytest.mark.parametrize("config", list(CONFIGS.values()) + [reference.UNetConfig.ddpm_cifar10(),
                                                             reference.UNetConfig.mnist(num_classes=10)])
def test_state_dict_names_and_shapes_are_parameter_shapes(config):
    with torch.device("meta"):
        model = ddpm.UNet(config)
    state = model.state_dict()
    expected = reference.parameter_shapes(config)
    assert list(state) == list(expected)  # same names, same order, no buffers
    assert {k: tuple(v.shape) for k, v in state.items()} == dict(expected)
    if config == reference.UNetConfig.ddpm_cifar10():
        assert sum(p.numel() for p in model.parameters()) == 35_746_307


def test_every_group_norm_is_one_kernel_call_and_the_time_embedding_is_norm2s_shift():
    config = CONFIGS["attention_classes"]
    model = ddpm.UNet(config, zero_init=False).double().eval()
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    calls = []

    def record(name):
        def hook(module, args, kwargs):
            calls.append((name, kwargs.get("shift") is not None or len(args) > 1, module.activation))
        return hook

    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, kernels.GroupNormSiLU)]
    for name, module in norms:
        module.register_forward_pre_hook(record(name), with_kwargs=True)
    with torch.no_grad():
        model(torch.randn(2, 1, 4, 4, dtype=torch.float64), 3, torch.tensor([0, 1]))
    assert sorted(n for n, _, _ in calls) == sorted(n for n, _ in norms)  # each exactly once
    for name, has_shift, activation in calls:
        assert has_shift == name.endswith("norm2"), name
        assert activation == (not name.endswith("group_norm")), name


def test_initialisation_follows_the_reference_scheme():
    config = reference.UNetConfig.tiny(num_classes=40, ch=8, groups=4)
    torch.manual_seed(0)
    model = ddpm.UNet(config)
    shapes = reference.parameter_shapes(config)
    for name, p in model.named_parameters():
        if ".conv2." in name or ".to_out.0." in name or name.startswith("conv_out."):
            assert torch.count_nonzero(p) == 0, name  # zero_init
        elif "norm" in name:
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
        elif name == "class_embedding.weight":
            assert 0.8 < p.std().item() < 1.2
        else:
            fan_in = int(np.prod(shapes[name.rsplit(".", 1)[0] + ".weight"][1:]))
            bound = 1.0 / np.sqrt(fan_in)
            assert p.abs().max().item() <= bound and p.abs().max().item() > 0.5 * bound, name
    with torch.no_grad():
        assert torch.count_nonzero(model(torch.randn(2, 1, 4, 4), 10, torch.tensor([0, 40]))) == 0
    assert any(torch.count_nonzero(p) for n, p in ddpm.UNet(config, zero_init=False).named_parameters()
               if n.startswith("conv_out."))


def test_numpy_params_round_trip_and_load_errors_list_names():
    config = CONFIGS["plain"]
    ref = reference.UNet(config, seed=9, zero_init=False)
    model = ddpm.UNet(config).double()
    model.load_numpy_params(ref.params)
    for name, value in model.numpy_params().items():
        assert np.array_equal(value, ref.params[name]), name
    bad = dict(ref.params)
    del bad["conv_in.bias"]
    bad["extra.weight"] = np.zeros(2)
    bad["conv_out.weight"] = np.zeros((3, 4, 1, 1))
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): \['conv_in.bias'\].*unexpected 1 key\(s\): "
                                         r"\['extra.weight'\].*conv_out.weight: expected \(3, 4, 3, 3\)"):
        model.load_numpy_params(bad)


# ----------------------------------------------------------------------------- dtypes, layouts

def test_float32_bf16_autocast_and_channels_last_track_float64():
    config = CONFIGS["attention_classes"]
    ref = reference.UNet(config, seed=6, zero_init=False)
    x, t, y, _ = _inputs(config)
    expected = ref(x, t, y)
    model = ddpm.UNet(config).double().eval()
    model.load_numpy_params(ref.params)
    tt, yy = torch.from_numpy(t), torch.from_numpy(y)
    with torch.no_grad():
        x64 = torch.from_numpy(x)
        channels_last = model(x64.to(memory_format=torch.channels_last), tt, yy)
        assert rel_error(channels_last, expected) <= REL_TOL
        model.float()
        x32 = x64.float()
        out32 = model(x32, tt, yy)
        assert out32.dtype == torch.float32
        assert rel_error(out32, expected) <= 1e-5
        assert rel_error(model(x32.to(memory_format=torch.channels_last), tt, yy), expected) <= 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x32, tt, yy)
        assert out_bf16.dtype == torch.bfloat16
        assert rel_error(out_bf16.float(), expected) <= 5e-2


def test_backward_runs_in_float32_with_channels_last():
    config = CONFIGS["attention_classes"]
    torch.manual_seed(0)
    model = ddpm.UNet(config, zero_init=False).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 4, 4).to(memory_format=torch.channels_last).requires_grad_(True)
    model(x, torch.tensor([1, 2]), torch.tensor([0, 3])).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in model.named_parameters() if n != "class_embedding.weight")


# ----------------------------------------------------------------------------- bad inputs

@pytest.fixture(scope="module")
def conditional_model():
    torch.manual_seed(0)
    return ddpm.UNet(CONFIGS["attention_classes"])


@pytest.mark.parametrize("x, t, y, error, match", [
    (torch.zeros(2, 3, 4, 4), 1, None, ValueError, r"x must have shape \(N, 1, 4, 4\)"),      # channels
    (torch.zeros(2, 1, 8, 8), 1, None, ValueError, r"x must have shape \(N, 1, 4, 4\)"),      # image size
    (torch.zeros(1, 4, 4), 1, None, ValueError, "x must have shape"),
    (np.zeros((2, 1, 4, 4)), 1, None, TypeError, "x must be a torch.Tensor"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.int64), 1, None, TypeError, "x must be a floating tensor"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.float64), 1, None, TypeError, "parameters' dtype"),
    (torch.zeros(2, 1, 4, 4), torch.tensor([1.0, 2.0]), None, TypeError, "t must be an integer tensor"),
    (torch.zeros(2, 1, 4, 4), torch.tensor([1, 2, 3]), None, ValueError, r"t must be an int or have shape \(2,\)"),
    (torch.zeros(2, 1, 4, 4), torch.tensor([1, -2]), None, ValueError, "t must be >= 0"),
    (torch.zeros(2, 1, 4, 4), -1, None, ValueError, "t must be >= 0"),
    (torch.zeros(2, 1, 4, 4), 1.5, None, TypeError, "t must be an int or an integer tensor"),
    (torch.zeros(2, 1, 4, 4), 1, torch.tensor([0, 4]), ValueError, r"y must lie in \[0, 3\]"),   # class id
    (torch.zeros(2, 1, 4, 4), 1, torch.tensor([-1, 0]), ValueError, r"y must lie in \[0, 3\]"),
    (torch.zeros(2, 1, 4, 4), 1, torch.tensor([0.0, 1.0]), TypeError, "y must be an integer tensor"),
    (torch.zeros(2, 1, 4, 4), 1, torch.tensor([0]), ValueError, r"y must have shape \(2,\)"),
    (torch.zeros(2, 1, 4, 4), 1, [0, 1], TypeError, "y must be None, an int or an integer tensor"),
])
def test_bad_inputs_are_rejected(conditional_model, x, t, y, error, match):
    with pytest.raises(error, match=match):
        conditional_model(x, t, y)


def test_class_ids_for_an_unconditional_model_are_rejected():
    model = ddpm.UNet(CONFIGS["plain"])
    with pytest.raises(ValueError, match="model has no classes"):
        model(torch.zeros(1, 2, 4, 4), 0, torch.tensor([0]))


def test_null_class_and_missing_labels():
    config = CONFIGS["attention_classes"]
    torch.manual_seed(0)
    model = ddpm.UNet(config, zero_init=False).double().eval()
    assert model.null_class == 3 and ddpm.UNet(CONFIGS["plain"]).null_class is None
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(x, 7), model(x, torch.tensor([7, 7]), torch.tensor([3, 3])))
    with pytest.raises(TypeError, match="config must be a reference.UNetConfig"):
        ddpm.UNet({"ch": 4})
