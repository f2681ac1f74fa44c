"""Learned-variance models to and from diffusers: UNet2DModel with out_channels = 2 in_channels
and a DDPMScheduler config with variance_type="learned_range"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm.diffusers_io import diffusers_config, save_diffusers, to_diffusers
from ddpm.diffusers_scheduler import (
    save_scheduler_config,
    schedule_from_scheduler_config,
    scheduler_config,
    variance_from_scheduler_config,
)
from helpers import assert_close

diffusers = pytest.importorskip("diffusers")


def test_a_learned_variance_unet_round_trips_through_diffusers(tmp_path):
    config = reference.UNetConfig.tiny(in_channels=1, out_channels=2)
    torch.manual_seed(0)
    model = ddpm.UNet(config, zero_init=False).double().eval()
    theirs = diffusers.UNet2DModel(**{k: v for k, v in diffusers_config(config).items() if not k.startswith("_")})
    theirs.load_state_dict(to_diffusers(model))
    theirs = theirs.double().eval()
    assert theirs.config.out_channels == 2 * theirs.config.in_channels
    x, t = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([3, 40])
    with torch.no_grad():
        ours, out = model(x, t), theirs(x, t).sample
    assert out.shape == (2, 2, 4, 4)
    assert_close(out, ours, atol=1e-6, rtol=1e-6, name="diffusers output")  # float32 time embedding there
    save_diffusers(model, tmp_path / "unet")
    back = ddpm.UNet.from_diffusers(tmp_path / "unet")
    assert back.config.out_channels == 2 and back.config == config


@pytest.mark.parametrize("variance, variance_type", [("learned", "learned_range"), ("fixed_small", "fixed_small"),
                                                     ("fixed_large", "fixed_large")])
def test_scheduler_config_builds_a_ddpm_scheduler_with_our_betas(tmp_path, variance, variance_type):
    schedule = reference.make_schedule("cosine", 100)
    path = save_scheduler_config(tmp_path, schedule, variance=variance, prediction="v_prediction")
    config = json.loads(path.read_text())
    scheduler = diffusers.DDPMScheduler.from_config(config)
    assert scheduler.config.variance_type == variance_type
    assert scheduler.config.prediction_type == "v_prediction"
    assert_close(scheduler.betas, schedule.betas, atol=0, rtol=1e-7, name="betas (float32 there)")
    assert variance_from_scheduler_config(dict(scheduler.config)) == variance
    assert np.array_equal(schedule_from_scheduler_config(config).betas, schedule.betas)


def test_learned_range_variance_is_our_learned_log_variance():
    # diffusers' _get_variance for learned_range at t > 0: frac log beta_t + (1 - frac) log beta_tilde_t
    schedule = reference.make_schedule("linear", 50)
    scheduler = diffusers.DDPMScheduler.from_config(scheduler_config(schedule, variance="learned"))
    scheduler.set_timesteps(50)
    v = torch.linspace(-1, 1, 7, dtype=torch.float64)
    for t in (1, 17, 49):
        theirs = scheduler._get_variance(t, predicted_variance=v.float()).double()
        ours = reference.learned_log_variance(v.numpy()[:, None], np.full(7, t), schedule)[:, 0]
        # diffusers forms beta_tilde in float32 from 1 - alpha_bar: at t = 1, 1 - alpha_bar_0 = 1e-4
        # loses ~3 of float32's 7 digits (relative error up to ~6e-4 in beta_tilde, ~1e-4 seen)
        assert_close(theirs, ours, atol=1e-3, rtol=1e-6, name=f"log variance at t={t} (float32 there)")


def test_unknown_variance_types_are_named():
    with pytest.raises(ValueError, match="variance_type='learned'"):
        variance_from_scheduler_config({"variance_type": "learned"})
    with pytest.raises(ValueError, match="variance must be one of"):
        scheduler_config(reference.make_schedule("linear", 10), variance="learned_range")
