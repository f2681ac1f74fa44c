"""ddpm.Trainer and ddpm.EMA: the objective as the reference defines it, the optimiser's extras,
non-finite step skipping, and bad inputs."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm.data import ImageDataset
from ddpm.distributed import DistributedContext
from ddpm.ema import EMA
from ddpm.train import NonFiniteLossError, TrainConfig, Trainer
from helpers import assert_close

SCHEDULE = reference.make_schedule("linear", 50)


def tiny_dataset(n: int = 24, classes: int | None = 3, seed: int = 0, hflip: bool = False,
                 size: int = 4, channels: int = 1) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, size, size, generator=g) * 2 - 1
    if classes is None:
        return ImageDataset(images, None, None, None, "tiny", hflip=hflip)
    return ImageDataset(images, torch.arange(n) % classes, classes, None, "tiny", hflip=hflip)


def make_trainer(num_classes: int | None = 3, dataset=None, **overrides) -> Trainer:
    torch.manual_seed(0)
    settings = dict(steps=10, batch_size=6, lr=1e-3, seed=5, label_dropout=0.0)
    settings.update(overrides)
    model = ddpm.UNet(reference.UNetConfig.tiny(num_classes=num_classes))
    data = dataset if dataset is not None else tiny_dataset(classes=num_classes)
    return Trainer(model, SCHEDULE, TrainConfig(**settings), data)


# ----------------------------------------------------------------------------- the objective

@pytest.mark.parametrize("prediction, gamma", [("epsilon", None), ("v_prediction", 5.0), ("sample", 1.0)])
def test_loss_is_the_reference_objective_with_the_training_noise_stream(prediction, gamma):
    """compute_loss == weighted_mse(model(q_sample(x0, t, eps)), training_target) with
    eps = reference.normal(seed, global positions, TRAIN_STREAM_BASE + step)."""
    trainer = make_trainer(prediction=prediction, min_snr_gamma=gamma)
    step = 7
    x0 = tiny_dataset().images[:4]
    t = torch.tensor([0, 13, 31, 49])
    y = torch.tensor([0, 1, 2, 3])  # 3 = the null class
    samples = torch.tensor([2, 3, 4, 5])  # this rank's positions in the global batch
    loss = trainer.compute_loss(x0, t, y, samples, step)

    x0_np, t_np = x0.double().numpy(), t.numpy()
    eps = reference.normal(5, samples.numpy(), reference.TRAIN_STREAM_BASE + step, (1, 4, 4))
    x_t = reference.q_sample(x0_np, t_np, eps.astype(np.float64), SCHEDULE)
    with torch.no_grad():
        out = trainer.model(torch.from_numpy(x_t).float(), t, y).double().numpy()
    target = reference.training_target(x0_np, eps.astype(np.float64), t_np, SCHEDULE, prediction)
    weights = reference.min_snr_weights(t_np, SCHEDULE, prediction, gamma)
    expected, _ = reference.weighted_mse(out, target, weights)
    # float32 x_t and model vs the float64 reference chain: a few float32 ulps of the loss
    assert_close(loss.detach(), np.float64(expected), atol=1e-6, rtol=1e-5, name="loss")


def test_global_batch_draws_are_sliced_by_rank():
    """What rank r of W trains on is rows [r B/W, (r+1) B/W) of the single-process batch."""
    single = make_trainer(batch_size=6, label_dropout=0.5)
    x_all, t_all, y_all, s_all = single._draw_batch()
    for rank in range(2):
        trainer = make_trainer(batch_size=6, label_dropout=0.5)
        trainer.ctx = DistributedContext(rank=rank, world_size=2)
        x, t, y, s = trainer._draw_batch()
        rows = slice(3 * rank, 3 * rank + 3)
        assert torch.equal(x, x_all[rows]) and torch.equal(t, t_all[rows])
        assert torch.equal(y, y_all[rows]) and torch.equal(s, s_all[rows])
    assert s_all.tolist() == list(range(6))


def test_label_dropout_uses_the_null_class_at_the_requested_rate():
    trainer = make_trainer(batch_size=24, label_dropout=0.25)
    labels = []
    for step in range(100):  # the draws are keyed by the step's noise-stream counters
        trainer.step = step
        labels.append(trainer._draw_batch()[2])
    labels = torch.cat(labels)
    null = (labels == trainer.model.null_class).float().mean().item()
    assert abs(null - 0.25) < 0.03  # 2400 draws: 3 sigma of a binomial is ~0.027
    assert labels.max() == 3 and labels.min() == 0
    none = make_trainer(batch_size=24, label_dropout=0.0)
    assert not (none._draw_batch()[2] == 3).any()


def test_timesteps_and_label_dropout_are_the_reference_training_draws():
    """t and the dropped labels of a step are reference.training_draws of the same (seed, global
    sample indices, step): the torch trainer and the NumPy reference draw the same numbers."""
    from reference.train import training_draws

    trainer = make_trainer(batch_size=8, label_dropout=0.3)
    for step in (0, 5):
        trainer.step = step
        _, t, y, samples = trainer._draw_batch()
        t_ref, drop_ref, _ = training_draws(trainer.config.seed, samples.cpu().numpy(), step,
                                            trainer.schedule.T, 0.3)
        assert t.cpu().tolist() == t_ref.tolist()
        assert ((y == trainer.model.null_class).cpu().numpy() == drop_ref).all()


def test_every_seed_of_the_noise_stream_trains():
    """One seed range for the house: training takes the noise stream's whole [0, 2**64)."""
    from reference.train import training_draws

    trainer = make_trainer(batch_size=6, label_dropout=0.5, seed=2**64 - 1)
    _, t, y, samples = trainer._draw_batch()
    t_ref, drop_ref, _ = training_draws(2**64 - 1, samples.numpy(), 0, trainer.schedule.T, 0.5)
    assert t.tolist() == t_ref.tolist() and ((y == 3).numpy() == drop_ref).all()
    assert not trainer.train_step().skipped
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64\), got 18446744073709551616"):
        TrainConfig(seed=2**64)


def test_horizontal_flip_only_when_the_data_allows_it():
    data = tiny_dataset(n=6, hflip=True)
    trainer = make_trainer(dataset=data, batch_size=6)
    x, *_ = trainer._draw_batch()
    originals = data.images[torch.from_numpy(np.random.default_rng([5, 0]).permutation(6))]
    flipped = [torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(x, originals)]
    kept = [torch.equal(a, b) for a, b in zip(x, originals)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    data.hflip = False
    trainer = make_trainer(dataset=data, batch_size=6)
    assert torch.equal(trainer._draw_batch()[0], originals)


# ----------------------------------------------------------------------------- optimiser extras

def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    assert cfg.lr_at(0) == pytest.approx(1e-4) and cfg.lr_at(9) == pytest.approx(1e-3)
    assert cfg.lr_at(60) == pytest.approx(0.5e-3) and cfg.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    constant = TrainConfig(lr=1e-3, warmup_steps=4)
    assert [constant.lr_at(k) for k in (0, 3, 4, 1000)] == pytest.approx([2.5e-4, 1e-3, 1e-3, 1e-3])
    trainer = make_trainer(lr=1e-3, warmup_steps=4)
    assert [trainer.train_step().lr for _ in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_gradient_clipping_bounds_the_global_norm():
    trainer = make_trainer(grad_clip=0.01)
    x0, t, y, s = trainer._draw_batch()
    trainer.compute_loss(x0, t, y, s, 0).backward()
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    reported = trainer._grad_norm()
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert reported == pytest.approx(before.item(), rel=1e-6) and before > 0.01
    assert after.item() == pytest.approx(0.01, rel=1e-4)


def test_ema_follows_the_warmed_up_decay():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9, warmup=True)
    start = model.weight.detach().clone()
    decays = []
    for k in range(3):
        decays.append(ema.current_decay())
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])  # min(0.9, (1 + k) / (10 + k))
    expected = start.clone()
    for k, d in enumerate(decays):
        expected = d * expected + (1 - d) * (start + k + 1)
    assert torch.allclose(ema.shadow["weight"], expected, atol=1e-6)
    assert EMA(model, 0.9, warmup=True).current_decay() == pytest.approx(0.1)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.9
    target = torch.nn.Linear(2, 1)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay must lie in"):
        EMA(model, decay=1.0)


def test_training_steps_update_weights_and_ema_and_record_history():
    trainer = make_trainer(lr=1e-2)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    results = trainer.fit(3, progress=False)
    assert [r.step for r in results] == [0, 1, 2] and not any(r.skipped for r in results)
    assert trainer.history["step"] == [0, 1, 2] and all(math.isfinite(v) for v in trainer.history["loss"])
    assert any(not torch.equal(start[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.ema.num_updates == 3 and trainer.optimizer_steps == 3
    with pytest.raises(ValueError, match="behind the trainer"):
        trainer.fit(1, progress=False)


def test_bf16_autocast_is_cuda_only():
    assert make_trainer(mixed_precision="bf16").use_bf16 is False  # CPU: float32
    assert make_trainer(mixed_precision="auto").use_bf16 is False


# ----------------------------------------------------------------------------- non-finite steps

class NaNOnce:
    """A forward hook that makes the model output NaN on the calls listed."""

    def __init__(self, calls):
        self.calls, self.count = set(calls), 0

    def __call__(self, module, inputs, output):
        self.count += 1
        return output * float("nan") if self.count - 1 in self.calls else output


def test_a_non_finite_step_is_skipped_counted_and_logged(caplog):
    trainer = make_trainer(lr=1e-2)
    trainer.fit(1, progress=False)
    hook = trainer.model.register_forward_hook(NaNOnce({0}))
    params = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ema = {k: v.clone() for k, v in trainer.ema.shadow.items()}
    with caplog.at_level(logging.WARNING, logger="ddpm.train"):
        result = trainer.train_step()  # the first call after the hook: NaN
    assert result.skipped and math.isnan(result.loss)
    assert "step 1 skipped: non-finite loss" in caplog.text
    assert all(torch.equal(params[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(ema[k], v) for k, v in trainer.ema.shadow.items())
    assert (trainer.step, trainer.optimizer_steps, trainer.skipped_steps) == (2, 1, 1)
    assert all(p.grad is None for p in trainer.model.parameters())
    result = trainer.train_step()  # finite again: trains and resets the streak
    hook.remove()
    assert not result.skipped and trainer.consecutive_nonfinite == 0 and trainer.optimizer_steps == 2


def test_k_consecutive_non_finite_steps_stop_training():
    trainer = make_trainer(max_consecutive_nonfinite=3)
    trainer.model.register_forward_hook(NaNOnce(range(100)))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss or gradient"):
        trainer.fit(10, progress=False)
    assert trainer.step == 3 and trainer.skipped_steps == 3 and trainer.optimizer_steps == 0
    assert len(trainer.history["loss"]) == 3


def test_an_infinite_gradient_is_skipped_even_with_a_finite_loss():
    trainer = make_trainer()
    param = next(trainer.model.parameters())
    param.register_hook(lambda g: g * float("inf"))
    result = trainer.train_step()
    assert math.isfinite(result.loss) and result.skipped and not math.isfinite(result.grad_norm)


# ----------------------------------------------------------------------------- bad inputs

def test_dataset_must_fit_the_model():
    with pytest.raises(ValueError, match=r"shape \(C, H, W\) = \(1, 8, 8\), the model expects \(1, 4, 4\)"):
        make_trainer(dataset=tiny_dataset(size=8))
    with pytest.raises(ValueError, match=r"\(3, 4, 4\), the model expects \(1, 4, 4\)"):
        make_trainer(dataset=tiny_dataset(channels=3))
    with pytest.raises(ValueError, match="class-conditional .* has no labels"):
        make_trainer(dataset=tiny_dataset(classes=None))
    with pytest.raises(ValueError, match="dataset has 5 classes, the model only num_classes=3"):
        make_trainer(dataset=tiny_dataset(classes=5))
    with pytest.raises(TypeError, match="ImageDataset"):
        Trainer(ddpm.UNet(reference.UNetConfig.tiny()), SCHEDULE, TrainConfig(), torch.zeros(2, 1, 4, 4))


def test_batches_must_fit_the_model():
    trainer = make_trainer()
    x0, t, s = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), torch.arange(2)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\] .* max 4"):
        trainer.compute_loss(x0, t, torch.tensor([0, 4]), s, 0)
    with pytest.raises(ValueError, match="y is required"):
        trainer.compute_loss(x0, t, None, s, 0)
    with pytest.raises(ValueError, match=r"x0 must have shape \(N, 1, 4, 4\), got \(2, 3, 4, 4\)"):
        trainer.compute_loss(torch.zeros(2, 3, 4, 4), t, torch.tensor([0, 1]), s, 0)
    with pytest.raises(TypeError, match="x0 must be a float tensor"):
        trainer.compute_loss(x0.long(), t, torch.tensor([0, 1]), s, 0)
    unconditional = make_trainer(num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.compute_loss(x0, t, torch.tensor([0, 1]), s, 0)


def test_global_batch_must_split_over_ranks():
    with pytest.raises(ValueError, match="batch of 5 does not split evenly over world_size=2"):
        Trainer(ddpm.UNet(reference.UNetConfig.tiny(num_classes=3)), SCHEDULE, TrainConfig(batch_size=5),
                tiny_dataset(), ctx=DistributedContext(rank=0, world_size=2))


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, "steps must be a positive int"),
    ("lr", -1.0, "lr must be a positive finite number"),
    ("grad_clip", 0.0, "grad_clip must be None or a positive number"),
    ("ema_decay", 1.0, r"ema_decay must lie in \[0, 1\)"),
    ("label_dropout", 1.5, r"label_dropout must lie in \[0, 1\)"),
    ("prediction", "noise", "prediction must be one of"),
    ("lr_schedule", "step", "lr_schedule must be one of"),
    ("mixed_precision", "fp8", "mixed_precision must be one of"),
    ("min_snr_gamma", -5.0, "min_snr_gamma must be None or a positive number"),
])
def test_train_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_dropout_rng_is_per_step_and_rank_and_leaves_the_global_rng_alone():
    """The forward's dropout draws from a generator seeded by (seed, step, rank) inside
    fork_rng: ranks differ, steps differ, and the caller's global RNG state is untouched."""
    from ddpm.train import _mix_seed

    seeds = {_mix_seed(5, step, rank) for step in range(3) for rank in range(4)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    model = ddpm.UNet(reference.UNetConfig.tiny(num_classes=3, dropout=0.5), zero_init=False)
    trainer = Trainer(model, SCHEDULE, TrainConfig(steps=2, batch_size=6, seed=5), tiny_dataset(classes=3))
    batch = trainer._draw_batch()
    before = torch.random.get_rng_state()
    first = trainer.compute_loss(*batch, step=0).item()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert trainer.compute_loss(*batch, step=0).item() == first  # same (seed, step, rank): same masks
    x0, t, y, samples = batch
    trainer.model.eval()  # no dropout: the loss of step 0's noise without masks differs
    assert trainer.compute_loss(x0, t, y, samples, step=0).item() != first
