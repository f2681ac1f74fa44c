"""reference.attention: softmax, scaled dot-product attention and the UNet's attention block.

Finite-difference bound: central differences, eps = 1e-6, loss = sum(g * out) of O(1) values:
truncation O(eps^2) ~ 1e-12, round-off ~ u |loss| / eps ~ 1e-9 of O(1) gradients -> rtol 1e-7.
The block is also compared with diffusers' `Attention` (as UNet2DModel builds it) in float64,
loaded by the same parameter names: an independent implementation of the same semantics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference.attention import (
    ATTENTION_PARAMETERS,
    attention_block,
    attention_block_backward,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    softmax,
    softmax_backward,
)
from tests.helpers import assert_close, check_gradient, numerical_gradient

FD_RTOL = 1e-7

# name: ((N, C, H, W), groups, heads) -- the edge shapes by name
BLOCK_CASES = {
    "odd_hw_one_head": ((2, 4, 3, 5), 2, 1),
    "two_heads": ((1, 6, 2, 3), 3, 2),
    "groups_1": ((2, 3, 2, 2), 1, 1),
    "groups_eq_C_heads_eq_C": ((1, 4, 2, 1), 4, 4),
    "hw_1": ((3, 4, 1, 1), 2, 2),      # one position: P = 1, q and k get no gradient
}


def _block_params(c, rng):
    params = {}
    for name in ATTENTION_PARAMETERS:
        shape = (c,) if name.endswith("bias") or name.startswith("group_norm") else (c, c)
        params[name] = rng.normal(size=shape) * (1.0 if len(shape) == 1 else 1.0 / np.sqrt(c))
    params["group_norm.weight"] += 1.0
    return params


def test_softmax_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 5)) * 3
    p, cache = softmax(scores)
    assert_close(p.sum(axis=-1), np.ones((2, 3)), atol=1e-15, rtol=0, name="row sums")
    g = rng.normal(size=p.shape)
    check_gradient(lambda: float(np.sum(g * softmax(scores)[0])), scores, softmax_backward(g, cache),
                   rtol=FD_RTOL, name="dscores")


def test_softmax_is_stable_for_large_scores():
    p, _ = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.all(np.isfinite(p)) and p[0, 0] == 1.0


@pytest.mark.parametrize("length", [1, 4, 7])
def test_scaled_dot_product_attention_backward_matches_finite_differences(length):
    rng = np.random.default_rng(length)
    q, k, v = (rng.normal(size=(2, 2, length, 3)) for _ in range(3))
    scale = 1 / np.sqrt(3)
    o, cache = scaled_dot_product_attention(q, k, v, scale)
    ref = torch.nn.functional.scaled_dot_product_attention(*(torch.tensor(a) for a in (q, k, v)))
    assert_close(o, ref, atol=1e-13, rtol=1e-12, name="o vs torch sdpa")
    g = rng.normal(size=o.shape)
    dq, dk, dv = scaled_dot_product_attention_backward(g, cache)

    def loss():
        return float(np.sum(g * scaled_dot_product_attention(q, k, v, scale)[0]))

    for name, arr, grad in [("dq", q, dq), ("dk", k, dk), ("dv", v, dv)]:
        check_gradient(loss, arr, grad, rtol=FD_RTOL, name=name)


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_attention_block_backward_matches_finite_differences(case):
    shape, groups, heads = BLOCK_CASES[case]
    rng = np.random.default_rng(len(case))
    x = rng.normal(size=shape)
    params = _block_params(shape[1], rng)
    out, cache = attention_block(x, params, groups, 1e-6, heads)
    g = rng.normal(size=out.shape)
    dx, grads = attention_block_backward(g, cache)
    assert set(grads) == set(ATTENTION_PARAMETERS)

    def loss():
        return float(np.sum(g * attention_block(x, params, groups, 1e-6, heads)[0]))

    check_gradient(loss, x, dx, rtol=FD_RTOL, name=f"{case} dx")
    # Exact zeros: softmax is invariant to a shift shared by all keys, so q . b_k changes nothing;
    # with one position (P = 1) neither q nor k matters. A relative FD error is meaningless
    # there: the analytic gradient must be 0 up to round-off and the FD estimate within its noise.
    zero = {"to_k.bias"} | ({"to_q.weight", "to_q.bias", "to_k.weight"} if shape[2] * shape[3] == 1 else set())
    for name in ATTENTION_PARAMETERS:
        if name in zero:
            assert np.max(np.abs(grads[name])) <= 1e-13, f"{case} d{name} should vanish"
            assert np.max(np.abs(numerical_gradient(loss, params[name]))) <= 1e-8
        else:
            check_gradient(loss, params[name], grads[name], rtol=FD_RTOL, name=f"{case} d{name}")


@pytest.mark.parametrize("case", ["odd_hw_one_head", "two_heads", "hw_1"])
def test_attention_block_matches_diffusers_attention(case):
    pytest.importorskip("diffusers", reason="diffusers is the optional peer implementation")
    from diffusers.models.attention_processor import Attention

    shape, groups, heads = BLOCK_CASES[case]
    c = shape[1]
    rng = np.random.default_rng(42)
    x = rng.normal(size=shape)
    params = _block_params(c, rng)
    # exactly as diffusers' AttnDownBlock2D / UNetMidBlock2D build it
    module = Attention(c, heads=heads, dim_head=c // heads, rescale_output_factor=1.0, eps=1e-6,
                       norm_num_groups=groups, residual_connection=True, bias=True,
                       upcast_softmax=True, _from_deprecated_attn_block=True).double()
    module.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=True)
    xt = torch.tensor(x, requires_grad=True)
    ref = module(xt)
    g = rng.normal(size=shape)
    ref.backward(torch.tensor(g))

    out, cache = attention_block(x, params, groups, 1e-6, heads)
    dx, grads = attention_block_backward(g, cache)
    assert_close(out, ref, atol=1e-12, rtol=1e-12, name="out")
    assert_close(dx, xt.grad, atol=1e-12, rtol=1e-11, name="dx")
    for name, p in module.named_parameters():
        assert_close(grads[name], p.grad, atol=1e-12, rtol=1e-11, name=f"d{name}")


# ----------------------------------------------------------------------------- bad inputs

def test_attention_block_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 4, 2, 2))
    params = _block_params(4, rng)
    with pytest.raises(ValueError, match="groups=3"):
        attention_block(x, params, 3)
    with pytest.raises(ValueError, match="num_heads"):
        attention_block(x, params, 2, num_heads=3)
    with pytest.raises(ValueError, match=r"missing \['to_k.bias'\]"):
        attention_block(x, {k: v for k, v in params.items() if k != "to_k.bias"}, 2)
    with pytest.raises(ValueError, match=r"to_v.weight must have shape \(4, 4\)"):
        attention_block(x, {**params, "to_v.weight": np.zeros((4, 3))}, 2)
    with pytest.raises(TypeError, match="x must have dtype"):
        attention_block(x.astype(np.int64), params, 2)
    with pytest.raises(ValueError, match="x must have at least 4"):
        attention_block(x[0], params, 2)
