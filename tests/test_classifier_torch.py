"""ddpm.Classifier against reference.Classifier in float64 on the CPU: logits, every parameter
gradient and the input gradient (relative error <= 1e-10, DESIGN "How things are checked"),
the autograd guidance gradient against the hand backward, names, and the denoiser-encoder start.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import reference
from reference import UNetConfig, classifier_parameter_shapes
from tests.helpers import rel_error

CONFIGS = [UNetConfig.tiny(num_classes=3),
           UNetConfig.tiny(num_classes=4, num_res_blocks=2, ch=8, groups=4, num_heads=2)]


def _pair(config, seed=4):
    ref = reference.Classifier(config, seed=seed, zero_init=False)
    model = ddpm.Classifier(config).double()
    model.load_numpy_params(ref.params)
    return ref, model


@pytest.mark.parametrize("config", CONFIGS, ids=["tiny", "two-blocks-heads"])
def test_torch_classifier_equals_reference_in_float64(config):
    ref, model = _pair(config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, config.in_channels, config.image_size, config.image_size))
    t = np.array([0, 17, 999])
    g = rng.standard_normal((3, config.num_classes))
    logits = ref.forward(x, t)
    dx = ref.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    out = model(xt, torch.tensor(t))
    (out * torch.tensor(g)).sum().backward()
    assert rel_error(out.detach(), logits) <= 1e-10
    assert rel_error(xt.grad, dx) <= 1e-10
    for name, p in model.named_parameters():
        if name.endswith("to_k.bias"):  # zero in exact arithmetic (softmax ignores a shared shift)
            assert np.abs(p.grad.numpy()).max() < 1e-14 and np.abs(ref.grads[name]).max() < 1e-14
            continue
        assert rel_error(p.grad, ref.grads[name]) <= 1e-10, name


def test_autograd_guidance_gradient_equals_the_hand_backward():
    config = CONFIGS[0]
    ref, model = _pair(config, seed=7)
    x = np.random.default_rng(1).standard_normal((4, 1, 4, 4))
    t, y = np.array([3, 3, 500, 999]), np.array([0, 1, 2, 0])
    log_p, grad = ref.log_prob_gradient(x, t, y)
    log_p_t, grad_t = model.log_prob_gradient(torch.tensor(x), torch.tensor(t), torch.tensor(y))
    assert rel_error(log_p_t, log_p) <= 1e-10
    assert rel_error(grad_t, grad) <= 1e-10
    assert grad_t.dtype == torch.float64 and not grad_t.requires_grad


def test_state_dict_names_are_the_reference_names_in_order():
    config = UNetConfig.digits8(num_classes=10)
    model = ddpm.Classifier(config)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        list(classifier_parameter_shapes(config).items())


def test_from_denoiser_starts_from_the_denoisers_encoder():
    torch.manual_seed(0)
    unet = ddpm.UNet(UNetConfig.digits8(), zero_init=False)
    model = ddpm.Classifier.from_denoiser(unet, 10)
    state, encoder = model.state_dict(), unet.state_dict()
    shared = [k for k in state if not k.startswith("head.")]
    assert shared and all(torch.equal(state[k], encoder[k]) for k in shared)
    assert model.num_classes == 10 and model.config.num_classes == 10


def test_torch_classifier_rejects_bad_inputs():
    model = ddpm.Classifier(CONFIGS[0])
    with pytest.raises(ValueError, match="image shape"):
        model(torch.zeros(1, 1, 8, 8), torch.tensor([1]))
    with pytest.raises(TypeError, match="t must be"):
        model(torch.zeros(1, 1, 4, 4), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="num_classes"):
        ddpm.Classifier(UNetConfig.tiny())


def test_classifier_trainer_loss_is_the_reference_training_steps():
    """ClassifierTrainer.compute_loss and reference.classifier_train_step draw the same t and
    noise (the denoiser's training draws) and give the same cross-entropy (float32 vs float64)."""
    from ddpm.data import ImageDataset
    from ddpm.runs_classifier import ClassifierTrainer

    config = UNetConfig.tiny(num_classes=3)
    torch.manual_seed(0)
    model = ddpm.Classifier(config, zero_init=False)
    ref = reference.Classifier(config, params=model.numpy_params())
    rng = np.random.default_rng(0)
    x0 = np.clip(rng.standard_normal((6, 1, 4, 4)), -1, 1).astype(np.float32)
    y = np.array([0, 1, 2, 2, 1, 0])
    schedule = reference.make_schedule("linear", 50)
    data = ImageDataset(torch.from_numpy(x0), torch.from_numpy(y), 3, None, "x")
    trainer = ClassifierTrainer(model, schedule, ddpm.TrainConfig(label_dropout=0.0, seed=5, batch_size=6), data)
    step, samples = 3, np.arange(6)
    t = reference.training_draws(5, samples, step, schedule.T).t
    loss = trainer.compute_loss(torch.from_numpy(x0), torch.from_numpy(t), torch.from_numpy(y),
                                torch.from_numpy(samples), step)
    expected = reference.classifier_train_step(ref, reference.Adam(ref.params), x0.astype(np.float64), y, schedule,
                                               seed=5, step=step)["loss"]
    assert loss.requires_grad and loss.detach().item() == pytest.approx(expected, rel=1e-5)
