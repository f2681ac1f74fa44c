"""`--cache`: a streamed source decoded and resized once into a memory-mapped uint8 .npy.

    RUN_DIR/data-cache/images.npy    (N, C, S, S) uint8: round((x + 1) * 127.5) of each item x
    RUN_DIR/data-cache/meta.json     the key it was built for, and the items found unreadable

Later epochs (and later runs on the same data) read rows of the memmap instead of decoding
files. Written atomically: the whole directory is built under a temporary name, synced and
renamed into place, so a crash leaves no half-written cache (leftovers are removed by the next
build). Reused only when its key matches: the data fingerprint (ddpm.data.data_fingerprint of
the decoded items), a hash of the listing (every file's name, size and mtime), the resize policy
and the image shape. Items read from the cache are 8-bit: for 8-bit sources with resize "none"
they are bit for bit the streamed (and in-memory) items; after a resize they are those rounded
to 8 bits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .data import DataError
from .distributed import DistributedContext, barrier
from .streaming import StreamingDataset, _collate, _ItemLoader

__all__ = ["DecodedCache", "cache_key", "attach_cache"]

CACHE_VERSION = 1
# uint8 v -> the float32 ddpm.data.prepare_images makes of it with value_range (0, 255)
_LUT = torch.from_numpy(((np.arange(256, dtype=np.float64) - 0.0) * (2.0 / 255.0) - 1.0).clip(-1.0, 1.0)
                        .astype(np.float32))


class DecodedCache:
    """Rows of the cache's images.npy, memory-mapped lazily in each process that reads them."""

    def __init__(self, directory: Path, bad: dict[int, str]):
        self.directory, self.bad = Path(directory), dict(bad)
        self._images = None
        self.replacement = None  # (n,) the row read for each index (a bad one: the next good one)

    def _open(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.directory / "images.npy", mmap_mode="r")
            n = len(self._images)
            good = np.array(sorted(set(range(n)) - set(self.bad)), dtype=np.int64)
            nxt = np.searchsorted(good, np.arange(n))  # the first good index >= i, wrapping
            self.replacement = good[nxt % len(good)] if len(good) else np.arange(n)
        return self._images

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        """(images (len(indices), C, S, S) float32, [(slot, index, report)] of the bad ones passed over):
        one gather from the memmap in the training process, no DataLoader (rows are page cache)."""
        images = self._open()
        rows = self.replacement[indices]
        order = np.argsort(rows, kind="stable")  # ascending reads from the file
        gathered = np.empty((len(rows),) + images.shape[1:], dtype=np.uint8)
        gathered[order] = images[rows[order]]
        bad = [(k, int(i), self.bad[int(i)]) for k, i in enumerate(indices) if int(i) in self.bad]
        return torch.from_numpy(_LUT.numpy()[gathered]), bad  # NumPy indexes by uint8 directly

    def __getstate__(self):
        return {**self.__dict__, "_images": None, "replacement": None}  # each worker maps the file itself

    def item(self, index: int) -> torch.Tensor:
        return _LUT[torch.from_numpy(np.array(self._open()[index], dtype=np.int64))]

    def is_bad(self, index: int) -> bool:
        return index in self.bad

    def bad_report(self, index: int) -> str:
        return self.bad[index]


def cache_key(dataset: StreamingDataset) -> dict:
    """What a cache must have been built from to be reused (module docstring)."""
    listing = hashlib.sha256("".join(f"{name}\t{size}\t{mtime}\n" for name, size, mtime in dataset.listing)
                             .encode()).hexdigest()
    return {"version": CACHE_VERSION, "source": dataset.source, "fingerprint": dataset.fingerprint(),
            "listing_sha256": listing, "resize": dataset.options.resize, "shape": list(dataset.image_shape)}


def _read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(dataset: StreamingDataset, directory: Path, key: dict, batch: int = 256) -> None:
    """Decode every item in order (DataLoader workers as the feed uses them) into a temporary
    directory, then rename it to `directory`."""
    for leftover in directory.parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        n = len(dataset)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, *dataset.image_shape))
        keys = [[(i, 0) for i in range(k, min(k + batch, n))] for k in range(0, n, batch)]
        workers = dataset.options.workers
        loader = torch.utils.data.DataLoader(_ItemLoader(dataset, 0), batch_sampler=keys, num_workers=workers,
                                             collate_fn=_collate,
                                             prefetch_factor=dataset.options.prefetch if workers else None)
        bad: dict[int, str] = {}
        for rows, (x, reports, error) in zip(keys, loader):
            if error is not None:
                raise DataError(error)
            bad.update((index, line) for _, index, line in reports)
            images[rows[0][0]:rows[-1][0] + 1] = ((x.double() + 1.0) * 127.5).round().clamp_(0, 255).to(torch.uint8).numpy()
        images.flush()
        del images
        (tmp / "meta.json").write_text(json.dumps({"key": key, "bad": {str(k): v for k, v in bad.items()}}))
        for name in ("images.npy", "meta.json"):
            _fsync(tmp / name)
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def attach_cache(dataset: StreamingDataset, directory, ctx: DistributedContext | None = None) -> bool:
    """Use (or first build, on rank 0 while the others wait) the cache at `directory` for
    `dataset`; True when an existing cache was reused. A stale cache is rebuilt."""
    directory = Path(directory)
    key = cache_key(dataset)
    meta = _read_meta(directory)
    reused = meta is not None and meta.get("key") == key and (directory / "images.npy").is_file()
    if not reused and (ctx is None or ctx.is_main):
        _build(dataset, directory, key)
    if ctx is not None:
        barrier(ctx)
    meta = _read_meta(directory)
    if meta is None or meta.get("key") != key:
        raise DataError(f"data cache {directory} does not match the data after it was built (did the data "
                        f"change meanwhile?)")
    dataset.cache = DecodedCache(directory, {int(k): v for k, v in meta["bad"].items()})
    return reused
