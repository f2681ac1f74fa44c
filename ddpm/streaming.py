"""Streaming training data: images read and decoded per item, fed through torch's DataLoader.

`ddpm.data` decodes a whole source into one float32 tensor; that serves the digits, MNIST and
CIFAR-10, not a 30k-image 256x256 folder (~6 GB as float32). `open_streaming` lists a source
(an image folder, class = subfolder; a .npy, memory-mapped; a .npz, an IDX file or the digits,
held as stored; ddpm.streaming_sources) and `StreamingDataset.feed` decodes only the items a step needs, in DataLoader
workers, with prefetching and (on CUDA) pinned memory.

Exactness (as the in-memory path): the trainer's `EpochSampler` still decides which item fills
each slot of the global batch; the feed's batch sampler replays that same order from the
trainer's position, each rank loading only its slice (ddpm.distributed.rank_slice). A random
crop is `reference.random_crop_boxes(seed, global sample position)`, never a worker's RNG; the
flip stays the trainer's. So a resumed run, a run with other worker counts and a run on other
numbers of processes see the same pixels as the uninterrupted single-process run; with
resize="none" they are bit for bit the in-memory loader's.

    resize="none"     every image the same size (else a DataError), fitted as ddpm.data does
    resize="center"   the centred square, resized with Pillow's antialiased Lanczos filter
    resize="random"   a random square of area fraction in [crop_scale, 1], then as "center"

Bad images: a file whose header Pillow cannot read is found by the scan before training; one
that fails later (e.g. truncated data) when its item is decoded. bad_images="stop" raises a
DataError naming the file; "skip" reports each file once (one line), drops scan failures from
the listing and fills a decode failure's slot with the next readable item, and counts the
skips at the end of every epoch. `--cache` (ddpm.streaming_cache) writes the decoded uint8
images once to a memory-mapped .npy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

import reference

from .data import DataError, EpochSampler, _one_line, data_fingerprint, fingerprint_picks, prepare_images
from .distributed import DistributedContext, rank_slice

__all__ = ["RESIZE_POLICIES", "BAD_IMAGE_POLICIES", "StreamOptions", "StreamingDataset", "StreamFeed"]

log = logging.getLogger("ddpm.streaming")

RESIZE_POLICIES = ("none", "center", "random")
BAD_IMAGE_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class StreamOptions:
    """How a source is streamed. workers: DataLoader processes (0: decode in the training
    process); prefetch: batches each worker keeps ready; crop_scale: the smallest area fraction
    of a random crop; cache_dir: where ddpm.streaming_cache keeps the decoded images (None: no
    cache)."""

    resize: str = "none"
    crop_scale: float = 0.64
    workers: int = 2
    prefetch: int = 2
    bad_images: str = "stop"
    cache_dir: str | None = None

    def __post_init__(self):
        if self.resize not in RESIZE_POLICIES:
            raise DataError(f"--resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise DataError(f"--bad-images must be one of {BAD_IMAGE_POLICIES}, got {self.bad_images!r}")
        if not (isinstance(self.crop_scale, (int, float)) and 0.0 < self.crop_scale <= 1.0):
            raise DataError(f"--crop-scale must lie in (0, 1], got {self.crop_scale!r}")
        for name in ("workers", "prefetch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "workers" else 1):
                raise DataError(f"--{name} must be an int >= {0 if name == 'workers' else 1}, got {value!r}")
        if self.cache_dir is not None and self.resize == "random":
            raise DataError("--cache stores one decoded image per item: use it with --resize none or center "
                            "(random crops are drawn per step)")

    def record(self) -> dict:
        """What the run's config records about the loader (the resize choice among it)."""
        return {"stream": True, "resize": self.resize, "crop_scale": self.crop_scale,
                "bad_images": self.bad_images, "cache": self.cache_dir is not None}


def _pillow_resize(array: np.ndarray, box, size: int) -> np.ndarray:
    """(C, H, W) -> float32 (C, size, size): the square box (top, left, side), resized per channel
    in Pillow's float mode with its antialiased Lanczos filter (Image.ANTIALIAS of old)."""
    from PIL import Image

    top, left, side = (int(v) for v in box)
    out = np.empty((array.shape[0], size, size), dtype=np.float32)
    square = array[:, top:top + side, left:left + side]  # cropped first: no pixel outside the box
    for c in range(array.shape[0]):  # leaks into the filter's support at the edges
        channel = Image.fromarray(np.ascontiguousarray(square[c], dtype=np.float32))
        out[c] = np.asarray(channel.resize((size, size), Image.Resampling.LANCZOS))
    return out


# ----------------------------------------------------------------------------- the dataset

class StreamingDataset:
    """A source read per item, with the attributes of ddpm.data.ImageDataset a run uses
    (len, image_shape, labels, num_classes, class_names, source, hflip, fingerprint, describe).

    item(index, position, seed) -> float32 (C, S, S) in [-1, 1]: the item at dataset `index`
    drawn at global sample `position` (which fixes a random crop).
    """

    def __init__(self, reader, *, image_size: int, channels: int, labels: torch.Tensor | None,
                 num_classes: int | None, class_names: list[str] | None, source: str, hflip: bool,
                 options: StreamOptions, listing: list[tuple[str, int, int]]):
        self.reader, self.image_size, self.channels = reader, image_size, channels
        self.labels, self.num_classes, self.class_names = labels, num_classes, class_names
        self.source, self.hflip, self.options = source, hflip, options
        self.listing = listing   # (name, bytes, mtime_ns) of what was read: the cache's key
        self.cache = None        # a ddpm.streaming_cache.DecodedCache once attached
        self._fingerprint = None

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def _decode(self, index: int, position: int, seed: int, crop: str) -> torch.Tensor:
        array, value_range = self.reader.read(index)
        name = self.reader.name(index)
        if crop != "none":
            height, width = array.shape[1:]
            box = (reference.center_crop_box(height, width) if crop == "center" else
                   reference.random_crop_boxes(seed, np.array([position]), height, width,
                                               self.options.crop_scale)[0])
            array = _pillow_resize(array, box, self.image_size)
        return prepare_images(array[None], self.image_size, self.channels, value_range=value_range,
                              layout="NCHW", name=name)[0]

    def item(self, index: int, position: int, seed: int, *, crop: str | None = None) -> torch.Tensor:
        """One item (class docstring); crop overrides the resize policy (the fingerprint reads
        random-crop data centre-cropped). Raises DataError on an unreadable item."""
        if self.cache is not None:
            return self.cache.item(index)
        return self._decode(index, position, seed, self.options.resize if crop is None else crop)

    def readable_item(self, index: int, position: int, seed: int, *, crop: str | None = None):
        """(item, [(index, one-line report)] of the unreadable items passed over): under
        bad_images="skip" an unreadable item is replaced by the next readable one (index order,
        wrapping), under "stop" its DataError propagates."""
        bad = []
        for step in range(len(self)):
            i = (index + step) % len(self)
            if self.cache is not None and self.cache.is_bad(i):
                bad.append((i, self.cache.bad_report(i)))
                continue
            try:
                return self.item(i, position, seed, crop=crop), bad
            except DataError as err:
                if self.options.bad_images == "stop":
                    raise
                bad.append((i, _one_line(err)))
        raise DataError(f"{self.source}: no readable image among its {len(self)} items")

    def fingerprint(self) -> dict:
        """ddpm.data's fingerprint of the same items (random crops read centre-cropped), plus the
        resize policy when it is not "none" (it changes the pixels a run sees)."""
        if self._fingerprint is not None:  # the data cannot change under a run: hash it once
            return dict(self._fingerprint)
        picks = fingerprint_picks(len(self))
        crop = "center" if self.options.resize == "random" else None
        images = torch.stack([self.readable_item(int(i), 0, 0, crop=crop)[0] for i in picks])
        out = data_fingerprint(len(self), picks, images, self.labels, self.image_shape, self.num_classes)
        if self.options.resize != "none":
            out["resize"] = self.options.resize
        self._fingerprint = out
        return dict(out)

    def describe(self) -> str:
        c, h, w = self.image_shape
        classes = f", {self.num_classes} classes" if self.num_classes else ", unlabelled"
        workers = self.options.workers
        how = "cached" if self.cache is not None else f"{workers} worker{'s' * (workers != 1)}"
        return (f"{self.source}: {len(self)} images {c}x{h}x{w}{classes}; streamed ({how}, "
                f"resize {self.options.resize})")

    def feed(self, seed: int, batch_size: int, ctx: DistributedContext) -> "StreamFeed":
        return StreamFeed(self, seed, batch_size, ctx)


# ----------------------------------------------------------------------------- the feed

class _ItemLoader(torch.utils.data.Dataset):
    """What the DataLoader indexes: key (index, position) -> (image or None, bad reports,
    error line or None); a "stop" error travels as a line, so the run reports one line."""

    def __init__(self, dataset: StreamingDataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, position = key
        try:
            image, bad = self.dataset.readable_item(index, position, self.seed)
        except DataError as err:
            return None, [], _one_line(err)
        return image, [(position, i, line) for i, line in bad], None


def _collate(items):
    errors = [error for _, _, error in items if error is not None]
    if errors:
        return None, [], errors[0]
    return torch.stack([image for image, _, _ in items]), [b for _, bad, _ in items for b in bad], None


class _RankBatches:
    """This rank's slice of every global batch from global position `start` on: the keys
    (index, position) of `EpochSampler(n, seed, start)`, as the trainer draws them."""

    def __init__(self, n: int, seed: int, batch_size: int, start: int, mine: slice):
        self.n, self.seed, self.batch_size, self.start, self.mine = n, seed, batch_size, start, mine

    def __iter__(self):
        sampler = EpochSampler(self.n, self.seed, position=self.start)
        offsets = np.arange(self.batch_size)[self.mine]
        while True:
            first = sampler.position
            indices = sampler.next(self.batch_size)[self.mine]
            yield [(int(i), int(first + k)) for i, k in zip(indices, offsets)]


class StreamFeed:
    """Batches of a StreamingDataset for a Trainer: `take(start, indices)` returns this rank's
    images (n, C, S, S) float32 of the global batch that begins at sampler position `start`.

    The DataLoader runs ahead of the trainer (prefetch); when the trainer's position is not the
    one the loader is at (first call, a resume, a jump), it is restarted there.
    """

    def __init__(self, dataset: StreamingDataset, seed: int, batch_size: int, ctx: DistributedContext):
        self.dataset, self.seed, self.batch_size, self.ctx = dataset, seed, batch_size, ctx
        self.mine = rank_slice(batch_size, ctx)
        self.pin = ctx.device.type == "cuda"
        self._batches = None
        self._next = None                      # the global position the loader delivers next
        self.reported: set[int] = set()        # dataset indices already reported
        self.skipped: dict[int, int] = {}      # epoch -> unreadable items skipped in it

    def _start(self, start: int) -> None:
        self.close()
        options = self.dataset.options
        workers = options.workers
        loader = torch.utils.data.DataLoader(
            _ItemLoader(self.dataset, self.seed),
            batch_sampler=_RankBatches(len(self.dataset), self.seed, self.batch_size, start, self.mine),
            num_workers=workers, collate_fn=_collate, pin_memory=self.pin,
            prefetch_factor=options.prefetch if workers > 0 else None)
        self._batches, self._next = iter(loader), start

    def take(self, start: int, indices: np.ndarray) -> torch.Tensor:
        if self.dataset.cache is not None:  # decoded already: one gather, no workers needed
            images, bad = self.dataset.cache.batch(indices)
            positions = start + np.arange(self.batch_size)[self.mine]
            self._count_skips(start, [(int(positions[k]), i, line) for k, i, line in bad])
            return images.pin_memory() if self.pin else images
        if self._batches is None or self._next != start:
            self._start(start)
        images, bad, error = next(self._batches)
        if error is not None:
            self.close()
            raise DataError(error)
        if images.shape[0] != len(indices):  # the loader replays the trainer's order: a bug if not
            raise RuntimeError(f"stream feed delivered {images.shape[0]} images for {len(indices)} indices")
        self._count_skips(start, bad)
        self._next = start + self.batch_size
        return images

    def _count_skips(self, start: int, bad) -> None:
        n = len(self.dataset)
        for position, index, line in bad:
            epoch = position // n
            self.skipped[epoch] = self.skipped.get(epoch, 0) + 1
            if index not in self.reported:
                self.reported.add(index)
                log.warning("skipped %s", line)
        first, last = start // n, (start + self.batch_size) // n
        for epoch in range(first, last):  # epochs this batch completed
            if self.skipped.get(epoch):
                log.warning("epoch %d: skipped %d unreadable image(s)%s (each replaced by the next "
                            "readable one)", epoch, self.skipped[epoch],
                            f" on rank {self.ctx.rank}" if self.ctx.distributed else "")

    def close(self) -> None:
        """Stop the workers (the DataLoader iterator shuts them down when dropped)."""
        self._batches, self._next = None, None
