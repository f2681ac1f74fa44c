"""The EMA after a REAL Trainer step: shadow_after = d * shadow_before + (1 - d) * params_after.

tests/test_trainer.py checks ddpm.EMA on its own; here it is checked where the Trainer calls it,
so an update made before `optimizer.step()` (which averages the OLD weights) or with the wrong
decay shows up. Random weights and a large learning rate make every step move every weight by
~lr (Adam's first steps move a weight by ~lr sign(g)), so params_after and params_before differ
by far more than the tolerance.
"""

from __future__ import annotations

import pytest
import torch

import ddpm
import reference
from ddpm.data import ImageDataset
from ddpm.train import TrainConfig, Trainer
from helpers import assert_close, randomize_


def make_trainer(**overrides) -> Trainer:
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(16, 1, 4, 4, generator=g) * 2 - 1, torch.arange(16) % 3, 3, None, "tiny")
    model = randomize_(ddpm.UNet(reference.UNetConfig.tiny(num_classes=3)), seed=2)
    settings = dict(steps=10, batch_size=4, lr=1e-2, seed=1, label_dropout=0.2, ema_decay=0.95,
                    ema_warmup=True, grad_clip=1.0)
    settings.update(overrides)
    return Trainer(model, reference.make_schedule("linear", 30), TrainConfig(**settings), data)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_after_each_trainer_step_mixes_in_the_updated_weights(warmup):
    trainer = make_trainer(ema_warmup=warmup)
    for step in range(4):
        shadow_before = {k: v.clone() for k, v in trainer.ema.shadow.items()}
        params_before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        d = trainer.ema.current_decay()
        expected_d = min(0.95, (1 + step) / (10 + step)) if warmup else 0.95
        assert d == pytest.approx(expected_d, rel=1e-12)
        result = trainer.train_step()
        assert not result.skipped
        moved = 0.0
        for name, p in trainer.model.named_parameters():
            after = p.detach()
            moved = max(moved, float((after - params_before[name]).abs().max()))
            expected = d * shadow_before[name].double() + (1 - d) * after.double()
            # torch's lerp s + (1-d)(p - s) in float32 vs the float64 mix of the same float32
            # values: a few float32 ulps of |s|, |p| <~ 3, i.e. <= 1e-6
            assert_close(trainer.ema.shadow[name], expected, atol=1e-6, rtol=0, name=f"step {step} EMA {name}")
        # the step moved the weights by ~lr = 1e-2 >> 1e-6: an EMA of the weights BEFORE the step
        # would miss the bound by (1 - d) * 1e-2 >= 5e-4
        assert moved > 5e-3, moved
    assert trainer.ema.num_updates == 4
