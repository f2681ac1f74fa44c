"""reference.Classifier: hand backward vs finite differences (every parameter and the input x),
cross-entropy, the guidance gradient, parameter names shared with the denoiser, bad inputs.

Finite differences (central, eps = 1e-6) of loss = sum(g * logits) with a fixed random g, on
entries where the analytic gradient is not zero: per parameter tensor its largest |gradient|
entry and one random entry among those >= 1e-3 of the largest, and 8 entries of x. Bound per
entry: |analytic - numerical| <= 1e-8 + 1e-6 |numerical| (1e-8 ~ 5x the estimate's round-off
u |loss| / eps; as tests/test_unet_reference.py). Tensors whose gradient is zero in exact
arithmetic (to_k.bias: softmax ignores a shift shared by all keys) hold round-off only.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from reference import Classifier, UNetConfig, classifier_parameter_shapes, parameter_shapes
from reference.classifier import cross_entropy, cross_entropy_backward, log_softmax
from tests.helpers import numerical_gradient

CONFIGS = {
    "tiny": UNetConfig.tiny(num_classes=3),
    "two-blocks-heads": UNetConfig.tiny(num_classes=4, num_res_blocks=2, ch=8, groups=4, num_heads=2,
                                        ch_mult=(1, 2), attn_resolutions=(4,)),
}


def _entries(analytic: np.ndarray, rng) -> list[int]:
    flat = np.abs(analytic.reshape(-1))
    if flat.max() == 0:
        return []
    big = np.flatnonzero(flat >= 1e-3 * flat.max())
    return sorted({int(flat.argmax()), int(rng.choice(big))})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_classifier_backward_matches_finite_differences(name):
    config = CONFIGS[name]
    model = Classifier(config, seed=3, zero_init=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, config.in_channels, config.image_size, config.image_size))
    t = np.array([5, 901])
    g = rng.standard_normal((2, config.num_classes))
    model.forward(x, t)
    dx = model.backward(g)
    grads = {k: v.copy() for k, v in model.grads.items()}

    def loss():
        return float(np.sum(g * model(x, t)))

    checked = 0
    for pname, value in model.params.items():
        idx = _entries(grads[pname], rng)
        if not idx:
            continue
        num = numerical_gradient(loss, value, indices=idx).reshape(-1)[idx]
        ana = grads[pname].reshape(-1)[idx]
        assert np.all(np.abs(ana - num) <= 1e-8 + 1e-6 * np.abs(num)), (pname, ana, num)
        checked += 1
    assert checked >= len(model.params) - 2  # to_k.bias may be exactly zero
    idx = list(rng.choice(x.size, 8, replace=False))
    num = numerical_gradient(loss, x, indices=idx).reshape(-1)[idx]
    ana = dx.reshape(-1)[idx]
    assert np.all(np.abs(ana - num) <= 1e-8 + 1e-6 * np.abs(num)), ("x", ana, num)


def test_cross_entropy_and_its_backward():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 4)) * 3
    y = np.array([0, 3, 1, 1, 2])
    loss, cache = cross_entropy(logits, y)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), y])), rel=1e-14)
    num = numerical_gradient(lambda: cross_entropy(logits, y)[0], logits)
    np.testing.assert_allclose(cross_entropy_backward(1.0, cache), num, atol=1e-9)
    with pytest.raises(ValueError, match="y must lie in"):
        cross_entropy(logits, np.array([0, 4, 1, 1, 2]))


def test_log_prob_gradient_is_the_gradient_of_each_samples_log_probability():
    config = CONFIGS["tiny"]
    model = Classifier(config, seed=5, zero_init=False)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 1, 4, 4))
    t, y = np.array([0, 10, 999]), np.array([2, 0, 1])
    log_p, grad = model.log_prob_gradient(x, t, y)
    np.testing.assert_allclose(log_p, log_softmax(model(x, t))[np.arange(3), y], rtol=1e-14)
    f = lambda: float(log_softmax(model(x, t))[np.arange(3), y].sum())  # noqa: E731
    num = numerical_gradient(f, x)
    np.testing.assert_allclose(grad, num, atol=1e-8, rtol=1e-6)


def test_parameter_names_follow_the_denoisers_down_path():
    config = UNetConfig.digits8(num_classes=10)
    shapes = classifier_parameter_shapes(config)
    unet = parameter_shapes(UNetConfig.digits8())
    shared = [n for n in shapes if not n.startswith("head.")]
    assert shared and all(unet[n] == shapes[n] for n in shared)
    assert not any(n.startswith(("up_blocks", "conv_out", "class_embedding")) for n in shapes)
    denoiser = reference.UNet(UNetConfig.digits8(), seed=1, zero_init=False)
    model = Classifier(config, seed=2)
    copied = model.encoder_params(denoiser.params)
    assert copied == shared
    assert all(np.array_equal(model.params[n], denoiser.params[n]) for n in shared)


def test_classifier_training_step_lowers_the_loss_on_a_fixed_batch():
    config = CONFIGS["tiny"]
    model = Classifier(config, seed=0)
    optimizer = reference.Adam(model.params, lr=1e-2)
    rng = np.random.default_rng(3)
    x0 = np.clip(rng.standard_normal((6, 1, 4, 4)), -1, 1)
    y = np.array([0, 1, 2, 0, 1, 2])
    schedule = reference.make_schedule("linear", 10)
    losses = [reference.classifier_train_step(model, optimizer, x0, y, schedule, seed=0, step=0)["loss"]
              for _ in range(30)]  # step=0 every time: the same draws, so the loss must fall
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("bad, error, match", [
    (dict(x=np.zeros((1, 1, 8, 8))), ValueError, "image shape"),
    (dict(t=np.array([1.5])), TypeError, "t must be an int"),
    (dict(t=np.array([-1])), ValueError, "t must be >= 0"),
])
def test_classifier_rejects_bad_inputs(bad, error, match):
    model = Classifier(CONFIGS["tiny"])
    args = dict(x=np.zeros((1, 1, 4, 4)), t=np.array([1]))
    args.update(bad)
    with pytest.raises(error, match=match):
        model.forward(args["x"], args["t"])


def test_classifier_config_needs_classes():
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(UNetConfig.tiny())
