"""The NumPy UNet trains: Adam (reference.optim) through the generic loop (reference.train) on
scikit-learn's 8x8 digits lowers the DDPM loss, and the reference DDIM sampler then draws images
close to real digits.

Config: the digits8 preset narrowed to ch=16 (groups 4) so 200 steps fit the CI budget; the full
digits8 run (300 steps, batch 32) is `python -m reference.unet_train` (numbers in the notes).
Measured here (shared 2-core CPU): loss 0.75 over the first 10 steps (1.0 at the zero init),
0.13 over the last 50; samples' mean squared distance to the nearest training digit 0.24
(max 0.36), versus >= 0.98 for the untrained model's samples.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import UNet, UNetConfig, make_schedule, sample_ddim

pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
from threadpoolctl import threadpool_limits  # noqa: E402  (a scikit-learn dependency)

from reference.unet_train import load_digits8, main, train_digits  # noqa: E402

CONFIG = UNetConfig.digits8(ch=16, groups=4)
STEPS, BATCH, SAMPLES, SAMPLE_STEPS = 200, 16, 16, 10


def _nearest_digit_distance(samples: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(S,) mean squared pixel distance of each sample to its nearest training image."""
    diff = samples.reshape(len(samples), 1, -1) - images.reshape(1, len(images), -1)
    return (diff ** 2).mean(axis=2).min(axis=1)


@pytest.fixture(scope="module")
def trained():
    images, _ = load_digits8()
    # The matrices here are small (at most 256 x 288): BLAS threads only add synchronisation,
    # which costs 10x on a loaded 2-core machine. One thread, for this fixture only.
    with threadpool_limits(limits=1, user_api="blas"):
        return images, train_digits(CONFIG, steps=STEPS, batch_size=BATCH, num_samples=SAMPLES,
                                    sample_steps=SAMPLE_STEPS, images=images)


def test_load_digits8_is_the_bundled_set_in_minus_one_one():
    images, labels = load_digits8()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float64
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))


def test_unet_training_on_digits_lowers_the_loss(trained):
    _, result = trained
    loss = np.asarray(result["loss"])
    assert loss.shape == (STEPS,) and np.all(np.isfinite(loss))
    # zero init: the first prediction is 0, so the first loss is E[eps^2] ~ 1
    assert 0.7 < loss[0] < 1.3
    assert loss[-50:].mean() < 0.3
    assert loss[-50:].mean() < 0.5 * loss[:10].mean()


def test_trained_unet_samples_are_near_real_digits(trained):
    images, result = trained
    samples = result["samples"]
    assert samples.shape == (SAMPLES, 1, 8, 8) and np.all(np.abs(samples) <= 1.0)
    trained_distance = _nearest_digit_distance(samples, images)
    untrained = sample_ddim(UNet(CONFIG), samples.shape, make_schedule("linear", 1000), seed=0,
                            num_steps=SAMPLE_STEPS, clip=(-1.0, 1.0))
    untrained_distance = _nearest_digit_distance(untrained, images)
    assert untrained_distance.min() > 0.8                      # noise is far from every digit
    assert trained_distance.mean() < 0.4 and trained_distance.max() < 0.6
    # the samples are not one memorised image repeated
    assert len({int(np.argmin(((images.reshape(len(images), -1) - s.reshape(1, -1)) ** 2).sum(1)))
                for s in samples}) > SAMPLES // 2


def test_unet_train_cli_runs_a_few_steps(capsys):
    with threadpool_limits(limits=1, user_api="blas"):
        main(["--steps", "2", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "step    0  loss" in out and "step    1  loss" in out and "s/step" in out
