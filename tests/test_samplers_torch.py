"""ddpm.sample (torch) against reference.sample_* (NumPy): same model, same seed, same trajectory.

The model is one deterministic function written twice, in NumPy and in torch, so the only
differences are round-off: in float64 every intermediate x (compared through the callback after
every step) must agree to 1e-12. Also: batch invariance (sample i is the same in a batch of 1
or 5, with `samples=`), classifier-free guidance equal to reference.guided with ONE batched
model call per step, the Sampler running reference.sampling_plan's plan, and bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ddpm
import reference
from ddpm.samplers import Sampler
from tests.helpers import assert_close

T = 40
NUM_CLASSES = 3
SHAPE = (3, 2, 4, 4)
TOL = dict(atol=1e-12, rtol=1e-12)  # float64 round-off only (same operations, same order)


# ----------------------------------------------------------------------------- the model, twice

def numpy_model(x, t, y=None):
    """A smooth class-dependent stand-in for an eps-network: NumPy float64."""
    w = np.full(x.shape[0], 0.6) if y is None else 0.5 + 0.1 * np.asarray(y, dtype=np.float64)
    w = w[:, None, None, None]
    tt = (np.asarray(t, dtype=np.float64) / T)[:, None, None, None]
    return 0.9 * np.tanh(w * x + tt) + 0.05 * x


class TorchModel(nn.Module):
    """numpy_model in torch; counts calls and batch sizes."""

    null_class = NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y=None):
        self.calls.append(x.shape[0])
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],)
        w = torch.full((x.shape[0],), 0.6, dtype=torch.float64) if y is None else 0.5 + 0.1 * y.to(torch.float64)
        w = w[:, None, None, None].to(x.dtype)
        tt = (t.to(torch.float64) / T)[:, None, None, None].to(x.dtype)
        return 0.9 * torch.tanh(w * x + tt) + 0.05 * x


class UnconditionalModel(nn.Module):
    """numpy_model without classes (no null_class attribute)."""

    def forward(self, x, t):
        return TorchModel.forward(self.__dict__.setdefault("_inner", TorchModel()), x, t)


def _schedule(kind="linear"):
    return reference.make_schedule(kind, T)


def _trajectories(torch_kwargs, reference_fn, reference_kwargs, model=None, schedule=None):
    """Run ddpm.sample and a reference sampler; return both per-step trajectories and finals."""
    schedule = schedule or _schedule()
    torch_steps, reference_steps = [], []
    model = model or TorchModel()
    out = ddpm.sample(model, SHAPE, schedule, seed=7, dtype=torch.float64,
                      callback=lambda k, t, x: torch_steps.append((k, t, x.clone())), **torch_kwargs)
    expected = reference_fn(reference_kwargs.pop("model", numpy_model), SHAPE, schedule, 7,
                            callback=lambda k, t, x: reference_steps.append((k, t, x.copy())),
                            **reference_kwargs)
    return torch_steps, reference_steps, out, expected


def _assert_same_trajectory(torch_steps, reference_steps, out, expected):
    assert len(torch_steps) == len(reference_steps) > 0
    for (k, t, x), (k_ref, t_ref, x_ref) in zip(torch_steps, reference_steps):
        assert (k, t) == (k_ref, t_ref)
        assert x.dtype == torch.float64
        assert_close(x, x_ref, **TOL, name=f"x after step {k} (t={t})")
    assert_close(out, expected, **TOL, name="x_0")


# ----------------------------------------------------------------------------- trajectories

@pytest.mark.parametrize("prediction, variance, clip, num_steps", [
    ("epsilon", "fixed_small", None, None),
    ("epsilon", "fixed_large", (-1.0, 1.0), None),
    ("v_prediction", "fixed_small", None, 8),        # respaced schedule (Improved DDPM Sec. 4)
    ("sample", "fixed_small", (-1.0, 1.0), 13),
])
def test_ddpm_trajectory_equals_reference(prediction, variance, clip, num_steps):
    kwargs = dict(prediction=prediction, clip=clip, num_steps=num_steps)
    result = _trajectories(dict(sampler="ddpm", variance=variance, **kwargs),
                           reference.sample_ddpm, dict(variance=variance, **kwargs))
    _assert_same_trajectory(*result)


@pytest.mark.parametrize("eta, spacing, prediction, clip, kind", [
    (0.0, "leading", "epsilon", None, "linear"),
    (0.5, "trailing", "epsilon", (-1.0, 1.0), "cosine"),
    (1.0, "linspace", "v_prediction", None, "linear"),
    (0.3, "leading", "sample", None, "sigmoid"),
])
def test_ddim_trajectory_equals_reference(eta, spacing, prediction, clip, kind):
    kwargs = dict(num_steps=9, spacing=spacing, prediction=prediction, clip=clip)
    result = _trajectories(dict(sampler="ddim", eta=eta, **kwargs), reference.sample_ddim,
                           dict(eta=eta, **kwargs), schedule=_schedule(kind))
    _assert_same_trajectory(*result)


@pytest.mark.parametrize("num_steps, spacing, prediction, clip", [
    (10, "leading", "epsilon", None),
    (7, "trailing", "v_prediction", (-1.0, 1.0)),
    (1, "leading", "epsilon", None),                  # a single, first-order step
    (2, "linspace", "sample", None),
])
def test_dpm_solver_trajectory_equals_reference(num_steps, spacing, prediction, clip):
    kwargs = dict(num_steps=num_steps, spacing=spacing, prediction=prediction, clip=clip)
    result = _trajectories(dict(sampler="dpm_solver++", **kwargs), reference.sample_dpm_solver_pp, kwargs)
    _assert_same_trajectory(*result)


@pytest.mark.parametrize("sampler, reference_fn, kwargs", [
    ("ddim", reference.sample_ddim, dict(num_steps=6, eta=0.7)),
    ("ddpm", reference.sample_ddpm, dict(num_steps=6)),
    ("dpm_solver++", reference.sample_dpm_solver_pp, dict(num_steps=6)),
])
def test_classifier_free_guidance_equals_reference_guided(sampler, reference_fn, kwargs):
    y = np.array([0, 2, 1])
    w = 3.0
    model = TorchModel()
    result = _trajectories(dict(sampler=sampler, y=torch.as_tensor(y), guidance_scale=w, **kwargs),
                           reference_fn,
                           dict(model=reference.guided(numpy_model, y, NUM_CLASSES, w), **kwargs),
                           model=model)
    _assert_same_trajectory(*result)
    # one batched model call per step on [cond; uncond]
    assert model.calls == [2 * SHAPE[0]] * 6


def test_class_conditional_without_guidance_passes_labels():
    y = np.array([2, 0, 3])  # 3 = the null class itself is a valid label
    result = _trajectories(dict(sampler="ddim", num_steps=5, y=y), reference.sample_ddim,
                           dict(num_steps=5, model=lambda x, t: numpy_model(x, t, y)))
    _assert_same_trajectory(*result)


def test_given_x_T_is_used_as_the_start():
    x_T = torch.linspace(-2, 2, int(np.prod(SHAPE)), dtype=torch.float64).reshape(SHAPE)
    result = _trajectories(dict(sampler="ddim", num_steps=4, eta=1.0, x_T=x_T), reference.sample_ddim,
                           dict(num_steps=4, eta=1.0, x_T=x_T.numpy()))
    _assert_same_trajectory(*result)


def test_initial_noise_is_stream_zero_of_the_global_samples():
    runner = Sampler(TorchModel(), SHAPE, _schedule(), seed=11, samples=[4, 9, 2], dtype=torch.float64)
    expected = reference.normal(11, [4, 9, 2], reference.SAMPLER_INIT_STREAM, SHAPE[1:])
    assert torch.equal(runner.initial_noise(), torch.from_numpy(expected.astype(np.float64)))


def test_float32_sampling_tracks_the_float64_reference():
    schedule = _schedule()
    out = ddpm.sample(TorchModel(), SHAPE, schedule, sampler="ddim", num_steps=8, eta=0.5, seed=3)
    expected = reference.sample_ddim(numpy_model, SHAPE, schedule, 3, num_steps=8, eta=0.5)
    assert out.dtype == torch.float32
    assert_close(out, expected, atol=1e-5, rtol=1e-5, name="float32 x_0")


@pytest.fixture(scope="module")
def unet_pair():
    """The reference UNet and ddpm.UNet with the same weights (tiny, class-conditional, float64)."""
    config = reference.UNetConfig.tiny(num_classes=NUM_CLASSES, num_heads=2)
    ref = reference.UNet(config, seed=3, zero_init=False)
    model = ddpm.UNet(config).double()
    model.load_numpy_params(ref.params)
    return ref, model


@pytest.mark.parametrize("sampler, reference_fn, kwargs", [
    ("ddim", reference.sample_ddim, dict(num_steps=5, eta=0.5)),
    ("dpm_solver++", reference.sample_dpm_solver_pp, dict(num_steps=4)),
])
def test_unet_guided_sampling_equals_reference_unet_sampling(unet_pair, sampler, reference_fn, kwargs):
    ref, model = unet_pair
    y = np.array([1, 3, 0, 2])
    shape = (4, 1, 4, 4)
    torch_steps, reference_steps = [], []
    out = ddpm.sample(model, shape, _schedule(), sampler=sampler, seed=9, y=y, guidance_scale=2.5,
                      dtype=torch.float64, callback=lambda k, t, x: torch_steps.append((k, t, x)),
                      **kwargs)
    expected = reference_fn(reference.guided(ref, y, NUM_CLASSES, 2.5), shape, _schedule(), 9,
                            callback=lambda k, t, x: reference_steps.append((k, t, x)), **kwargs)
    _assert_same_trajectory(torch_steps, reference_steps, out, expected)


def test_unet_sample_is_the_same_in_a_batch_of_one_or_five(unet_pair):
    _, model = unet_pair
    kwargs = dict(sampler="ddpm", num_steps=6, seed=4, dtype=torch.float64, guidance_scale=1.5)
    batch = ddpm.sample(model, (5, 1, 4, 4), _schedule(), y=[0, 1, 2, 0, 1], **kwargs)
    single = ddpm.sample(model, (1, 1, 4, 4), _schedule(), y=[0], samples=[3], **kwargs)
    assert_close(single[0], batch[3], **TOL, name="sample 3")


# ----------------------------------------------------------------------------- batch invariance

@pytest.mark.parametrize("sampler, kwargs", [
    ("ddpm", dict(num_steps=10)),
    ("ddim", dict(num_steps=10, eta=0.8)),
    ("dpm_solver++", dict(num_steps=10)),
])
def test_sample_is_the_same_in_a_batch_of_one_or_five(sampler, kwargs):
    schedule = _schedule()
    shape5 = (5,) + SHAPE[1:]
    batch = ddpm.sample(TorchModel(), shape5, schedule, sampler=sampler, seed=5, dtype=torch.float64,
                        **kwargs)
    for i in (0, 3):
        single = ddpm.sample(TorchModel(), (1,) + SHAPE[1:], schedule, sampler=sampler, seed=5,
                             samples=[i], dtype=torch.float64, **kwargs)
        assert_close(single[0], batch[i], **TOL, name=f"sample {i}")
    # later samples of a run are the same as drawing them with their global indices
    tail = ddpm.sample(TorchModel(), (2,) + SHAPE[1:], schedule, sampler=sampler, seed=5,
                       samples=torch.tensor([3, 4]), dtype=torch.float64, **kwargs)
    assert_close(tail, batch[3:], **TOL, name="samples 3, 4")


def test_different_seeds_give_different_samples():
    schedule = _schedule()
    a = ddpm.sample(TorchModel(), SHAPE, schedule, sampler="ddpm", num_steps=5, seed=1)
    b = ddpm.sample(TorchModel(), SHAPE, schedule, sampler="ddpm", num_steps=5, seed=2)
    assert not torch.allclose(a, b)


# ----------------------------------------------------------------------------- the plan

def test_sampler_runs_the_reference_plan():
    """ddpm.Sampler takes its timesteps, coefficient rows and noise streams from
    reference.sampling_plan: the same arrays, not a copy of the code that makes them."""
    schedule = _schedule()
    for kind, kwargs in (("ddpm", dict(num_steps=9)), ("ddim", dict(eta=0.4)), ("dpm_solver++", {})):
        runner = Sampler(TorchModel(), SHAPE, schedule, sampler=kind, dtype=torch.float64, **kwargs)
        plan = reference.sampling_plan(schedule, kind, **kwargs)
        assert np.array_equal(runner.timesteps, plan.timesteps), kind
        assert np.array_equal(runner.coefficients.numpy(), plan.coefficients), kind
        assert runner.num_steps == plan.num_steps and runner.plan.sampler == kind


def test_loop_is_run_without_its_checks_and_is_repeatable():
    """Sampler.loop (what FastSampler captures) from the same x_T gives run()'s result, twice
    in a row: reset() clears DPM-Solver++'s carried x0_hat."""
    runner = Sampler(TorchModel(), SHAPE, _schedule(), sampler="dpm_solver++", num_steps=6,
                     dtype=torch.float64)
    want = runner.run()
    with torch.no_grad():
        assert torch.equal(runner.loop(runner.initial_noise()), want)
        assert torch.equal(runner.loop(runner.initial_noise()), want)


def test_copy_inputs_moves_samples_and_labels_into_the_buffers():
    a = Sampler(TorchModel(), SHAPE, _schedule(), y=[0, 1, 2], guidance_scale=2.0, num_steps=3)
    b = Sampler(TorchModel(), SHAPE, _schedule(), y=[2, 2, 1], guidance_scale=2.0, num_steps=3,
                samples=[7, 8, 9])
    samples, labels = a.samples, a.y_model
    a.copy_inputs_(b)
    assert a.samples is samples and a.y_model is labels  # the same buffers, new values
    assert a.samples.tolist() == [7, 8, 9] and a.y_model.tolist() == [2, 2, 1, 3, 3, 3]
    with pytest.raises(ValueError, match="other must have shape"):
        a.copy_inputs_(Sampler(TorchModel(), (2, 2, 4, 4), _schedule(), num_steps=3))


# ----------------------------------------------------------------------------- model state

def test_training_mode_model_is_sampled_in_eval_and_restored():
    config = reference.UNetConfig.tiny(dropout=0.5)
    torch.manual_seed(0)
    model = ddpm.UNet(config, zero_init=False).double().train()
    schedule = _schedule()
    a = ddpm.sample(model, (2, 1, 4, 4), schedule, num_steps=3, dtype=torch.float64)
    b = ddpm.sample(model, (2, 1, 4, 4), schedule, num_steps=3, dtype=torch.float64)
    assert torch.equal(a, b)
    assert model.training


# ----------------------------------------------------------------------------- bad inputs

def test_guidance_needs_a_class_conditional_model():
    with pytest.raises(ValueError, match="class-conditional"):
        ddpm.sample(UnconditionalModel(), SHAPE, _schedule(), y=[0, 1, 2], guidance_scale=2.0)
    torch.manual_seed(0)
    unet = ddpm.UNet(reference.UNetConfig.tiny())
    with pytest.raises(ValueError, match="class-conditional"):
        ddpm.sample(unet, (3, 1, 4, 4), _schedule(), y=[0, 1, 2], guidance_scale=2.0)


def test_guidance_needs_labels():
    with pytest.raises(ValueError, match="needs class labels y"):
        ddpm.sample(TorchModel(), SHAPE, _schedule(), guidance_scale=2.0)


@pytest.mark.parametrize("y", [[0, 1, 4], [-1, 0, 0]])
def test_class_id_out_of_range_is_rejected(y):
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\]"):
        ddpm.sample(TorchModel(), SHAPE, _schedule(), y=y, guidance_scale=2.0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sampler="euler"), ValueError, "sampler must be one of"),
    (dict(sampler="ddpm", eta=0.5), ValueError, "eta applies to the ddim sampler only"),
    (dict(eta=-0.1), ValueError, r"eta must lie in \[0, 1\]"),
    (dict(eta=1.5), ValueError, r"eta must lie in \[0, 1\]"),
    (dict(eta=float("nan")), ValueError, r"eta must lie in \[0, 1\]"),
    (dict(num_steps=T + 1), ValueError, "num_steps must lie in"),
    (dict(num_steps=0), ValueError, "num_steps must lie in"),
    (dict(spacing="quadratic"), ValueError, "spacing must be one of"),
    (dict(prediction="score"), ValueError, "prediction must be one of"),
    (dict(variance="learned_range"), ValueError, "variance must be one of"),
    (dict(seed=-1), ValueError, r"seed must lie in \[0, 2\*\*64\)"),
    (dict(seed=2**64), ValueError, r"seed must lie in \[0, 2\*\*64\)"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(samples=[0, 1]), ValueError, r"samples must have shape \(3,\)"),
    (dict(samples=[0.0, 1.0, 2.0]), TypeError, "samples must hold integers"),
    (dict(samples=[0, 1, -2]), ValueError, "samples must lie in"),
    (dict(y=[0, 1]), ValueError, r"y must have shape \(3,\)"),
    (dict(clip=(1.0, -1.0)), ValueError, "clip must satisfy lo < hi"),
    (dict(guidance_scale=float("inf"), y=[0, 0, 0]), ValueError, "guidance_scale must be finite"),
    (dict(dtype=torch.int32), TypeError, "dtype must be one of"),
    (dict(x_T=torch.zeros(2, 2, 4, 4)), ValueError, "x_T must have shape"),
    (dict(x_T=torch.full(SHAPE, float("nan"))), ValueError, "x_T contains NaN"),
    (dict(callback=3), TypeError, "callback must be callable"),
])
def test_bad_sampler_arguments_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        ddpm.sample(TorchModel(), SHAPE, _schedule(), **kwargs)


def test_bad_shape_schedule_and_model_are_rejected():
    with pytest.raises(TypeError, match="shape must be a tuple"):
        ddpm.sample(TorchModel(), 5, _schedule())
    with pytest.raises(ValueError, match=r"shape\[1\] must be >= 1"):
        ddpm.sample(TorchModel(), (2, 0, 4, 4), _schedule())
    with pytest.raises(TypeError, match="schedule must be a reference Schedule"):
        ddpm.sample(TorchModel(), SHAPE, np.linspace(1e-4, 0.02, T))
    with pytest.raises(TypeError, match="model must be callable"):
        ddpm.sample("unet", SHAPE, _schedule())
    with pytest.raises(ValueError, match="model output must have shape"):
        ddpm.sample(lambda x, t: x[:, :1], SHAPE, _schedule(), num_steps=2)


def test_unet_rejects_a_sample_shape_that_does_not_fit_it():
    torch.manual_seed(0)
    unet = ddpm.UNet(reference.UNetConfig.tiny())
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 4, 4\)"):
        ddpm.sample(unet, (2, 1, 8, 8), _schedule(), num_steps=2)


def test_default_spacing_per_sampler():
    """spacing=None: leading for ddpm/ddim (diffusers' DDIM default), trailing for DPM-Solver++
    (its second-order step into t = 0 is badly conditioned on a leading grid)."""
    from reference import timestep_subset

    schedule = reference.make_schedule("linear", 100)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    for kind, spacing in (("ddim", "leading"), ("dpm_solver++", "trailing")):
        runner = Sampler(model, (1, 2), schedule, sampler=kind, num_steps=7)
        assert runner.timesteps.tolist() == timestep_subset(100, 7, spacing).tolist(), kind
