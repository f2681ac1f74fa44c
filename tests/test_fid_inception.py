"""The FID Inception network (ddpm.fid_inception) with random weights: the parameter names and
shapes of pytorch-fid's weights file, the 2048-d pool3 features, the input resizing and the two
TensorFlow pooling patches. The real weights are never downloaded; nothing here needs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm.fid_inception import (FEATURE_DIM, FIDInceptionV3, _tf_avg_pool, inception_features,
                                load_fid_inception)


@pytest.fixture(scope="module")
def random_weights():
    """A state dict shaped like pt_inception-2015-12-05-*.pth: He-scaled random weights (so the
    features still depend on the input 40 layers down), BatchNorm affine terms and statistics near
    the identity, and no num_batches_tracked (the file predates it)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, value in FIDInceptionV3().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        noise = torch.randn(value.shape, generator=g)
        if value.ndim >= 2:
            state[key] = noise * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = 1.0 + 0.1 * noise.abs()
        else:
            state[key] = 0.1 * noise
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, random_weights):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-random.pth"
    torch.save(random_weights, path)
    return path


def test_state_dict_names_and_shapes_are_pytorch_fids():
    # the keys of torchvision's Inception3(num_classes=1008, aux_logits=False) with pytorch-fid's
    # FIDInceptionA/C/E blocks swapped in (566 tensors, 94 of them BatchNorm counters)
    state = FIDInceptionV3().state_dict()
    assert len(state) == 566
    assert sum(k.endswith("num_batches_tracked") for k in state) == 94
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert not any(".conv.bias" in k for k in state)


def test_matches_torchvision_names_when_installed():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not a dependency")
    tv = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    ours = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    assert {k: tuple(v.shape) for k, v in tv.state_dict().items()} == ours


def test_loads_the_file_strictly_and_gives_2048_features(weights_file, random_weights):
    model = load_fid_inception(weights_file)
    assert not model.training
    for key, value in random_weights.items():
        assert torch.equal(model.state_dict()[key], value), key
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    features = inception_features(model, images, batch_size=1)
    assert features.shape == (2, FEATURE_DIM) and features.dtype == np.float64
    assert np.all(np.isfinite(features)) and np.all(features >= 0)  # ReLU then an average
    assert np.abs(features[0] - features[1]).max() > 1e-3 * np.abs(features).max()


def test_preprocess_is_pytorch_fids_resize_and_scaling():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 28, 28, generator=g) * 2 - 1
    y = FIDInceptionV3.preprocess(x)
    assert y.shape == (3, 3, 299, 299)
    # pytorch-fid: [0, 1] images, bilinear to 299 (align_corners=False), then 2x - 1
    unit = ((x + 1) / 2).repeat(1, 3, 1, 1)
    expected = 2 * F.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert torch.equal(y[:, 0], y[:, 2])  # grayscale repeated to RGB
    rgb = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    assert FIDInceptionV3.preprocess(rgb).shape == (1, 3, 299, 299)
    # a constant image stays that constant through the resize
    torch.testing.assert_close(FIDInceptionV3.preprocess(torch.full((1, 1, 8, 8), 0.25)),
                               torch.full((1, 3, 299, 299), 0.25), rtol=0, atol=1e-6)


def test_tensorflow_pooling_patches():
    ones = torch.ones(1, 1, 5, 5)
    # TF's average pool ignores the zero padding: a constant stays constant at the corners
    torch.testing.assert_close(_tf_avg_pool(ones), ones)
    assert F.avg_pool2d(ones, 3, 1, 1)[0, 0, 0, 0] == pytest.approx(4 / 9)  # what the patch avoids
    model = FIDInceptionV3()
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool


def test_pool3_on_a_small_input_is_deterministic(random_weights):
    # 75 x 75 is the smallest input the stem and reductions accept: cheap for a CPU test
    model = FIDInceptionV3()
    model.load_state_dict(random_weights, strict=False)
    model.eval()
    x = torch.randn(2, 3, 75, 75, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = model.pool3(x), model.pool3(x.flip(0))
    assert a.shape == (2, FEATURE_DIM)
    torch.testing.assert_close(a, b.flip(0))


def test_bad_inputs_name_the_problem(tmp_path, weights_file, random_weights):
    with pytest.raises(FileNotFoundError, match="--inception"):
        load_fid_inception(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="--inception: cannot read"):
        load_fid_inception(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, wrong)
    with pytest.raises(ValueError, match="missing keys"):
        load_fid_inception(wrong)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save({**random_weights, "fc.weight": torch.zeros(1000, 2048)}, bad_shape)
    with pytest.raises(ValueError, match="fc.weight has shape"):
        load_fid_inception(bad_shape)
    model = load_fid_inception(weights_file)
    with pytest.raises(ValueError, match="shape"):
        inception_features(model, torch.zeros(2, 2, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        inception_features(model, torch.full((1, 1, 28, 28), float("nan")))


def test_standard_fid_fits_gaussians_to_both_feature_sets(weights_file, monkeypatch):
    # the 2048 x 2048 sqrtm costs minutes on a loaded 2-core CPU; the formula itself is
    # reference.frechet_distance's, tested against closed forms in tests/test_eval_metrics.py.
    # Here: standard_fid hands (real features, sample features) of the right images to it.
    import reference.eval_metrics as eval_metrics
    from ddpm.fid_inception import standard_fid

    seen = []
    monkeypatch.setattr(eval_metrics, "frechet_distance_features", lambda x, y: seen.append((x, y)) or 7.0)
    model = load_fid_inception(weights_file)
    g = torch.Generator().manual_seed(4)
    samples, real = torch.rand(2, 1, 28, 28, generator=g) * 2 - 1, torch.rand(3, 1, 28, 28, generator=g) * 2 - 1
    assert standard_fid(samples, real, model, batch_size=2) == 7.0
    (x, y), = seen
    np.testing.assert_array_equal(x, inception_features(model, real))
    np.testing.assert_array_equal(y, inception_features(model, samples))


def test_eval_inception_bad_file_is_one_line_before_any_work(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "ddpm", "eval", "--samples", str(tmp_path / "none.npz"),
                           "--inception", str(tmp_path / "absent.pth"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--inception" in lines[0], proc.stderr
    assert not out.exists()


def test_fid_with_floor_uses_half_a_as_the_reference(weights_file, monkeypatch):
    import reference.eval_metrics as eval_metrics
    from ddpm.fid_inception import fid_with_floor

    seen = []
    monkeypatch.setattr(eval_metrics, "frechet_distance_features", lambda x, y: seen.append((x, y)) or len(seen))
    model = load_fid_inception(weights_file)
    g = torch.Generator().manual_seed(5)
    samples, a, b = (torch.rand(2, 1, 28, 28, generator=g) * 2 - 1 for _ in range(3))
    assert fid_with_floor(model, samples, a, b) == (1, 2)
    np.testing.assert_array_equal(seen[0][0], seen[1][0])  # both against half A
    np.testing.assert_array_equal(seen[0][0], inception_features(model, a))
    np.testing.assert_array_equal(seen[1][1], inception_features(model, b))
