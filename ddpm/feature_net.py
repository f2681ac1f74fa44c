"""The in-project feature networks: a small CNN classifier per evaluation dataset.

    python -m ddpm train-features --data digits --out features-digits.safetensors

Penultimate-layer activations (before the ReLU) are the features of FD-<data>, precision/recall
and density/coverage; the softmax gives the class hit rate and the Inception-style score. The
settings and splits are reference.feature_nets' (digits: stratified 80/20 seeded split; mnist:
first 9,000 of the 10k test split train, last 1,000 held out). Training is deterministic on CPU
(fixed seed, one thread). Weights go to safetensors with the metadata (data, held-out accuracy,
feature dimension, settings) in its header and in a .json beside it.

`default_feature_net(data)` trains the net once and caches it under $DDPM_CACHE (default
~/.cache/ddpm), so evaluation needs no set-up; the cache key includes the settings' hash.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference.feature_nets import feature_net_preset, feature_net_split, preset_fingerprint

from .data import DataError, ImageDataset, load_dataset

__all__ = ["FeatureNet", "train_feature_net", "save_feature_net", "load_feature_net",
           "default_feature_net", "reference_dataset", "cache_dir", "mnist_dir"]


class FeatureNet(nn.Module):
    """conv3x3 -> ReLU -> maxpool2, twice, -> linear (the features) -> ReLU -> linear (logits).

    Input (N, C, S, S) in [-1, 1] (model space); `features` (N, feature_dim), `forward` logits
    (N, num_classes). `meta` holds the data name, settings and held-out accuracy."""

    def __init__(self, preset: dict, meta: dict | None = None):
        super().__init__()
        c, (w1, w2), s = preset["channels"], preset["widths"], preset["image_size"]
        self.preset = dict(preset)
        self.meta = dict(meta or {})
        self.conv1 = nn.Conv2d(c, w1, 3, padding=1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1)
        side = s // 4  # two 2x2 max pools, floor division as F.max_pool2d does
        self.feature = nn.Linear(w2 * side * side, preset["feature_dim"])
        self.head = nn.Linear(preset["feature_dim"], preset["num_classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.preset["channels"], self.preset["image_size"], self.preset["image_size"])

    @property
    def feature_dim(self) -> int:
        return int(self.preset["feature_dim"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.feature(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, feature_dim), probabilities (N, classes)) as float64 NumPy, in eval mode
        on the CPU, float32 inside; images (N, C, S, S) in [-1, 1]."""
        self.eval()
        feats, probs = [], []
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to("cpu", torch.float32)
            f = self.features(x)
            feats.append(f.double().numpy())
            probs.append(torch.softmax(self.head(F.relu(f)).double(), dim=1).numpy())
        return np.concatenate(feats), np.concatenate(probs)


# ----------------------------------------------------------------------------- data

def mnist_dir() -> Path:
    """$DDPM_MNIST, else ../shared/data/mnist beside the project root (the 10k test split)."""
    env = os.environ.get("DDPM_MNIST")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def reference_dataset(data: str) -> ImageDataset:
    """The labelled real images of a built-in evaluation dataset ("digits" or "mnist")."""
    preset = feature_net_preset(data)
    if data == "digits":
        return load_dataset("digits", preset["image_size"], preset["channels"])
    path = mnist_dir()
    if not path.is_dir():
        raise DataError(f"data 'mnist': the MNIST folder {path} does not exist (set DDPM_MNIST to the "
                        f"folder holding t10k-images-idx3-ubyte.gz)")
    return load_dataset(path, preset["image_size"], preset["channels"])


# ----------------------------------------------------------------------------- training

def _accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    _, probs = net.embed(images)
    return float((probs.argmax(axis=1) == labels.numpy()).mean())


def train_feature_net(data: str, echo=None) -> FeatureNet:
    """Train the feature net of `data` on its split (reference.feature_net_split) with Adam and
    cross-entropy; deterministic: seeded init and batch order, one CPU thread while it trains.
    The returned net's meta holds the held-out accuracy."""
    preset = feature_net_preset(data)
    dataset = reference_dataset(data)
    train_index, held_index = feature_net_split(data, dataset.labels.numpy())
    x_train, y_train = dataset.images[train_index], dataset.labels[train_index]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        torch.manual_seed(preset["seed"])
        net = FeatureNet(preset)
        optimizer = torch.optim.Adam(net.parameters(), lr=preset["lr"])
        order = torch.Generator().manual_seed(preset["seed"])
        for epoch in range(preset["epochs"]):
            net.train()
            permutation = torch.randperm(x_train.shape[0], generator=order)
            for batch in permutation.split(preset["batch_size"]):
                loss = F.cross_entropy(net(x_train[batch]), y_train[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if echo is not None:
                echo(f"feature net {data}: epoch {epoch + 1}/{preset['epochs']} loss {loss.item():.4f}")
        accuracy = _accuracy(net, dataset.images[held_index], dataset.labels[held_index])
    finally:
        torch.set_num_threads(threads)
    net.meta = {"data": data, "held_out_accuracy": accuracy, "held_out_size": int(held_index.size),
                "train_size": int(train_index.size), "feature_dim": net.feature_dim,
                "fingerprint": preset_fingerprint(data), "train_seconds": round(time.perf_counter() - start, 1),
                "preset": json.loads(json.dumps(preset))}  # as a file stores it: lists, not tuples
    return net.eval()


# ----------------------------------------------------------------------------- files

def save_feature_net(net: FeatureNet, path) -> Path:
    """safetensors with the meta (JSON) in its header, and the same JSON at <path>.json; both
    written to temporary files first and renamed, so a reader never sees half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the preset rebuilds the module on load: it is written whatever the meta holds
    meta = json.dumps({**net.meta, "preset": net.preset}, sort_keys=True, default=list)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for target, write in ((path, lambda tmp: save_file(state, tmp, metadata={"feature_net": meta})),
                          (path.with_name(path.name + ".json"), lambda tmp: Path(tmp).write_text(meta + "\n"))):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def load_feature_net(path) -> FeatureNet:
    """A FeatureNet from a file written by save_feature_net (DataError naming it otherwise)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"features: {path} is not a file (write one with `python -m ddpm train-features`)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = json.loads(header["feature_net"])
        net = FeatureNet(meta["preset"], meta)
        net.load_state_dict(state)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        raise DataError(f"features: {path} is not a feature-net file ({' '.join(str(err).split())[:200]})") from None
    return net.eval()


def cache_dir() -> Path:
    """$DDPM_CACHE, else ~/.cache/ddpm."""
    env = os.environ.get("DDPM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ddpm"


def default_feature_net(data: str, echo=None) -> FeatureNet:
    """The cached feature net of `data`, trained (and cached) on first use."""
    path = cache_dir() / f"feature-net-{data}-{preset_fingerprint(data)}.safetensors"
    if path.is_file():
        return load_feature_net(path)
    # training mnist's takes minutes: say so (the logger when the caller gave no echo)
    (echo or logging.getLogger("ddpm.feature_net").info)(f"training the {data} feature net once; cached at {path}")
    net = train_feature_net(data)
    save_feature_net(net, path)
    return net
