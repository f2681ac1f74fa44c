"""Evaluation runs: `python -m ddpm train-features` and `python -m ddpm eval` (ddpm.cli parses,
this module runs). The figures are ddpm.evaluate's; sampling from a checkpoint is ddpm.runs'.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import reference

from .feature_net import save_feature_net, train_feature_net
from .preflight import UsageError, check_output_file

__all__ = ["train_features_run"]


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
