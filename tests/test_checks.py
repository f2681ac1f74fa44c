"""The house's shared checks (reference/_validate.py): one seed range, one class-label range, one
parameter-name check, with the same message wherever a value enters (reference, ddpm, kernels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddpm
import kernels
import reference
from ddpm.checkpoint import CheckpointError, check_state_dict
from ddpm.data import EpochSampler, ImageDataset
from ddpm.train import TrainConfig
from reference import check_class_labels, check_parameter_names, check_seed

CONFIG = reference.UNetConfig.tiny(num_classes=3)


def message(call) -> str:
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return str(info.value)


# ----------------------------------------------------------------------------- seeds

def test_one_seed_range_everywhere():
    """[0, 2**64), the Philox key, for the noise stream, training, data order, sampling and kernels."""
    assert check_seed(0) == 0 and check_seed(np.uint64(2**64 - 1)) == 2**64 - 1
    too_big = "seed must lie in [0, 2**64), got 18446744073709551616"
    calls = [
        lambda: check_seed(2**64),
        lambda: reference.normal(2**64, [0], 0, (2,)),
        lambda: reference.training_draws(2**64, [0], 0, 10),
        lambda: reference.make_dataset("moons", 4, seed=2**64),
        lambda: TrainConfig(seed=2**64),
        lambda: EpochSampler(4, 2**64),
        lambda: ddpm.sample(ddpm.UNet(CONFIG), (1, 1, 4, 4), reference.make_schedule("linear", 10), seed=2**64),
        lambda: kernels.normal(2**64, torch.arange(1), 0, (2,)),
    ]
    for call in calls:
        assert message(call) == too_big
    assert message(lambda: check_seed(-1)) == "seed must lie in [0, 2**64), got -1"
    assert message(lambda: check_seed(1.0)) == "seed must be an int, got float"
    assert message(lambda: check_seed(True)) == "seed must be an int, got bool"
    assert TrainConfig(seed=2**64 - 1).seed == EpochSampler(4, 2**64 - 1).seed == 2**64 - 1


# ----------------------------------------------------------------------------- class labels

def test_class_labels_name_the_argument_the_range_and_the_bad_value():
    assert check_class_labels([0, 2], 3).tolist() == [0, 2]
    assert check_class_labels(torch.tensor([3]), 3, allow_null=True).dtype == np.int64
    assert message(lambda: check_class_labels([0, 3], 3, "labels")) == "labels must lie in [0, 3), got min 0 max 3"
    assert message(lambda: check_class_labels(-1, 3, "--class")) == "--class must lie in [0, 3), got -1"
    assert (message(lambda: check_class_labels([4], 3, allow_null=True))
            == "y must lie in [0, 3] (3 = the null class), got min 4 max 4")
    assert message(lambda: check_class_labels([0.5], 3)) == "y must be integer class ids, got float64"
    assert message(lambda: check_class_labels([True], 3)) == "y must be integer class ids, got bool"
    assert message(lambda: check_class_labels([0], 0)) == "num_classes must be a positive int, got 0"


def test_every_model_input_refuses_a_class_beyond_the_null_class_alike():
    expected = "y must lie in [0, 3] (3 = the null class), got min 0 max 4"
    x = np.zeros((2, 1, 4, 4))
    torch_model = ddpm.UNet(CONFIG)
    trainer_batch = ddpm.Trainer(ddpm.UNet(CONFIG), reference.make_schedule("linear", 10),
                                 TrainConfig(batch_size=2), ImageDataset(
                                     torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), 3, None, "zeros"))
    calls = [
        lambda: reference.UNet(CONFIG).forward(x, 0, np.array([0, 4])),
        lambda: torch_model(torch.zeros(2, 1, 4, 4), 0, torch.tensor([0, 4])),
        lambda: trainer_batch.check_batch(torch.zeros(2, 1, 4, 4), torch.tensor([0, 4])),
        lambda: ddpm.sample(torch_model, (2, 1, 4, 4), reference.make_schedule("linear", 10), y=[0, 4]),
    ]
    for call in calls:
        assert message(call) == expected
    assert (message(lambda: ImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 3]), 3, None, "zeros"))
            == "labels must lie in [0, 3), got min 0 max 3")


# ----------------------------------------------------------------------------- parameter names

def test_one_parameter_name_check_for_numpy_torch_and_checkpoints():
    shapes = reference.parameter_shapes(CONFIG)
    params = {name: np.zeros(shape) for name, shape in shapes.items()}
    check_parameter_names(shapes, params)
    check_parameter_names(shapes, dict(shapes))  # shapes stand for arrays
    del params["conv_in.bias"]
    params["extra.weight"] = np.zeros(2)
    params["conv_out.weight"] = np.zeros((1, 4, 1, 1))
    body = ("does not match the UNet config: missing 1 key(s): ['conv_in.bias']; unexpected 1 key(s): "
            "['extra.weight']; 1 wrong shape(s): ['conv_out.weight: expected (1, 4, 3, 3), got (1, 4, 1, 1)']")
    tensors = {name: torch.from_numpy(value) for name, value in params.items()}
    assert message(lambda: check_parameter_names(shapes, params, "params")) == f"params {body}"
    assert message(lambda: reference.UNet(CONFIG).load(params)) == f"params {body}"
    assert message(lambda: ddpm.UNet(CONFIG).load_numpy_params(params)) == f"params {body}"
    with pytest.raises(CheckpointError) as info:  # a bad checkpoint, not a bad argument
        check_state_dict(tensors, CONFIG, "model.safetensors")
    assert str(info.value) == f"model.safetensors {body}"


def test_long_name_lists_are_cut_after_ten():
    shapes = {f"p{k}": (1,) for k in range(12)}
    text = message(lambda: check_parameter_names(shapes, {}, "state", against="the config"))
    assert text.startswith("state does not match the config: missing 12 key(s): ['p0',")
    assert "'p9'] ..." in text and "'p10'" not in text
