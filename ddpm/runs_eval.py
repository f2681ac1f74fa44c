"""Evaluation runs: `python -m ddpm train-features` and `python -m ddpm eval` (ddpm.cli parses,
this module runs). The figures are ddpm.evaluate's; sampling from a checkpoint is ddpm.runs'.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import reference

from .data import DataError, _to_nchw, load_image_folder
from .distributed import init_distributed, shutdown_distributed
from .eval_report import format_table, save_report
from .evaluate import EvaluationError, check_images, native_image_shape, quality_with_details, resolve_feature_net
from .feature_net import FeatureNet, save_feature_net, train_feature_net
from .losses import bits_per_dim
from .preflight import UsageError, check_output_dir, check_output_file
from .runs import _sample_steps, class_labels, draw, load_model

__all__ = ["train_features_run", "eval_run", "load_samples"]

EVAL_FILES = ("eval.json", "report.png", "samples.npz")


def _echo(message: str) -> None:
    print(message, flush=True)


def train_features_run(data: str, out, *, echo=_echo) -> dict:
    """Train the feature net of `data` (digits, mnist), write it to `out` (.safetensors, and its
    metadata to out.json), print its held-out accuracy; returns the metadata."""
    if data not in reference.FEATURE_NET_DATA:
        raise UsageError(f"--data must be one of {', '.join(reference.FEATURE_NET_DATA)}, got {data!r}")
    out = check_output_file(out, "--out")
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must name a .safetensors file, got {out}")
    net = train_feature_net(data, echo=echo)
    save_feature_net(net, out)
    meta = net.meta
    echo(f"feature net {data}: held-out accuracy {100 * meta['held_out_accuracy']:.2f}% on "
         f"{meta['held_out_size']} images (trained on {meta['train_size']}, {meta['train_seconds']} s); "
         f"{meta['feature_dim']}-d features; wrote {out}")
    return meta


# ----------------------------------------------------------------------------- eval

def load_samples(path, net: FeatureNet) -> tuple[torch.Tensor, np.ndarray | None]:
    """(images (N, C, H, W) in [-1, 1], labels or None) from an .npz/.npy (arrays "images" or
    "samples", uint8 or float in [-1, 1], optional "labels") or an image folder (labels from
    class subfolders named 0, 1, ...). A size other than the feature net's is an error naming
    --samples, never a silent resize."""
    path = Path(path)
    c, s, _ = net.image_shape
    if not path.exists():
        raise UsageError(f"--samples {path} does not exist (a folder of PNGs or an .npz/.npy)")
    native = native_image_shape(path)
    if native is not None and native != (s, s):
        raise EvaluationError(f"--samples {path} holds {native[0]}x{native[1]} images but the feature "
                              f"network takes {s}x{s}")
    if path.is_dir():
        data = load_image_folder(path, s, c, hflip=False)
        labels = None
        if data.labels is not None and all(name.isdigit() for name in data.class_names):
            labels = np.array([int(data.class_names[k]) for k in data.labels.tolist()], dtype=np.int64)
        return data.images, labels
    if path.suffix.lower() not in (".npz", ".npy"):
        raise UsageError(f"--samples must be a folder of images or an .npz/.npy file, got {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"--samples: cannot read {path}: {' '.join(str(err).split())}") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            key = next((k for k in ("images", "samples", "x", "arr_0") if k in loaded.files), None)
            if key is None:
                raise DataError(f"--samples {path}: needs an 'images' or 'samples' array, found {loaded.files}")
            array = loaded[key]
            labels = next((loaded[k] for k in ("labels", "y") if k in loaded.files), None)
    else:
        array = loaded
    array = _to_nchw(np.asarray(array), f"--samples {path}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(array)), labels


def _draw_samples(checkpoint, net, *, sampler, steps, n, class_id, guidance, eta, seed, ema, clip, device, echo):
    """Sample n images (balanced over the classes of a conditional model unless --class) with
    ddpm.runs' sampling; returns (images, labels or None, model, schedule, sampler steps)."""
    ctx = init_distributed(device)
    try:
        model, schedule, ckpt = load_model(checkpoint, ema=ema, device=ctx.device)
        cfg = ckpt.unet_config
        made = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if made != tuple(net.image_shape):
            raise UsageError(f"--checkpoint {checkpoint}: the model makes {made} images but the feature "
                             f"network of --data takes {tuple(net.image_shape)}")
        # a conditional model is sampled balanced over its classes when no --class is given,
        # which is a class request as far as --guidance is concerned
        requested = class_id if class_id is not None else ("balanced" if cfg.num_classes else None)
        steps = _sample_steps(ckpt, sampler, steps, guidance, requested, eta)
        if class_id is None and cfg.num_classes:
            y = torch.arange(n, dtype=torch.int64) % cfg.num_classes  # balanced, for per-class rates
            y = y.sort().values
        else:
            y, n, _ = class_labels(class_id, n, cfg.num_classes)
        echo(f"sampling {n} images: {sampler}, {steps} steps, guidance {guidance}, seed {seed}")
        images, _ = draw(model, schedule, y, n, ctx, sampler=sampler, num_steps=steps, guidance_scale=guidance,
                         eta=eta, seed=seed, clip=(-1.0, 1.0) if clip else None)
        # clamped as a saved PNG would be: an undertrained model overshoots [-1, 1] by any amount
        return images.cpu().clamp(-1.0, 1.0), (None if y is None else y.numpy()), model, schedule, steps
    finally:
        shutdown_distributed(ctx)


def _bits_per_dim(model, schedule, real, index, count: int) -> float:
    """Mean bits/dim (ddpm.bits_per_dim, the full bound) of `count` real images of the floor
    half, put on the 8-bit grid first (the bound's discretised decoder needs it; the digits'
    16 grey levels are not on it)."""
    chosen = index[:count]
    x0 = ((real.images[chosen].double() + 1.0) * 127.5).round() / 127.5 - 1.0
    y = None if model.config.num_classes is None else real.labels[chosen]
    device = next(model.parameters()).device
    with torch.no_grad():
        total, _ = bits_per_dim(model, x0.to(device, torch.float32),
                                schedule, y=None if y is None else y.to(device))
    return float(total.double().mean())


def eval_run(checkpoint=None, samples=None, *, data: str = "digits", features=None, out="eval",
             sampler: str = "ddim", steps: int | None = None, n: int = 1000, class_id: str | None = None,
             guidance: float = 1.0, eta: float = 0.0, seed: int = 0, ema: bool = False, clip: bool = False,
             bpd: int = 64, k: int = 3, device=None, echo=_echo) -> dict:
    """`python -m ddpm eval`: the figures of ddpm.evaluate for a checkpoint's samples (drawn
    here with any sampler) or for samples on disk, against `data`; prints the table, writes
    OUT/eval.json, OUT/report.png and (from a checkpoint) OUT/samples.npz. Returns the figures."""
    if (checkpoint is None) == (samples is None):
        raise UsageError("pass exactly one of --checkpoint (sample from a model) or --samples (a folder or .npz)")
    if not isinstance(data, str) or (data not in reference.FEATURE_NET_DATA and not Path(data).exists()):
        raise UsageError(f"--data must be {' or '.join(reference.FEATURE_NET_DATA)} or an existing folder/.npz/IDX "
                         f"path, got {data!r}")
    if features is not None and not Path(features).is_file():
        raise UsageError(f"--features {features} is not a file (write one with python -m ddpm train-features)")
    out = check_output_dir(out, "--out", EVAL_FILES)
    net = resolve_feature_net(data, features, echo)
    model = None
    if checkpoint is not None:
        images, labels, model, schedule, steps = _draw_samples(
            checkpoint, net, sampler=sampler, steps=steps, n=n, class_id=class_id, guidance=guidance,
            eta=eta, seed=seed, ema=ema, clip=clip, device=device, echo=echo)
    else:
        images, labels = load_samples(samples, net)
    images = check_images(images, net.image_shape, "--samples" if samples is not None else "samples")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result, details = quality_with_details(images, data, labels, seed, net, k=k)
    for warning in caught:  # on stderr, as ddpm.runs warns
        print(f"warning: {warning.message}", file=sys.stderr, flush=True)
    result["bits_per_dim"] = result["bits_per_dim_floor"] = None
    if model is not None and model.config.out_channels == 2 * model.config.in_channels and bpd > 0:
        echo(f"bits/dim of {min(bpd, details['index_b'].size)} real images (learned variance, T forward passes)")
        result["bits_per_dim"] = _bits_per_dim(model, schedule, details["real"], details["index_b"], bpd)
    result["source"] = {"checkpoint": None if checkpoint is None else str(checkpoint),
                        "samples": None if samples is None else str(samples), "sampler": sampler if checkpoint else None,
                        "steps": steps, "guidance": guidance, "eta": eta, "seed": seed, "ema": ema, "clip": clip}
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        np.savez_compressed(out / "samples.npz", images=images.numpy(),
                            **({} if labels is None else {"labels": labels}))
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    save_report(out / "report.png", result, details)
    echo(format_table(result))
    echo(f"wrote {out / 'eval.json'}, {out / 'report.png'}" + (f", {out / 'samples.npz'}" if checkpoint else ""))
    return result
