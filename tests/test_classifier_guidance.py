"""Classifier guidance (Dhariwal & Nichol 2021): the plan's guidance columns mean Algorithms 1 and 2,
ddpm.sample equals the reference loops step by step (float64, <= 1e-10) for every sampler, with
classifier-free guidance, clipping, respacing and other predictions, and bad input is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from reference import UNetConfig
from tests.helpers import rel_error

SCHEDULE = reference.make_schedule("linear", 30)
SHAPE = (3, 1, 4, 4)


@pytest.fixture(scope="module")
def models():
    classifier_config = UNetConfig.tiny(num_classes=3)
    ref_classifier = reference.Classifier(classifier_config, seed=1, zero_init=False)
    classifier = ddpm.Classifier(classifier_config).double()
    classifier.load_numpy_params(ref_classifier.params)
    out = {"classifier": (ref_classifier, classifier)}
    for name, num_classes in (("uncond", None), ("cond", 3)):
        config = UNetConfig.tiny(num_classes=num_classes)
        ref = reference.UNet(config, seed=2, zero_init=False)
        unet = ddpm.UNet(config).double()
        unet.load_numpy_params(ref.params)
        out[name] = (ref, unet)
    return out


def test_ddpm_column_is_the_mean_shift_of_algorithm_1():
    plan = reference.sampling_plan(SCHEDULE, "ddpm")
    columns = reference.classifier_guidance_coefficients(plan)
    sigma = plan.coefficients[:, reference.STEP_COEFFICIENTS.index("sigma")]
    np.testing.assert_array_equal(columns, np.stack([0 * sigma, 0 * sigma, sigma**2], axis=1))
    rng = np.random.default_rng(0)
    x, eps, z, grad = (rng.standard_normal(SHAPE) for _ in range(4))
    k, s = 5, 2.5
    plain = reference.sampler_step(x, eps, plan.coefficients[k], z)
    guided = reference.sampler_step(x, eps, plan.coefficients[k], z, classifier_grad=grad,
                                    classifier_coefficients=s * columns[k])
    t = plan.timesteps[k]
    np.testing.assert_allclose(guided, plain + s * SCHEDULE.posterior_variance[t] * grad, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("prediction", reference.PREDICTIONS)
def test_ddim_column_is_the_eps_shift_of_algorithm_2(prediction):
    plan = reference.sampling_plan(SCHEDULE, "ddim", 10, eta=0.3, prediction=prediction)
    columns = reference.classifier_guidance_coefficients(plan)
    rng = np.random.default_rng(1)
    x, out, z, grad = (rng.standard_normal(SHAPE) for _ in range(4))
    k, s = 3, 4.0
    t, t_prev = plan.timesteps[k], plan.timesteps_prev[k]
    alpha_bar = SCHEDULE.alpha_bars[t]
    eps = reference.prediction_coefficients(alpha_bar, prediction)
    eps_hat = eps[2] * x + eps[3] * out - s * np.sqrt(1 - alpha_bar) * grad   # Alg. 2
    expected = reference.ddim_step(x, t, t_prev, eps_hat, SCHEDULE, eta=0.3, noise=z)
    guided = reference.sampler_step(x, out, plan.coefficients[k], z, classifier_grad=grad,
                                    classifier_coefficients=s * columns[k])
    np.testing.assert_allclose(guided, expected, rtol=1e-12, atol=1e-12)


def _trajectories(models, sampler, *, conditional=False, cfg_scale=1.0, scale=(0.5, 2.0, 8.0), **options):
    """Every step's x from the reference loop and from ddpm.sample (float64, torch backend)."""
    ref_classifier, classifier = models["classifier"]
    ref_unet, unet = models["cond" if conditional else "uncond"]
    y = np.array([0, 2, 1])
    ref_model = reference.guided(ref_unet, y, 3, cfg_scale) if conditional else ref_unet
    loops = {"ddpm": reference.sample_ddpm, "ddim": reference.sample_ddim,
             "dpm_solver++": reference.sample_dpm_solver_pp}
    ref_steps, torch_steps = [], []
    loops[sampler](ref_model, SHAPE, SCHEDULE, 3, classifier=ref_classifier, classifier_scale=np.array(scale),
                   y=y, callback=lambda k, t, x: ref_steps.append(x.copy()), **options)
    ddpm.sample(unet, SHAPE, SCHEDULE, sampler=sampler, seed=3, y=torch.tensor(y), guidance_scale=cfg_scale,
                dtype=torch.float64, backend="torch", classifier=classifier, classifier_scale=np.array(scale),
                callback=lambda k, t, x: torch_steps.append(x.clone()), **options)
    return ref_steps, torch_steps


@pytest.mark.parametrize("sampler, options", [
    ("ddpm", {}),
    ("ddpm", dict(num_steps=7, variance="fixed_large", clip=(-1.0, 1.0))),
    ("ddim", dict(num_steps=8, eta=0.5)),
    ("ddim", dict(num_steps=8, prediction="v_prediction", clip=(-1.0, 1.0))),
    ("dpm_solver++", dict(num_steps=6)),
    ("dpm_solver++", dict(num_steps=6, prediction="sample", clip=(-1.0, 1.0))),
])
def test_torch_guided_sampling_equals_the_reference_step_by_step(models, sampler, options):
    ref_steps, torch_steps = _trajectories(models, sampler, **options)
    assert len(ref_steps) == len(torch_steps) > 1
    for k, (a, b) in enumerate(zip(ref_steps, torch_steps)):
        assert rel_error(b, a) <= 1e-10, f"step {k}"
    unguided = reference.sample_ddim(models["uncond"][0], SHAPE, SCHEDULE, 3, num_steps=8) if sampler == "ddim" else None
    if unguided is not None and "eta" not in options and options.get("prediction") is None:
        assert np.abs(unguided - ref_steps[-1]).max() > 1e-3  # the guidance did something


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++"])
def test_classifier_guidance_composes_with_classifier_free_guidance(models, sampler):
    options = {} if sampler == "ddpm" else {"num_steps": 6}
    ref_steps, torch_steps = _trajectories(models, sampler, conditional=True, cfg_scale=3.0, **options)
    for k, (a, b) in enumerate(zip(ref_steps, torch_steps)):
        assert rel_error(b, a) <= 1e-10, f"step {k}"


def test_zero_scale_is_unguided(models):
    ref_classifier, classifier = models["classifier"]
    ref_unet, unet = models["uncond"]
    plain = ddpm.sample(unet, SHAPE, SCHEDULE, sampler="ddim", num_steps=5, dtype=torch.float64)
    zero = ddpm.sample(unet, SHAPE, SCHEDULE, sampler="ddim", num_steps=5, dtype=torch.float64,
                       classifier=classifier, classifier_scale=0.0, y=torch.tensor([0, 1, 2]))
    assert torch.equal(plain, zero)


@pytest.mark.parametrize("change, error, match", [
    (dict(y=None), ValueError, "needs the class"),
    (dict(y=torch.tensor([0, 1, 3])), ValueError, r"y must lie in \[0, 3\)"),
    (dict(classifier_scale=-1.0), ValueError, "classifier_scale must be finite and >= 0"),
    (dict(classifier_scale=[1.0, 2.0]), ValueError, "classifier_scale must be a number or have shape"),
    (dict(shape=(3, 1, 8, 8)), ValueError, "classifier image shape"),
    (dict(sampler="langevin"), ValueError, "classifier guidance is defined for step kinds"),
    (dict(classifier=None, classifier_scale=2.0), ValueError, "classifier_scale needs a classifier"),
])
def test_guided_sampling_rejects_bad_input(models, change, error, match):
    _, classifier = models["classifier"]
    _, unet = models["uncond"]
    args = dict(shape=SHAPE, sampler="ddim", y=torch.tensor([0, 1, 2]), classifier=classifier, classifier_scale=1.0)
    args.update(change)
    shape = args.pop("shape")
    with pytest.raises(error, match=match):
        ddpm.sample(unet, shape, SCHEDULE, num_steps=3, dtype=torch.float64, **args)
    ref_args = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in args.items()
                if k in ("y", "classifier_scale")}
    if "classifier" in change or "variance" in change or "sampler" in change:
        return
    with pytest.raises(error, match=match):
        reference.sample_ddim(models["uncond"][0], shape, SCHEDULE, 0, num_steps=3,
                              classifier=models["classifier"][0], **ref_args)


def test_class_count_must_match_a_conditional_model(models):
    _, unet = models["cond"]  # 3 classes
    classifier = ddpm.Classifier(UNetConfig.tiny(num_classes=5)).double()
    with pytest.raises(ValueError, match="classifier has 5 classes but the model has 3"):
        ddpm.sample(unet, SHAPE, SCHEDULE, sampler="ddim", num_steps=3, dtype=torch.float64,
                    y=torch.tensor([0, 1, 2]), classifier=classifier)
