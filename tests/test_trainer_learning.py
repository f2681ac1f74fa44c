"""ddpm.Trainer against the reference training chain on RANDOM weights, and learning for real.

The Trainer's own tests (tests/test_trainer.py) start from the DDPM initialisation, whose output
layer is zero: the net then outputs 0 whatever x_t, t and y are, and a trainer that fed x0 for
x_t, or the wrong t, would compute the same loss. Here every parameter is random
(helpers.randomize_), so the loss, the gradients, the Adam/clipping update and the EMA all
depend on every input, and each is held to the NumPy reference chain of the same step:

    reference.train_step = training_draws (t, noise, label dropout from the noise stream)
                           -> q_sample -> reference.UNet -> training_target -> weighted_mse
                           -> backward -> clip_grad_norm -> Adam -> EMA

on the same weights (float64) and the same global-batch rows. Then a short digits run shows the
loss of the torch Trainer falling by half (a trainer fed x0 instead of x_t stays at ~1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm.data import ImageDataset, load_digits
from ddpm.train import TrainConfig, Trainer
from helpers import assert_close, randomize_

SCHEDULE = reference.make_schedule("linear", 50)
SEED = 7


def tiny_dataset(n: int = 30, classes: int = 3) -> ImageDataset:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    return ImageDataset(images, torch.arange(n) % classes, classes, None, "tiny", hflip=True)


def random_trainer(**overrides) -> Trainer:
    config = reference.UNetConfig.tiny(num_classes=3)
    model = randomize_(ddpm.UNet(config), seed=11)
    settings = dict(steps=10, batch_size=6, lr=1e-3, seed=SEED, label_dropout=0.4, grad_clip=None,
                    ema_decay=0.9, ema_warmup=True, adam_eps=1e-3, weight_decay=0.0)
    settings.update(overrides)
    return Trainer(model, SCHEDULE, TrainConfig(**settings), tiny_dataset())


def reference_twin(trainer: Trainer):
    """reference.UNet / Adam / EMA holding the trainer's current weights in float64."""
    params = {k: v.detach().double().numpy().copy() for k, v in trainer.model.state_dict().items()}
    net = reference.UNet(trainer.unet_config, params=params)
    cfg = trainer.config
    adam = reference.Adam(net.params, lr=cfg.lr_at, betas=(cfg.adam_beta1, cfg.adam_beta2),
                          eps=cfg.adam_eps, weight_decay=0.0)
    ema = reference.EMA(net.params, decay=cfg.ema_decay, warmup=cfg.ema_warmup)
    return net, adam, ema


def record_batches(trainer: Trainer) -> list:
    """Wrap trainer._draw_batch so each step's (x0, t, y, samples) is kept for the reference."""
    batches, draw = [], trainer._draw_batch

    def spy():
        batches.append(draw())
        return batches[-1]

    trainer._draw_batch = spy
    return batches


# Tolerances. The trainer runs in float32, the reference in float64, on the same weights and
# draws; a tiny UNet's float32 forward/backward is good to ~1e-6 relative (measured: loss 2e-7,
# grad norm 5e-7), so loss and gradient norm are held to rtol 1e-5. Adam's first steps move a
# weight by lr * g / (|g| + eps): with eps = 1e-3 (not 1e-8) that is Lipschitz in g with constant
# lr / eps = 1, so the float32 gradient error (<= 1e-6 absolute) moves a weight by <= 1e-6; with
# eps = 1e-8, gradients that are zero in exact arithmetic (to_k.bias) but 1e-9 in float32 would
# move by lr/10 in a random direction. The EMA is a convex mix of those weights: same bound.
LOSS_RTOL = 1e-5
PARAM_ATOL = 2e-6


@pytest.mark.parametrize("prediction, gamma, clip", [("epsilon", None, None), ("v_prediction", 5.0, 0.05),
                                                     ("sample", 1.0, None)])
def test_trainer_steps_are_the_reference_chain_on_random_weights(prediction, gamma, clip):
    trainer = random_trainer(prediction=prediction, min_snr_gamma=gamma, grad_clip=clip)
    net, adam, ema = reference_twin(trainer)
    with torch.no_grad():  # the random weights really make the output depend on x_t, t and y
        x = torch.randn(2, 1, 4, 4)
        out = trainer.model(x, torch.tensor([3, 3]), torch.tensor([1, 1]))
        assert not torch.allclose(out, trainer.model(x, torch.tensor([40, 40]), torch.tensor([1, 1])))
        assert not torch.allclose(out, trainer.model(x, torch.tensor([3, 3]), torch.tensor([2, 2])))
        assert not torch.allclose(out, trainer.model(0.5 * x, torch.tensor([3, 3]), torch.tensor([1, 1])))
    batches = record_batches(trainer)
    clipped = False
    for step in range(3):
        result = trainer.train_step()
        x0, t, y, samples = batches[step]
        # y already carries the trainer's label dropout; the reference draws the same t and noise
        # from (seed, samples, step) itself (training_draws), so a wrong t or x_t shows up here
        record = reference.train_step(net, adam, x0.double().numpy(), SCHEDULE, SEED, step, y.numpy(),
                                      samples=samples.numpy(), prediction=prediction, min_snr_gamma=gamma,
                                      ema=ema, grad_clip=clip)  # no label dropout of its own
        assert result.loss == pytest.approx(record["loss"], rel=LOSS_RTOL), f"loss of step {step}"
        assert result.grad_norm == pytest.approx(record["grad_norm"], rel=LOSS_RTOL), f"grad norm of step {step}"
        clipped |= clip is not None and record["grad_norm"] > clip
        for name, value in trainer.model.state_dict().items():
            assert_close(value, net.params[name], atol=PARAM_ATOL, rtol=0, name=f"step {step} {name}")
        for name, value in trainer.ema.shadow.items():
            assert_close(value, ema.shadow[name], atol=PARAM_ATOL, rtol=0, name=f"step {step} EMA {name}")
    assert (y == 3).any() or prediction != "epsilon"  # label dropout happened in the checked steps
    assert clipped == (clip is not None)  # clipping was active where asked for


def test_compute_loss_and_gradients_are_the_reference_objective_on_random_weights():
    """compute_loss on chosen inputs == reference weighted MSE; every parameter gradient ==
    the reference UNet's backward of it (float32 vs float64: rtol 1e-4 of each tensor's max)."""
    trainer = random_trainer(prediction="v_prediction", min_snr_gamma=2.0)
    x0 = tiny_dataset().images[:4]
    t = torch.tensor([0, 17, 33, 49])
    y = torch.tensor([0, 1, 2, 3])  # 3 = the null class
    samples = torch.tensor([5, 1, 4, 0])
    step = 4
    loss = trainer.compute_loss(x0, t, y, samples, step)
    loss.backward()

    net, _, _ = reference_twin(trainer)
    x0_np, t_np = x0.double().numpy(), t.numpy()
    eps = reference.normal(SEED, samples.numpy(), reference.train_stream(step), (1, 4, 4)).astype(np.float64)
    x_t = reference.q_sample(x0_np, t_np, eps, SCHEDULE)
    out = net.forward(x_t, t_np, y.numpy())
    target = reference.training_target(x0_np, eps, t_np, SCHEDULE, "v_prediction")
    weights = reference.min_snr_weights(t_np, SCHEDULE, "v_prediction", 2.0)
    expected, cache = reference.weighted_mse(out, target, weights)
    net.backward(reference.weighted_mse_backward(cache))
    assert float(loss.detach()) == pytest.approx(expected, rel=LOSS_RTOL)
    for name, p in trainer.model.named_parameters():
        scale = max(float(np.abs(net.grads[name]).max()), 1e-3)
        assert_close(p.grad, net.grads[name], atol=1e-4 * scale, rtol=0, name=f"d{name}")


# ----------------------------------------------------------------------------- learning

def test_a_short_digits_run_halves_the_loss():
    """100 steps of the torch Trainer on the embedded 8x8 digits, a small class-conditional UNet.

    The epsilon loss starts at ~1 (the DDPM init outputs 0, so the loss is E|eps|^2 = 1) and
    falls to ~0.2 (measured 0.93 -> 0.19, last 20 steps); the bound is half the first 10 steps'
    mean. A trainer that fed x0 (or x_t with the wrong t) cannot predict eps and stays near 1.
    """
    torch.manual_seed(0)
    config = reference.UNetConfig.digits8(num_classes=10, ch=8, attn_resolutions=(), groups=4)
    trainer = Trainer(ddpm.UNet(config), reference.make_schedule("linear", 1000),
                      TrainConfig(steps=100, batch_size=16, lr=3e-3, warmup_steps=10, ema_decay=0.99,
                                  label_dropout=0.1, seed=0), load_digits())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: more threads only add contention (~8 s here)
    try:
        trainer.fit(progress=False)
    finally:
        torch.set_num_threads(threads)
    losses = trainer.history["loss"]
    assert all(math.isfinite(v) for v in losses) and trainer.skipped_steps == 0
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-20:]))
    assert first > 0.7, first  # the untrained net: E|eps|^2 = 1 up to batch noise
    assert last <= 0.5 * first, (first, last)
