"""reference.DiT: every part's backward vs central finite differences, the whole model, presets,
parameter counts, the position embedding against diffusers', and bad input.

FD (float64, eps = 1e-6, loss = sum(g * out)): parts on every entry; the whole model on, per
parameter tensor, its largest-|gradient| entry and 2 random entries with |gradient| >= 1e-3 of
the largest (attn.qkv's k-bias rows have a zero gradient in exact arithmetic: softmax ignores a
shift shared by all keys), and 8 entries of x. Bound per check: max |a - n| <= 1e-8 + 1e-6 max |n|
(1e-8: a few times the estimate's round-off u |loss| / eps).
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import DiT, DiTConfig, DIT_PRESETS, dit_count_parameters, dit_parameter_shapes
from reference.dit import (
    dit_block, dit_block_backward, final_layer, final_layer_backward, gelu_tanh, gelu_tanh_backward,
    patchify, patchify_backward, pos_embed_2d, self_attention, self_attention_backward, unpatchify,
    unpatchify_backward,
)
from tests.helpers import numerical_gradient


def _close(analytic, numerical, name):
    mask = ~np.isnan(numerical)
    a, n = np.asarray(analytic)[mask], numerical[mask]
    err = np.max(np.abs(a - n))
    assert err <= 1e-8 + 1e-6 * np.max(np.abs(n)), f"{name}: max abs error {err:.3e}, max |n| {np.max(np.abs(n)):.3e}"


def _random_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s) * (0.3 if len(s) == 1 else 0.8 / np.sqrt(np.prod(s[1:]))) for k, s in shapes.items()}


def test_patchify_and_unpatchify_are_inverse_permutations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 6, 6))
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 9, 12)
    # token (row 1, col 2), feature (c=1, i=0, j=1) is pixel (c=1, 2+0, 4+1)
    assert tokens[0, 1 * 3 + 2, 1 * 4 + 0 * 2 + 1] == x[0, 1, 2, 5]
    assert np.array_equal(patchify_backward(tokens, x.shape), x)
    t = rng.normal(size=(2, 9, 12))
    img = unpatchify(t, 2, 3)
    assert img[0, 2, 1 * 2 + 1, 2 * 2 + 0] == t[0, 1 * 3 + 2, (1 * 2 + 0) * 3 + 2]   # (i, j, c) order
    assert np.array_equal(unpatchify_backward(img, 2), t)


def test_gelu_tanh_backward():
    x = np.random.default_rng(0).normal(size=(4, 5)) * 3
    g = np.random.default_rng(1).normal(size=x.shape)
    _, cache = gelu_tanh(x)
    _close(gelu_tanh_backward(g, cache), numerical_gradient(lambda: np.sum(g * gelu_tanh(x)[0]), x), "gelu")


def _check_part(forward, backward, inputs: dict, params: dict, n_out_grads=1):
    """forward(**inputs, params) -> out; backward(g, cache) -> (*input grads, param grads)."""
    out, cache = forward(**inputs, params=params)
    g = np.random.default_rng(7).normal(size=out.shape)
    result = backward(g, cache)
    input_grads, param_grads = result[:-1], result[-1]

    def loss():
        return float(np.sum(g * forward(**inputs, params=params)[0]))

    for (name, value), grad in zip(inputs.items(), input_grads):
        _close(grad, numerical_gradient(loss, value), name)
    assert set(param_grads) == set(params)
    for name, value in params.items():
        _close(param_grads[name], numerical_gradient(loss, value), name)


def test_self_attention_backward():
    shapes = {"attn.qkv.weight": (12, 4), "attn.qkv.bias": (12,), "attn.proj.weight": (4, 4), "attn.proj.bias": (4,)}
    x = np.random.default_rng(2).normal(size=(2, 3, 4))
    _check_part(lambda x, params: self_attention(x, params, 2), self_attention_backward, {"x": x},
                _random_params(shapes))


def test_dit_block_backward():
    d, m = 4, 8
    shapes = {"attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d),
              "attn.proj.bias": (d,), "mlp.fc1.weight": (m, d), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (d, m),
              "mlp.fc2.bias": (d,), "adaLN_modulation.1.weight": (6 * d, d), "adaLN_modulation.1.bias": (6 * d,)}
    rng = np.random.default_rng(3)
    inputs = {"x": rng.normal(size=(2, 3, d)), "c_silu": rng.normal(size=(2, d))}
    _check_part(lambda x, c_silu, params: dit_block(x, c_silu, params, 2, 1e-6, 1e-5), dit_block_backward,
                inputs, _random_params(shapes))


def test_final_layer_backward():
    shapes = {"adaLN_modulation.1.weight": (8, 4), "adaLN_modulation.1.bias": (8,), "linear.weight": (6, 4),
              "linear.bias": (6,)}
    rng = np.random.default_rng(4)
    inputs = {"x": rng.normal(size=(2, 3, 4)), "c_silu": rng.normal(size=(2, 4))}
    _check_part(lambda x, c_silu, params: final_layer(x, c_silu, params, 1e-6), final_layer_backward, inputs,
                _random_params(shapes))


@pytest.mark.parametrize("config", [DiTConfig.tiny(), DiTConfig.tiny(num_classes=None, learn_sigma=False,
                                                                       image_size=6, patch_size=3, in_channels=2)],
                         ids=["conditional-learn-sigma", "unconditional-patch3"])
def test_whole_model_backward(config):
    model = DiT(config, _random_params(dit_parameter_shapes(config)))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, config.in_channels, config.image_size, config.image_size))
    t, y = np.array([3, 17]), (np.array([0, config.num_classes]) if config.num_classes else None)
    out = model.forward(x, t, y)
    assert out.shape == (2, config.out_channels, config.image_size, config.image_size)
    g = rng.normal(size=out.shape)
    dx = model.backward(g)

    def loss():
        return float(np.sum(g * model(x, t, y)))

    pick = np.random.default_rng(6)
    for name, value in model.params.items():
        grad = model.grads[name].reshape(-1)
        big = np.flatnonzero(np.abs(grad) >= 1e-3 * np.abs(grad).max()) if grad.any() else np.arange(grad.size)
        idx = {int(np.argmax(np.abs(grad)))} | set(pick.choice(big, min(2, big.size), replace=False).tolist())
        _close(model.grads[name].reshape(-1)[sorted(idx)],
               numerical_gradient(loss, value, indices=sorted(idx)).reshape(-1)[sorted(idx)], name)
    idx = pick.choice(x.size, 8, replace=False)
    _close(dx.reshape(-1)[idx], numerical_gradient(loss, x, indices=idx).reshape(-1)[idx], "x")


def test_zero_init_outputs_zero_and_blocks_are_identity():
    model = DiT(DiTConfig.tiny(), seed=1)
    out = model.forward(np.ones((2, 1, 4, 4)), [1, 2], [0, 1])
    assert np.all(out == 0)
    assert all(np.all(model.params[k] == 0) for k in model.params if "adaLN" in k or "final_layer.linear" in k)


def test_pos_embed_matches_diffusers():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    for hidden, grid in ((8, 2), (96, 4), (64, 7)):
        want = get_2d_sincos_pos_embed(hidden, grid, base_size=grid).double().numpy()
        assert np.max(np.abs(pos_embed_2d(hidden, grid) - want)) < 1e-6, (hidden, grid)


def test_paper_parameter_counts():
    # DiT-XL/2 at 256x256: 674,834,720 trainable; the paper's code also counts its frozen
    # position embedding (256 x 1152 = 294,912) and prints 675,129,632 ("675M", Table 4).
    xl2 = DiTConfig.paper("XL", 2)
    assert dit_count_parameters(xl2) == 674_834_720
    assert dit_count_parameters(xl2) + xl2.grid_size ** 2 * xl2.hidden_size == 675_129_632
    assert set(DIT_PRESETS) >= {f"dit-{s}-{p}" for s in ("s", "b", "l", "xl") for p in (2, 4, 8)}
    assert DIT_PRESETS["dit-b-4"]().depth == 12 and DIT_PRESETS["dit-b-4"]().patch_size == 4


def test_bad_input_names_it():
    with pytest.raises(ValueError, match="image_size 10 is not divisible by patch_size 4"):
        DiTConfig.tiny(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="hidden_size 12 is not divisible by num_heads 5"):
        DiTConfig.tiny(hidden_size=12, num_heads=5)
    model = DiT(DiTConfig.tiny())
    x = np.zeros((2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\]"):
        model.forward(x, [1, 1], [0, 4])
    with pytest.raises(ValueError, match="not divisible by patch_size 2"):
        model.forward(np.zeros((2, 1, 5, 5)), [1, 1])
    with pytest.raises(ValueError, match="y must be None"):
        DiT(DiTConfig.tiny(num_classes=None)).forward(x, [1, 1], [0, 0])
