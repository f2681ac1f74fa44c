"""Standard FID: the Inception-v3 network of the FID reference code, with weights the user brings.

FID (Heusel et al. 2017) is the Frechet distance between Gaussians fitted to the 2048-d pool3
features of Inception-v3 as TensorFlow's 2015-12-05 graph computes them. pytorch-fid ports that
graph to PyTorch: torchvision's Inception3 with four patches (its `fid_inception_v3`), and the
weights file `pt_inception-2015-12-05-6726825d.pth`. This module is that architecture in plain
torch, module for module and parameter name for parameter name, so the same file loads with
`load_state_dict(strict=True)`:

- BasicConv2d = conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys `<name>.conv.weight`,
  `<name>.bn.{weight,bias,running_mean,running_var}`;
- InceptionA / InceptionC / the first InceptionE: the pooling branch averages over the 3x3 window
  without the zero padding (TensorFlow's avg_pool, `count_include_pad=False`);
- the second InceptionE (Mixed_7c): the pooling branch is a 3x3 max pool (as in the TF graph);
- the 1008-way `fc` head (the TF graph's classes) is kept so that the file loads strictly; FID
  does not use it. No auxiliary classifier.

Input: images (N, C, H, W) in [-1, 1] (the project's model space), C = 1 (repeated to RGB, as
pytorch-fid's loader converts grayscale files to RGB) or 3. As pytorch-fid's `InceptionV3`:
to [0, 1], bilinear resize to 299 x 299 (`align_corners=False`), then 2 x - 1.

The weights are never downloaded: `load_fid_inception(path)` reads the file the user names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FIDInceptionV3", "load_fid_inception", "inception_features", "standard_fid", "fid_with_floor",
           "FID_WEIGHTS_NAME", "FEATURE_DIM", "INPUT_SIZE"]

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TF graph's softmax (1000 ImageNet classes + 8 unused)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_args):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_args)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's avg_pool divides by the number of real (unpadded) inputs in the window
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl,
                          self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..e): factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl,
                          self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b, Mixed_7c); `max_pool`: the TF graph's Mixed_7c pools by max."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool
                  else _tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's `fid_inception_v3()` network; `forward` returns the (N, 2048) pool3 features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # only so the weights file loads strictly

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """(N, 1 or 3, H, W) in [-1, 1] -> (N, 3, 299, 299) in [-1, 1], as pytorch-fid."""
        x = (images + 1.0) / 2.0  # the [0, 1] images pytorch-fid reads
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) already preprocessed -> (N, 2048): the final average pool's output."""
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = getattr(self, name)(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool3(self.preprocess(images))


def load_fid_inception(path, device="cpu") -> FIDInceptionV3:
    """The FID Inception network with the weights in `path` (pytorch-fid's
    pt_inception-2015-12-05-*.pth, read locally, never downloaded), in eval mode on `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--inception: no such file {str(path)!r} (expected pytorch-fid's "
                                f"{FID_WEIGHTS_NAME}, which this project never downloads)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which and why, in one line
        raise ValueError(f"--inception: cannot read {str(path)!r} as a torch state dict: "
                         f"{type(err).__name__}: {err}".splitlines()[0]) from err
    if not isinstance(state, dict):
        raise ValueError(f"--inception: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    model = FIDInceptionV3()
    expected = set(model.state_dict())
    # files saved before BatchNorm counted batches lack num_batches_tracked; nothing reads it here
    missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"--inception: {str(path)!r} is not the FID Inception network's state dict "
                         f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} "
                         f"unexpected, e.g. {unexpected[:2]})")
    shapes = model.state_dict()
    wrong = [k for k in state if tuple(state[k].shape) != tuple(shapes[k].shape)]
    if wrong:
        raise ValueError(f"--inception: {str(path)!r}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                         f"expected {tuple(shapes[wrong[0]].shape)}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images, batch_size: int = 50) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] (tensor or array), C in (1, 3) -> (N, 2048) float64."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W) for the FID Inception network, "
                         f"got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    device = next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(device, torch.float32)).double().cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).numpy()


def standard_fid(images, real_images, inception, *, batch_size: int = 50) -> float:
    """FID (Heusel et al. 2017) between `images` and `real_images` (each (N, 1 or 3, H, W) in
    [-1, 1]): the Frechet distance (reference.eval_metrics, pytorch-fid's formula) between
    Gaussians fitted to their pool3 features. `inception`: a loaded FIDInceptionV3 or the path of
    pytorch-fid's weights file. Fewer than 2049 images per side give a singular covariance: the
    figure is then biased upward (reference.eval_metrics warns with the numbers)."""
    from reference.eval_metrics import frechet_distance_features

    model = inception if isinstance(inception, FIDInceptionV3) else load_fid_inception(inception)
    return frechet_distance_features(inception_features(model, real_images, batch_size),
                                     inception_features(model, images, batch_size))


def fid_with_floor(model: FIDInceptionV3, images, real_a, real_b, *, batch_size: int = 50) -> tuple[float, float]:
    """(FID of images against real half A, FID of real half B against A): the standard FID beside
    its floor, on the same halves as ddpm.evaluate's figures."""
    from reference.eval_metrics import frechet_distance_features

    features_a = inception_features(model, real_a, batch_size)
    return (frechet_distance_features(features_a, inception_features(model, images, batch_size)),
            frechet_distance_features(features_a, inception_features(model, real_b, batch_size)))
