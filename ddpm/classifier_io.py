"""The classifier of classifier guidance as `python -m ddpm sample --classifier PATH` meets it:
load its checkpoint and check it against the denoiser's (ddpm.runs.sample_run calls these)."""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .classifier import Classifier
from .preflight import UsageError

__all__ = ["load_classifier", "check_classifier_fits"]


def load_classifier(path, *, device: torch.device, ema: bool = True) -> tuple[Classifier, Checkpoint]:
    """(eval-mode Classifier with the EMA (or raw) weights, its Checkpoint) from --classifier PATH."""
    try:
        ckpt = load_checkpoint(path, map_location="cpu", trainer_state=False)
    except CheckpointError as err:
        raise UsageError(f"--classifier {path}: {err}") from None
    if ckpt.model_kind != "classifier":
        raise UsageError(f"--classifier {path} holds a {ckpt.model_kind} checkpoint, not a classifier "
                         "(train one with python -m ddpm train-classifier)")
    model = Classifier(ckpt.unet_config)
    model.load_state_dict(ckpt.state_dict(ema=ema))
    return model.to(device).eval(), ckpt


def check_classifier_fits(classifier_ckpt: Checkpoint, model_ckpt: Checkpoint, class_id, path) -> None:
    """The classifier against the denoiser: image shape, schedule length (and betas), class count
    (a conditional model's), and that a class to guide to is given; UsageError naming them."""
    mine, theirs = classifier_ckpt.unet_config, model_ckpt.unet_config
    image, want = ((mine.in_channels, mine.image_size, mine.image_size),
                   (theirs.in_channels, theirs.image_size, theirs.image_size))
    if image != want:
        raise UsageError(f"--classifier {path} classifies images of shape {image}, the model draws {want}")
    if classifier_ckpt.schedule.T != model_ckpt.schedule.T or not np.array_equal(
            classifier_ckpt.schedule.betas, model_ckpt.schedule.betas):
        raise UsageError(f"--classifier {path} was trained on schedule {classifier_ckpt.schedule!r} (T="
                         f"{classifier_ckpt.schedule.T}), the model on {model_ckpt.schedule!r} (T={model_ckpt.schedule.T})")
    if theirs.num_classes is not None and theirs.num_classes != mine.num_classes:
        raise UsageError(f"--classifier {path} has {mine.num_classes} classes, the model {theirs.num_classes}")
    if class_id is None:
        raise UsageError("--classifier needs --class K (or --class all): the class to guide to")
