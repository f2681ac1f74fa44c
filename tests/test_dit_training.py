"""The DiT through the UNet's machinery: Trainer (EMA, checkpoints, exact resume), the samplers
(the same trajectory as the reference loop, classifier-free guidance, learned sigma), and the CLI
(`train --arch dit --config dit-...`, `sample`), with one-line errors for mismatched settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm.cli import main
from ddpm.data import ImageDataset
from ddpm.train import TrainConfig, Trainer
from reference import DiTConfig
from tests.helpers import rel_error

SCHEDULE = reference.make_schedule("linear", 50)
TINY = DiTConfig.tiny()   # 4x4x1, 3 classes, learn_sigma


def _data(n=24, classes=3, size=4):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return ImageDataset(images, torch.arange(n) % classes, classes, None, "tiny", hflip=False)


def _trainer(config=TINY, **overrides):
    torch.manual_seed(0)
    settings = dict(steps=6, batch_size=6, lr=1e-3, seed=5, label_dropout=0.2)
    if config.learn_sigma:
        settings.update(variance="learned", loss="hybrid")
    settings.update(overrides)
    return Trainer(ddpm.DiT(config), SCHEDULE, TrainConfig(**settings), _data())


def test_trainer_resumes_a_dit_exactly(tmp_path):
    """Train 6 steps straight, or 3 + save + load into a fresh trainer + 3: the same losses and weights."""
    straight = _trainer()
    straight.fit(6, progress=False)
    first = _trainer()
    first.fit(3, progress=False)
    first.save(tmp_path / "run")
    resumed = _trainer()
    resumed.load(ddpm.latest_checkpoint(tmp_path / "run"))
    resumed.fit(6, progress=False)
    assert resumed.history["loss"][-3:] == straight.history["loss"][-3:]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for name, a in straight.ema.state_dict().items():
        assert torch.equal(a, resumed.ema.state_dict()[name]), f"EMA {name}"
    ckpt = ddpm.load_checkpoint(tmp_path / "run")
    assert isinstance(ckpt.unet_config, DiTConfig) and ckpt.unet_config == TINY
    with pytest.raises(ValueError, match="holds a dit model, requested a unet"):
        ckpt.check_compatible(reference.UNetConfig.tiny())


def test_sampling_a_dit_follows_the_reference_trajectory():
    """float64 ddpm.sample with guidance vs reference.sample_ddim of reference.DiT (same weights)."""
    config = DiTConfig.tiny(learn_sigma=False)
    ref = reference.DiT(config, seed=3, zero_init=False)
    rng = np.random.default_rng(0)
    for k in ref.params:  # non-zero biases too: every parameter shapes the trajectory
        ref.params[k] = ref.params[k] + 0.05 * rng.normal(size=ref.params[k].shape)
    model = ddpm.DiT(config).double()
    model.load_numpy_params(ref.params)
    y = np.array([0, 2, 1])
    got = ddpm.sample(model, (3, 1, 4, 4), SCHEDULE, sampler="ddim", num_steps=5, eta=0.5, seed=7,
                      y=torch.tensor(y), guidance_scale=2.0, dtype=torch.float64, backend="torch")
    want = reference.sample_ddim(reference.guided(ref, y, config.num_classes, 2.0), (3, 1, 4, 4), SCHEDULE, 7,
                                 num_steps=5, eta=0.5)
    assert rel_error(got, want) <= 1e-6   # float32 Box-Muller normals on both sides, float64 math


def test_learned_sigma_samples_with_the_learned_variance():
    trainer = _trainer()
    trainer.fit(2, progress=False)
    x = ddpm.sample(trainer.model, (3, 1, 4, 4), SCHEDULE, sampler="ddpm", num_steps=4, variance="learned",
                    y=torch.tensor([0, 1, 2]), guidance_scale=1.5)
    assert x.shape == (3, 1, 4, 4) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="out_channels"):
        Trainer(ddpm.DiT(TINY), SCHEDULE, TrainConfig(steps=1, batch_size=6), _data())


def _run(argv, capsys):
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    if code == 2:
        assert err.count("\n") == 1 and "error:" in err, err
    return code, err


def test_cli_trains_and_samples_a_dit(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--arch", "dit", "--config", "dit-digits", "--out", str(out), "--steps", "2",
            "--batch-size", "8", "--samples", "1", "--sample-steps", "2", "--no-progress"]
    assert _run(args, capsys)[0] == 0
    assert (out / "samples.png").is_file()
    ckpt = ddpm.load_checkpoint(out)
    assert ckpt.unet_config == DiTConfig.digits(num_classes=10) and "dit" in ckpt.config
    code, _ = _run(["sample", "--checkpoint", str(out), "--out", str(tmp_path / "s.png"), "--n", "2",
                    "--class", "3", "--guidance", "2", "--steps", "2"], capsys)
    assert code == 0 and (tmp_path / "s.png").is_file()
    assert "is a unet preset" in _run(["train", "--arch", "dit", "--config", "digits8", "--out",
                                       str(tmp_path / "x"), "--steps", "1"], capsys)[1]
    assert "trains a dit model" in _run(["train", "--arch", "unet", "--out", str(out), "--steps", "3"], capsys)[1]
    assert "is out of range" in _run(["sample", "--checkpoint", str(out), "--out", str(tmp_path / "t.png"),
                                      "--class", "10", "--steps", "2"], capsys)[1]
