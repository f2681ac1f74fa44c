"""reference.optim (Adam/AdamW, EMA, gradient clipping) and reference.train (the generic loop).

Adam and clipping are held to torch.optim / torch.nn.utils in float64; the training step is
checked piece by piece (random draws, loss, gradients, optimiser) and end to end (the loss falls,
runs resume exactly, sample i's draws do not depend on the batch).
"""

import copy

import numpy as np
import pytest
import torch

from helpers import assert_close
from reference import (
    EMA,
    MLP,
    TRAIN_STREAM_BASE,
    Adam,
    UNet,
    UNetConfig,
    clip_grad_norm,
    global_norm,
    make_schedule,
    make_dataset,
    min_snr_weights,
    normal,
    philox_words,
    q_sample,
    train_step,
    train_stream,
    training_draws,
    training_target,
    uint_to_uniform_float,
    weighted_mse,
    weighted_mse_backward,
)
from reference.train import train


def random_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}


# ----------------------------------------------------------------------------- Adam, clipping, EMA

@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_adam_and_adamw(weight_decay):
    params = random_params()
    torch_params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    lr = lambda step: 1e-2 * min(1.0, step / 5)  # noqa: E731 - a warmup, set by hand on torch's side
    ours = Adam(params, lr=lr, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    torch_cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    theirs = torch_cls(torch_params.values(), lr=1.0, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay,
                       foreach=False)
    rng = np.random.default_rng(1)
    for step in range(1, 21):
        grads = {k: rng.standard_normal(v.shape) * (1 + step) for k, v in params.items()}
        ours.step(grads)
        for group in theirs.param_groups:
            group["lr"] = lr(step)
        for k, p in torch_params.items():
            p.grad = torch.tensor(grads[k])
        theirs.step()
        for k in params:
            assert_close(params[k], torch_params[k].detach().numpy(), atol=1e-14, rtol=1e-12, name=f"{k} step {step}")
    assert ours.step_count == 20


def test_adam_first_step_moves_each_weight_by_lr():
    # bias correction: m_hat = g, v_hat = g^2, so the first update is lr g / (|g| + eps)
    params = {"p": np.array([1.0, -2.0, 3.0])}
    Adam(params, lr=0.1, eps=0.0).step({"p": np.array([5.0, -0.01, 1e-3])})
    assert_close(params["p"], [0.9, -1.9, 2.9], atol=1e-15, rtol=0, name="p")


def test_adam_state_dict_resumes_exactly():
    a, b = random_params(), random_params()
    opt_a, opt_b = Adam(a, lr=1e-2), Adam(b, lr=1e-2)
    rng = np.random.default_rng(2)
    grads = [{k: rng.standard_normal(v.shape) for k, v in a.items()} for _ in range(6)]
    for g in grads[:3]:
        opt_a.step(g)
        opt_b.step(g)
    resumed = Adam(b, lr=1e-2)
    resumed.load_state_dict(opt_b.state_dict())
    for g in grads[3:]:
        opt_a.step(g)
        resumed.step(g)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_clip_grad_norm_matches_torch():
    grads = random_params(3)
    torch_params = [torch.zeros(v.shape, dtype=torch.float64, requires_grad=True) for v in grads.values()]
    for p, g in zip(torch_params, grads.values()):
        p.grad = torch.tensor(g.copy())
    expected_norm = torch.nn.utils.clip_grad_norm_(torch_params, 1.5)
    norm = clip_grad_norm(grads, 1.5)
    assert_close(norm, expected_norm.item(), atol=0, rtol=1e-14, name="norm")
    for p, g in zip(torch_params, grads.values()):
        assert_close(g, p.grad.numpy(), atol=0, rtol=1e-14, name="clipped")
    assert_close(global_norm(grads), 1.5, atol=0, rtol=1e-6, name="norm after")
    small = {"g": np.array([0.3, 0.4])}
    assert clip_grad_norm(small, 1.0) == 0.5 and small["g"].tolist() == [0.3, 0.4]  # below: untouched


def test_ema_follows_its_closed_form():
    start = {"p": np.array([0.0, 10.0])}
    target = {"p": np.array([1.0, -1.0])}
    ema = EMA(start, decay=0.9)
    for _ in range(5):
        ema.update(target)
    # shadow_n = p + (shadow_0 - p) d^n for constant p
    assert_close(ema.shadow["p"], target["p"] + (start["p"] - target["p"]) * 0.9**5, atol=1e-15, rtol=1e-14,
                 name="shadow")
    warm = EMA(start, decay=0.999, warmup=True)
    assert [warm.decay_at(n) for n in (0, 1, 8990, 10**6)] == [0.1, 2 / 11, 0.999, 0.999]
    warm.update(target)  # d_0 = 0.1
    assert_close(warm.shadow["p"], 0.1 * start["p"] + 0.9 * target["p"], atol=1e-15, rtol=0, name="warmup")
    out = {"p": np.zeros(2)}
    warm.copy_to(out)
    assert out["p"].tobytes() == warm.shadow["p"].tobytes()
    assert start["p"].tolist() == [0.0, 10.0]  # the EMA keeps its own copy
    restored = EMA(start, decay=0.999, warmup=True)
    restored.load_state_dict(warm.state_dict())
    assert restored.num_updates == 1 and restored.shadow["p"].tobytes() == warm.shadow["p"].tobytes()


# ----------------------------------------------------------------------------- training draws

def test_training_draws_are_the_documented_noise_stream_words():
    samples = np.array([5, 0, 77])
    t, drop, stream = training_draws(11, samples, 3, 1000, label_dropout=0.5)
    assert stream == train_stream(3) == TRAIN_STREAM_BASE + 3
    words = philox_words(11, samples, TRAIN_STREAM_BASE + 3, 1)[:, 0]
    assert t.tolist() == [(int(w) * 1000) >> 32 for w in words[:, 2]]
    assert drop.tolist() == (uint_to_uniform_float(words[:, 3]) < np.float32(0.5)).tolist()


def test_training_draws_keep_their_numbers():
    """Pinned values (the draws before they became one public function): resumed runs and old
    checkpoints train on the same t and dropped labels; 2**64 - 1 is a valid seed."""
    t, drop, _ = training_draws(2**64 - 1, np.array([0, 3, 7, 2**32 - 1]), 12, 1000, 0.5)
    assert t.tolist() == [573, 583, 795, 508] and drop.tolist() == [False, True, False, True]
    t, drop, _ = training_draws(5, np.arange(8), 3, 50, 0.3)
    assert t.tolist() == [26, 40, 31, 36, 0, 9, 39, 25]
    assert drop.tolist() == [False, True, False, True, False, False, True, False]


def test_training_draws_of_a_sample_do_not_depend_on_the_batch():
    full = training_draws(4, np.arange(10), 9, 100, 0.3)
    part = training_draws(4, np.array([8, 2]), 9, 100, 0.3)
    for a, b in zip(full[:2], part[:2]):
        assert a[[8, 2]].tobytes() == b.tobytes()
    assert full.stream == part.stream


def test_training_timesteps_are_uniform_and_dropout_has_its_rate():
    t, drop, _ = training_draws(0, np.arange(100_000), 0, 10, label_dropout=0.2)
    counts = np.bincount(t, minlength=10)
    assert t.min() == 0 and t.max() == 9
    chi2 = np.sum((counts - 10_000) ** 2 / 10_000)
    assert chi2 < 33.7  # chi-square, 9 degrees of freedom: P(> 33.7) = 1e-4
    assert abs(drop.mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / 100_000)


# ----------------------------------------------------------------------------- train_step

def conditional_mlp():
    return MLP(hidden_dim=8, num_layers=2, time_embed_dim=8, num_timesteps=40, num_classes=3, seed=0)


def conditional_unet():  # the generic loop drives the reference UNet through the same protocol
    # zero_init off: the DDPM init's zero output layer would make the loss blind to x_t, t and y
    return UNet(UNetConfig.tiny(num_classes=3), zero_init=False)


@pytest.mark.parametrize("prediction, gamma, make_model", [
    ("epsilon", None, conditional_mlp), ("sample", 5.0, conditional_mlp), ("v_prediction", 1.0, conditional_mlp),
    ("epsilon", 5.0, conditional_unet)])
def test_train_step_is_the_loss_of_its_draws_then_one_adam_step(prediction, gamma, make_model):
    s = make_schedule("cosine", 40)
    model = make_model()
    reference_model = copy.deepcopy(model)
    shape = (2,) if isinstance(model, MLP) else (1, 4, 4)
    x0 = np.random.default_rng(0).standard_normal((6, *shape))
    y = np.array([0, 1, 2, 0, 1, 2])
    samples = np.arange(10, 16)
    record = train_step(model, Adam(model.params, lr=1e-2), x0, s, seed=7, step=4, y=y, samples=samples,
                        prediction=prediction, min_snr_gamma=gamma, label_dropout=0.5)
    # the same step by hand: the draws, and the noise of their stream
    t, drop, stream = training_draws(7, samples, 4, 40, 0.5)
    noise = normal(7, samples, stream, shape)
    labels = np.where(drop, 3, y)
    x_t = q_sample(x0, t, noise.astype(np.float64), s)
    out = reference_model.forward(x_t, t, labels)
    weights = None if gamma is None else min_snr_weights(t, s, prediction, gamma)
    loss, cache = weighted_mse(out, training_target(x0, noise.astype(np.float64), t, s, prediction), weights)
    assert_close(record["loss"], loss, atol=0, rtol=1e-14, name="loss")
    reference_model.backward(weighted_mse_backward(cache))
    assert_close(record["grad_norm"], global_norm(reference_model.grads), atol=0, rtol=1e-12, name="grad norm")
    Adam(reference_model.params, lr=1e-2).step(reference_model.grads)
    for k in model.params:
        assert_close(model.params[k], reference_model.params[k], atol=1e-15, rtol=1e-12, name=k)


def test_train_step_clips_and_updates_the_ema():
    s = make_schedule("linear", 20)
    model = MLP(hidden_dim=8, num_layers=1, time_embed_dim=8, num_timesteps=20)
    ema = EMA(model.params, decay=0.5)
    before = {k: v.copy() for k, v in model.params.items()}
    x0 = np.random.default_rng(1).standard_normal((4, 2)) * 50  # a big loss, so a big gradient
    record = train_step(model, Adam(model.params, lr=1e-3), x0, s, 0, 0, grad_clip=1e-3, ema=ema)
    assert record["grad_norm"] > 1e-3  # reported before clipping
    assert_close(global_norm(model.grads), 1e-3, atol=0, rtol=1e-5, name="clipped norm")
    for k in model.params:
        assert_close(ema.shadow[k], 0.5 * before[k] + 0.5 * model.params[k], atol=1e-15, rtol=1e-12, name=k)


def test_train_lowers_the_loss_and_resumes_exactly():
    s = make_schedule("linear", 50, rescale=True)
    data, labels = make_dataset("8gaussians", 4000, seed=0)

    def fresh():
        return MLP(hidden_dim=32, num_layers=2, num_timesteps=50, num_classes=8, seed=1)

    model = fresh()
    history = train(model, data, s, steps=400, batch_size=64, seed=3, y=labels, label_dropout=0.1,
                    optimizer=Adam(model.params, lr=3e-3))
    assert len(history["loss"]) == 400 and len(history["grad_norm"]) == 400
    first, last = np.mean(history["loss"][:50]), np.mean(history["loss"][-50:])
    assert last < 0.75 * first, (first, last)
    # 30 steps in one go == 15 steps, then 15 more from start_step=15 with the optimiser's state
    a, b = fresh(), fresh()
    opt_a, opt_b = Adam(a.params, lr=1e-3), Adam(b.params, lr=1e-3)
    train(a, data, s, steps=30, batch_size=16, seed=5, optimizer=opt_a)
    train(b, data, s, steps=15, batch_size=16, seed=5, optimizer=opt_b)
    resumed = Adam(b.params, lr=1e-3)
    resumed.load_state_dict(opt_b.state_dict())
    train(b, data, s, steps=15, batch_size=16, seed=5, optimizer=resumed, start_step=15)
    assert all(a.params[k].tobytes() == b.params[k].tobytes() for k in a.params)


# ----------------------------------------------------------------------------- bad input

S = make_schedule("linear", 10)
M = MLP(hidden_dim=4, num_layers=1, time_embed_dim=4, num_timesteps=10)
MC = MLP(hidden_dim=4, num_layers=1, time_embed_dim=4, num_timesteps=10, num_classes=2)
X = np.zeros((3, 2))


@pytest.mark.parametrize("call, error, match", [
    (lambda: Adam({}, lr=1e-3), TypeError, "params must be a non-empty dict"),
    (lambda: Adam({"w": np.zeros(2, np.int64)}), TypeError, r"params\['w'\] must be a float32/float64"),
    (lambda: Adam(random_params(), lr=-1.0), ValueError, "lr must lie in"),
    (lambda: Adam(random_params(), betas=(0.9, 1.0)), ValueError, r"betas\[1\] must lie in \[0.0, 1.0\)"),
    (lambda: Adam(random_params(), betas=0.9), TypeError, "betas must be a pair"),
    (lambda: Adam(random_params(), weight_decay=float("nan")), ValueError, "weight_decay"),
    (lambda: Adam(random_params()).step({"w": np.zeros((3, 4))}), ValueError, r"grads keys differ.*missing \['b'\]"),
    (lambda: Adam(random_params()).step({"w": np.zeros((3, 4)), "b": np.zeros(3)}), ValueError,
     r"grads\['b'\] must have shape \(4,\)"),
    (lambda: Adam(random_params()).step({"w": np.full((3, 4), np.nan), "b": np.zeros(4)}), ValueError,
     r"grads\['w'\] contains NaN"),
    (lambda: Adam(random_params(), lr=lambda s: -1.0).step({"w": np.zeros((3, 4)), "b": np.zeros(4)}),
     ValueError, r"lr\(step\) must lie in"),
    (lambda: EMA(random_params(), decay=1.5), ValueError, "decay must lie in"),
    (lambda: EMA(random_params()).update({"w": np.zeros((3, 4))}), ValueError, "params keys differ"),
    (lambda: clip_grad_norm(random_params(), 0.0), ValueError, "max_norm must be > 0"),
    (lambda: train_step(M, Adam(M.params), X, S, 0, 0, y=np.zeros(3, np.int64)), ValueError,
     "y was given but the model has no num_classes"),
    (lambda: train_step(M, Adam(M.params), X, S, 0, 0, label_dropout=0.1), ValueError,
     "label_dropout needs a conditional model"),
    (lambda: train_step(MC, Adam(MC.params), X, S, 0, 0, y=np.zeros(2, np.int64)), TypeError,
     r"y must be an integer array of shape \(3,\)"),
    (lambda: train_step(MC, Adam(MC.params), X, S, 0, 0, label_dropout=1.5), ValueError,
     r"label_dropout must lie in \[0, 1\]"),
    (lambda: train_step(MC, Adam(MC.params), X, S, 0, 0, label_dropout="0.1"), TypeError,
     "label_dropout must be a number"),
    (lambda: train_step(M, Adam(M.params), X, S, 0, 0, prediction="x0"), ValueError, "prediction must be one of"),
    (lambda: train_step(M, Adam(M.params), X, "linear", 0, 0), TypeError, "schedule must be a reference Schedule"),
    (lambda: train_step(M, Adam(M.params), np.full((3, 2), np.nan), S, 0, 0), ValueError, "x0 contains NaN"),
    (lambda: train_step(M, Adam(M.params), np.zeros(3), S, 0, 0), ValueError, "x0 must have at least 2"),
    (lambda: train_step(M, Adam(M.params), X, S, 0, -1), ValueError, "step must lie in"),
    (lambda: train_step(M, Adam(M.params), X, S, 0, 0, samples=np.arange(4)), ValueError,
     r"samples must have shape \(3,\)"),
    (lambda: train_step(M, Adam(M.params), X, S, -5, 0), ValueError, "seed must lie in"),
    (lambda: train(M, X, S, steps=-1, batch_size=2), ValueError, "need steps >= 0"),
    (lambda: train(M, X, S, steps=1, batch_size=0), ValueError, "batch_size >= 1"),
    (lambda: train(M, X, S, steps=1.5, batch_size=2), TypeError, "steps must be an int"),
    (lambda: train(MC, X, S, steps=1, batch_size=2, y=np.zeros(2, np.int64)), ValueError,
     r"y must have shape \(3,\)"),
])
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_train_step_runs_the_model_in_training_mode():
    """train_step calls forward(..., train=True): the UNet's dropout is on while training."""
    from reference import UNet, UNetConfig

    schedule = make_schedule("linear", 50)
    model = UNet(UNetConfig.tiny(dropout=0.5), seed=0, zero_init=False)
    optimizer = Adam(model.params, lr=1e-3)
    x0 = np.random.default_rng(0).standard_normal((3, 1, 4, 4))
    train_step(model, optimizer, x0, schedule, seed=0, step=0)
    masks = model.last_dropout_masks
    assert masks and all(np.any(m == 0) for m in masks.values())


def test_dropout_masks_depend_on_sample_index_and_step_only():
    """The UNet's dropout masks in train_step come from the noise stream: sample i's masks are the
    same whatever batch it is in, and differ between steps (so a resumed run draws the same)."""
    from reference import UNet, UNetConfig

    schedule = make_schedule("linear", 50)
    x0 = np.random.default_rng(0).standard_normal((3, 1, 4, 4))
    seen = {}
    for rows, samples in (([0, 1, 2], [0, 1, 2]), ([2], [2])):
        model = UNet(UNetConfig.tiny(dropout=0.5), seed=0, zero_init=False)
        train_step(model, Adam(model.params, lr=1e-3), x0[rows], schedule, seed=7, step=3, samples=samples)
        seen[len(rows)] = {k: v[-1] for k, v in model.last_dropout_masks.items()}
    assert seen[1].keys() == seen[3].keys()
    assert all(np.array_equal(seen[1][k], seen[3][k]) for k in seen[1])
    model = UNet(UNetConfig.tiny(dropout=0.5), seed=0, zero_init=False)
    train_step(model, Adam(model.params, lr=1e-3), x0[[2]], schedule, seed=7, step=4, samples=[2])
    assert any(not np.array_equal(seen[1][k], model.last_dropout_masks[k][-1]) for k in seen[1])
