"""ddpm.FastSampler with classifier guidance and with the score samplers: on the CPU (eager path)
the same images as ddpm.sample with the same options, in float64 bit for bit; repeated calls with
new classes reuse the cached runner (the classes live in a buffer a graph would read)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm import FastSampler

SCHEDULE = reference.make_schedule("linear", 30)
VE = reference.ve_schedule(8.0, 0.02, 30)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    classifier = ddpm.Classifier(reference.UNetConfig.tiny(num_classes=3), zero_init=False).double().eval()
    unet = ddpm.UNet(reference.UNetConfig.tiny(), zero_init=False).double()
    learned = ddpm.UNet(reference.UNetConfig.tiny(out_channels=2), zero_init=False).double()
    conditional = ddpm.UNet(reference.UNetConfig.tiny(num_classes=3), zero_init=False).double()
    return {"classifier": classifier, "uncond": unet, "learned": learned, "cond": conditional}


@pytest.mark.parametrize("name, options", [
    ("uncond", dict(sampler="ddim", num_steps=6, eta=0.5)),
    ("uncond", dict(sampler="ddpm", num_steps=7, clip=(-1.0, 1.0))),
    ("uncond", dict(sampler="dpm_solver++", num_steps=5)),
    ("learned", dict(sampler="ddpm", num_steps=6, variance="learned")),
    ("cond", dict(sampler="ddim", num_steps=5, guidance_scale=2.0)),  # composed with CFG
])
def test_guided_fast_sampler_equals_sample(models, name, options):
    classifier, model = models["classifier"], models[name]
    fast = FastSampler(model, SCHEDULE, dtype=torch.float64, classifier=classifier, classifier_scale=3.0,
                       **options)
    for y, samples in ((torch.tensor([0, 2, 1]), [4, 5, 6]), (torch.tensor([2, 2, 0]), [7, 8, 9])):
        got = fast(3, seed=11, samples=samples, y=y)  # the second call reuses the cached runner
        want = ddpm.sample(model, (3, 1, 4, 4), SCHEDULE, seed=11, samples=samples, y=y, dtype=torch.float64,
                           classifier=classifier, classifier_scale=3.0, **options)
        assert torch.equal(got, want)
    plain = FastSampler(model, SCHEDULE, dtype=torch.float64, **options)(3, seed=11, samples=[7, 8, 9],
                                                                         y=y if name == "cond" else None)
    assert (got - plain).abs().max() > 1e-4  # the guidance did something


@pytest.mark.parametrize("schedule", [SCHEDULE, VE], ids=["vp", "ve"])
@pytest.mark.parametrize("sampler, options", [
    ("langevin", {"step_size": 1e-3, "level": 3, "num_steps": 5}),
    ("annealed_langevin", {"step_size": 1e-2, "steps_per_level": 2, "num_steps": 3}),
    ("pc", {"snr": 0.16, "corrector_steps": 1, "num_steps": 4}),
])
def test_score_samplers_through_the_fast_sampler_equal_sample(models, schedule, sampler, options):
    model = models["uncond"]
    fast = FastSampler(model, schedule, sampler=sampler, dtype=torch.float64, **options)
    assert fast.stochastic
    got = fast(2, seed=3, samples=[1, 2])
    want = ddpm.sample(model, (2, 1, 4, 4), schedule, sampler=sampler, seed=3, samples=[1, 2], dtype=torch.float64,
                       **options)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(classifier_scale=2.0), ValueError, "classifier_scale needs a classifier"),
    (dict(classifier="clf", classifier_scale=[1.0, 2.0]), TypeError, "one number for FastSampler"),
    (dict(classifier="clf", classifier_scale=-1.0), ValueError, "classifier_scale must be finite and >= 0"),
    (dict(classifier="clf", sampler="pc"), ValueError, "classifier guidance is defined for step kinds"),
    (dict(classifier=torch.nn.Linear(2, 2)), TypeError, "classifier must be a ddpm.Classifier"),
    (dict(sampler="ddim", snr=0.1), ValueError, "snr"),
])
def test_fast_sampler_refuses_bad_guidance_options(models, kwargs, error, match):
    if kwargs.get("classifier") == "clf":
        kwargs["classifier"] = models["classifier"]
    with pytest.raises(error, match=match):
        FastSampler(models["uncond"], SCHEDULE, num_steps=3, dtype=torch.float64, **kwargs)


def test_guided_call_needs_classes_in_range(models):
    fast = FastSampler(models["uncond"], SCHEDULE, num_steps=3, dtype=torch.float64,
                       classifier=models["classifier"])
    with pytest.raises(ValueError, match="needs the class"):
        fast(2, seed=0)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\)"):
        fast(2, seed=0, y=torch.tensor([0, 3]))
    assert np.isfinite(fast(2, seed=0, y=torch.tensor([0, 1])).numpy()).all()
