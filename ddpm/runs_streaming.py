"""A run's data: loaded whole (ddpm.data) or streamed (ddpm.streaming), and its `--cache`.

`python -m ddpm train --stream [--workers N] [--resize none|center|random] [--crop-scale A]
[--cache] [--bad-images stop|skip]`: ddpm.cli parses the flags into a dict, `run_data` decides.
A resumed run keeps the saved loader settings the caller leaves out (the resume policy of
ddpm.runs: a setting left out is the saved one); the resize policy is part of the data's
fingerprint, so changing it on resume is refused like other data changes.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import Checkpoint
from .data import ImageDataset, load_dataset
from .distributed import DistributedContext
from .preflight import UsageError
from .streaming import StreamingDataset, StreamOptions
from .streaming_sources import open_streaming
from .streaming_cache import attach_cache

__all__ = ["CACHE_DIR", "stream_options", "run_data", "attach_run_cache"]

CACHE_DIR = "data-cache"
STREAM_FLAGS = {"workers": "--workers", "resize": "--resize", "crop_scale": "--crop-scale",
                "cache": "--cache", "bad_images": "--bad-images", "prefetch": "--prefetch"}


def stream_options(stream: dict | None, ckpt: Checkpoint | None, out) -> StreamOptions | None:
    """The StreamOptions of a run, or None to load the data whole.

    stream: None (no --stream) or the flags given, e.g. {"workers": 2, "resize": "center",
    "cache": True}; a flag given without --stream is a UsageError. A run resumed from a
    streamed checkpoint streams again, taking the saved resize / crop_scale / bad_images /
    cache settings that are not given."""
    stream = None if stream is None else dict(stream)
    if stream is not None and not stream.pop("stream", True):
        given = [STREAM_FLAGS[k] for k, v in stream.items() if v not in (None, False)]
        if given:
            raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to streamed data: "
                             f"add --stream")
        stream = None
    saved = ((ckpt.config.get("data") or {}).get("loader") if ckpt is not None else None) or {}
    if stream is None and not saved.get("stream"):
        return None
    stream = {k: v for k, v in (stream or {}).items() if v is not None}
    settings = {key: stream.get(key, saved.get(key)) for key in ("resize", "crop_scale", "bad_images")}
    settings = {k: v for k, v in settings.items() if v is not None}
    cache = stream.get("cache") or saved.get("cache", False)
    return StreamOptions(**settings, **{k: stream[k] for k in ("workers", "prefetch") if k in stream},
                         cache_dir=str(Path(out) / CACHE_DIR) if cache else None)


def run_data(data: str, image_size: int, channels: int, *, hflip: bool | None,
             options: StreamOptions | None) -> ImageDataset | StreamingDataset:
    """The run's dataset fitted to (channels, image_size): whole, or streamed with `options`."""
    if options is None:
        return load_dataset(data, image_size, channels, hflip=hflip)
    return open_streaming(data, image_size, channels, hflip=hflip, options=options)


def attach_run_cache(dataset, ctx: DistributedContext, echo=print) -> None:
    """Build or reuse the run's --cache (after every check has passed: it is the first work)."""
    if not isinstance(dataset, StreamingDataset) or dataset.options.cache_dir is None:
        return
    reused = attach_cache(dataset, dataset.options.cache_dir, ctx)
    if ctx.is_main:
        echo(f"data cache: {'reused' if reused else 'wrote'} {dataset.options.cache_dir}")
