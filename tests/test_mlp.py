"""reference.MLP: the toy eps-model's hand-written backward, its protocol, dtypes and bad input.

Gradient checks: central differences in float64, eps = 1e-6, of the training loss (weighted MSE
of the model output) w.r.t. every parameter and x_t, error relative to each tensor's largest
gradient. Truncation is O(eps^2) ~ 1e-12; round-off is ~1e-16 |loss| / eps ~ 1e-10 absolute,
which for the first layer's small gradients (max |g| ~ 5e-3 at |loss| ~ 0.5) is ~1e-8 relative
(measured worst: 2.8e-8). Bound rtol = 1e-6 (DESIGN's); a wrong term is off by O(1).
"""

import numpy as np
import pytest

from helpers import assert_close, check_gradient
from reference import MLP, weighted_mse, weighted_mse_backward

GRAD_RTOL = 1e-6


def small_mlp(**overrides):
    config = dict(data_dim=2, hidden_dim=8, num_layers=2, time_embed_dim=8, class_embed_dim=4,
                  num_timesteps=50, seed=3)
    config.update(overrides)
    return MLP(**config)


def batch(model, n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, model.data_dim))
    t = rng.integers(0, model.num_timesteps, n)
    y = None if model.num_classes is None else rng.integers(0, model.num_classes + 1, n)
    return x, t, y, rng.standard_normal((n, model.data_dim))


@pytest.mark.parametrize("activation", ["silu", "elu"])
@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_mlp_backward_matches_central_differences(activation, num_classes, num_layers):
    model = small_mlp(activation=activation, num_classes=num_classes, num_layers=num_layers)
    x, t, y, target = batch(model)
    weights = np.array([0.5, 1.0, 2.0, 1.5, 0.1])

    def loss():
        return weighted_mse(model(x, t, y), target, weights)[0]

    _, cache = weighted_mse(model.forward(x, t, y), target, weights)
    dx = model.backward(weighted_mse_backward(cache))
    errors = [check_gradient(loss, x, dx, rtol=GRAD_RTOL, name="x_t")]
    for name, p in model.params.items():
        errors.append(check_gradient(loss, p, model.grads[name], rtol=GRAD_RTOL, name=name))
    assert max(errors) < GRAD_RTOL
    if num_classes is not None:  # the rows of labels not in the batch get no gradient
        unused = np.setdiff1d(np.arange(num_classes + 1), y)
        assert np.all(model.grads["class_embed.weight"][unused] == 0)


def test_protocol_params_grads_forward_backward():
    model = small_mlp(num_classes=2)
    assert set(model.params) == set(model.grads)
    assert list(model.params) == ["class_embed.weight", "layers.0.weight", "layers.0.bias",
                                  "layers.1.weight", "layers.1.bias", "out.weight", "out.bias"]
    assert model.params["layers.0.weight"].shape == (8, 2 + 8 + 4)
    assert model.params["out.weight"].shape == (2, 8)
    assert model.params["class_embed.weight"].shape == (3, 4)
    assert all(model.grads[k].shape == p.shape and p.dtype == np.float64 for k, p in model.params.items())
    assert model.num_parameters == sum(p.size for p in model.params.values())
    x, t, y, dout = batch(model)
    out = model.forward(x, t, y)
    assert out.shape == x.shape and out.dtype == np.float64
    dx = model.backward(dout)
    assert dx.shape == x.shape
    first = {k: g.copy() for k, g in model.grads.items()}
    model.forward(x, t, y)
    model.backward(dout)  # grads are overwritten, not accumulated
    for k in first:
        assert_close(model.grads[k], first[k], atol=0, rtol=0, name=k)


def test_call_is_forward_without_a_cache():
    model = small_mlp()
    x, t, _, dout = batch(model)
    assert model(x, t).tobytes() == model.forward(x, t).tobytes()
    model.backward(dout)
    with pytest.raises(RuntimeError, match="backward needs a preceding forward"):
        model.backward(dout)  # the cache is released after one backward
    model(x, t)
    with pytest.raises(RuntimeError, match="backward needs a preceding forward"):
        model.backward(dout)


def test_rows_are_independent_and_t_broadcasts():
    model = small_mlp(num_classes=4)
    x, t, y, _ = batch(model, n=6)
    full = model(x, t, y)
    assert_close(model(x[2:4], t[2:4], y[2:4]), full[2:4], atol=1e-15, rtol=1e-14, name="rows 2:4")
    assert_close(model(x, 7, y), model(x, np.full(6, 7), y), atol=0, rtol=0, name="int t")


def test_null_class_is_the_default_label_and_changes_the_output():
    model = small_mlp(num_classes=3)
    x, t, _, _ = batch(model)
    null = model(x, t, np.full(5, 3))
    assert model(x, t).tobytes() == null.tobytes()
    assert not np.allclose(model(x, t, np.zeros(5, dtype=np.int64)), null)


def test_float32_on_request():
    m64 = small_mlp(num_classes=2)
    m32 = small_mlp(num_classes=2, dtype=np.float32)
    assert all(p.dtype == np.float32 for p in m32.params.values())
    x, t, y, dout = batch(m64)
    out32 = m32.forward(x.astype(np.float32), t, y)
    assert out32.dtype == np.float32
    assert_close(out32, m64.forward(x, t, y), atol=1e-5, rtol=1e-5, name="float32 output")
    m32.backward(dout.astype(np.float32))
    m64.backward(dout)
    for name in m64.params:
        assert m32.grads[name].dtype == np.float32
        assert_close(m32.grads[name], m64.grads[name], atol=1e-5, rtol=1e-4, name=name)


def test_initialisation_is_seeded_and_state_dicts_round_trip():
    a, b, c = small_mlp(seed=1), small_mlp(seed=1), small_mlp(seed=2)
    assert all(a.params[k].tobytes() == b.params[k].tobytes() for k in a.params)
    assert not np.array_equal(a.params["out.weight"], c.params["out.weight"])
    bound = 1 / np.sqrt(a.input_dim)  # torch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(a.params["layers.0.weight"]).max() <= bound
    c.load_state_dict(a.state_dict())
    x, t, _, _ = batch(a)
    assert a(x, t).tobytes() == c(x, t).tobytes()
    clone = a.copy()
    clone.params["out.bias"] += 1.0  # independent storage
    assert not np.array_equal(clone.params["out.bias"], a.params["out.bias"])
    with pytest.raises(ValueError, match="state keys differ"):
        a.load_state_dict({"out.bias": np.zeros(2)})
    bad = a.state_dict()
    bad["out.bias"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"state\['out.bias'\] must have shape \(2,\)"):
        a.load_state_dict(bad)


UNCOND = small_mlp()
COND = small_mlp(num_classes=3)
X = np.zeros((2, 2))
T = np.array([0, 1])


@pytest.mark.parametrize("call, error, match", [
    (lambda: UNCOND.forward(np.zeros((2, 3)), T), ValueError, r"x_t must have shape \(N, 2\)"),
    (lambda: UNCOND.forward(np.zeros(2), T), ValueError, "x_t must have at least 2"),
    (lambda: UNCOND.forward(np.zeros((2, 2, 1)), T), ValueError, r"x_t must have shape \(N, 2\)"),
    (lambda: UNCOND.forward(X.astype(np.int64), T), TypeError, "x_t must have dtype float32 or float64"),
    (lambda: UNCOND.forward(np.full((2, 2), np.nan), T), ValueError, "x_t contains NaN"),
    (lambda: UNCOND.forward(X, np.array([0, 50])), ValueError, r"t must lie in \[0, 49\]"),
    (lambda: UNCOND.forward(X, np.array([-1, 0])), ValueError, "t must lie in"),
    (lambda: UNCOND.forward(X, np.array([0.0, 1.0])), TypeError, "t must be an int"),
    (lambda: UNCOND.forward(X, np.array([0, 1, 2])), ValueError, r"t must be an int or have shape \(2,\)"),
    (lambda: UNCOND.forward(X, T, np.array([0, 1])), ValueError, "y must be None for an unconditional model"),
    (lambda: COND.forward(X, T, np.array([0, 4])), ValueError, r"y must lie in \[0, 3\]"),
    (lambda: COND.forward(X, T, np.array([-1, 0])), ValueError, "y must lie in"),
    (lambda: COND.forward(X, T, np.array([0.0, 1.0])), TypeError, "y must be an integer array"),
    (lambda: COND.forward(X, T, np.array([0])), ValueError, r"y must have shape \(2,\)"),
    (lambda: (COND.forward(X, T), COND.backward(np.zeros((3, 2)))), ValueError, "dout must have the shape"),
    (lambda: (COND.forward(X, T), COND.backward(np.full((2, 2), np.inf))), ValueError, "dout contains NaN"),
    (lambda: MLP(activation="relu"), ValueError, "activation must be one of"),
    (lambda: MLP(time_embed_dim=5), ValueError, "time_embed_dim must be even and >= 4"),
    (lambda: MLP(hidden_dim=0), ValueError, "hidden_dim must be >= 1"),
    (lambda: MLP(num_layers=2.0), TypeError, "num_layers must be an int"),
    (lambda: MLP(num_classes=0), ValueError, "num_classes must be >= 1"),
    (lambda: MLP(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
