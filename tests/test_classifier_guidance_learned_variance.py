"""Classifier guidance of DDPM ancestral sampling with a LEARNED variance (issue 12b).

Dhariwal & Nichol 2021, Alg. 1 shifts the step's mean by s Sigma grad_x log p_phi(y | x_t, t);
with Improved DDPM's learned variance Sigma is the model's own per-element exp(log sigma^2)
(Eq. 15, from its v channels). The reference loop (hand-written classifier backward) and
ddpm.sample (autograd gradient, one fused kernels.learned_variance_step per step) agree to
<= 1e-10 per step in float64 for real UNets and a real classifier: full T and respaced, with
clipping and other predictions, composed with classifier-free guidance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from reference import UNetConfig
from tests.helpers import rel_error

SCHEDULE = reference.make_schedule("linear", 16)
SHAPE = (3, 1, 4, 4)
Y = np.array([0, 2, 1])
SCALE = np.array([0.5, 2.0, 8.0])


@pytest.fixture(scope="module")
def models():
    classifier_config = UNetConfig.tiny(num_classes=3)
    ref_classifier = reference.Classifier(classifier_config, seed=1, zero_init=False)
    classifier = ddpm.Classifier(classifier_config).double()
    classifier.load_numpy_params(ref_classifier.params)
    out = {"classifier": (ref_classifier, classifier)}
    for name, num_classes in (("uncond", None), ("cond", 3)):
        config = UNetConfig.tiny(num_classes=num_classes, out_channels=2)  # eps, then v
        ref = reference.UNet(config, seed=2, zero_init=False)
        unet = ddpm.UNet(config).double()
        unet.load_numpy_params(ref.params)
        out[name] = (ref, unet)
    return out


def _trajectories(models, *, conditional=False, cfg_scale=1.0, scale=SCALE, **options):
    """Every step's x from reference.sample_ddpm and ddpm.sample (float64, torch backend)."""
    ref_classifier, classifier = models["classifier"]
    ref_unet, unet = models["cond" if conditional else "uncond"]
    ref_model = reference.guided(ref_unet, Y, 3, cfg_scale) if conditional else ref_unet
    ref_steps, torch_steps = [], []
    reference.sample_ddpm(ref_model, SHAPE, SCHEDULE, 3, variance="learned", classifier=ref_classifier,
                          classifier_scale=scale, y=Y, callback=lambda k, t, x: ref_steps.append(x.copy()),
                          **options)
    ddpm.sample(unet, SHAPE, SCHEDULE, sampler="ddpm", variance="learned", seed=3, y=torch.tensor(Y),
                guidance_scale=cfg_scale, dtype=torch.float64, backend="torch", classifier=classifier,
                classifier_scale=scale, callback=lambda k, t, x: torch_steps.append(x.clone()), **options)
    return ref_steps, torch_steps


@pytest.mark.parametrize("options", [
    {},
    dict(num_steps=7, clip=(-1.0, 1.0)),
    dict(num_steps=9, prediction="v_prediction", spacing="trailing"),
])
def test_guided_learned_variance_sampling_equals_the_reference_step_by_step(models, options):
    ref_steps, torch_steps = _trajectories(models, **options)
    assert len(ref_steps) == len(torch_steps) == options.get("num_steps", SCHEDULE.T)
    for k, (a, b) in enumerate(zip(ref_steps, torch_steps)):
        assert rel_error(b, a) <= 1e-10, f"step {k}"
    unguided = reference.sample_ddpm(models["uncond"][0], SHAPE, SCHEDULE, 3, variance="learned", **options)
    assert np.abs(unguided - ref_steps[-1]).max() > 1e-3  # the guidance did something


def test_guided_learned_variance_composes_with_classifier_free_guidance(models):
    ref_steps, torch_steps = _trajectories(models, conditional=True, cfg_scale=3.0, num_steps=8)
    for k, (a, b) in enumerate(zip(ref_steps, torch_steps)):
        assert rel_error(b, a) <= 1e-10, f"step {k}"


def test_hand_backward_and_autograd_gradients_agree_along_the_trajectory(models):
    """The term's gradient at each step's x_t: the reference's hand backward vs torch autograd."""
    ref_classifier, classifier = models["classifier"]
    ref_steps, _ = _trajectories(models, num_steps=6)
    plan = reference.sampling_plan(SCHEDULE, "ddpm", 6, variance="learned")
    for k, x in enumerate(ref_steps[:-1]):
        t = np.full(3, plan.timesteps[k + 1])
        _, want = ref_classifier.log_prob_gradient(x, t, Y)
        _, got = classifier.log_prob_gradient(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(Y))
        assert rel_error(got, want) <= 1e-10, f"step {k}"


def test_learned_variance_guidance_shift_differs_from_a_fixed_variance_one(models):
    """The learned Sigma is used, not beta_tilde: the two guided runs part (same model, same seed)."""
    ref_classifier, _ = models["classifier"]
    ref_unet, _ = models["uncond"]

    def mean_part(x, t):
        return ref_unet(x, t)[:, :1]

    learned = reference.sample_ddpm(ref_unet, SHAPE, SCHEDULE, 3, num_steps=5, variance="learned",
                                    classifier=ref_classifier, classifier_scale=4.0, y=Y)
    learned_plain = reference.sample_ddpm(ref_unet, SHAPE, SCHEDULE, 3, num_steps=5, variance="learned")
    fixed = reference.sample_ddpm(mean_part, SHAPE, SCHEDULE, 3, num_steps=5, classifier=ref_classifier,
                                  classifier_scale=4.0, y=Y)
    fixed_plain = reference.sample_ddpm(mean_part, SHAPE, SCHEDULE, 3, num_steps=5)
    assert np.abs((learned - learned_plain) - (fixed - fixed_plain)).max() > 1e-6
