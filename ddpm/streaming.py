"""Streaming training data: images read and decoded per item, fed through torch's DataLoader.

`ddpm.data` decodes a whole source into one float32 tensor; that serves the digits, MNIST and
CIFAR-10, not a 30k-image 256x256 folder (~6 GB as float32). `open_streaming` lists a source
(an image folder, class = subfolder; a .npy, memory-mapped; a .npz, an IDX file or the digits,
held as stored) and `StreamingDataset.feed` decodes only the items a step needs, in DataLoader
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
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import reference

from .data import (DataError, EpochSampler, _find_idx_pair, _labels_tensor, _one_line, _to_nchw, _value_range,
                   data_fingerprint, fingerprint_picks, list_image_files, prepare_images, read_array_file,
                   read_idx, read_image_file)
from .distributed import DistributedContext, rank_slice

__all__ = ["RESIZE_POLICIES", "BAD_IMAGE_POLICIES", "StreamOptions", "StreamingDataset", "StreamFeed",
           "open_streaming"]

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


# ----------------------------------------------------------------------------- item readers

class _FolderReader:
    """Items of an image folder: item i is files[i], decoded by Pillow (ddpm.data.read_image_file)."""

    def __init__(self, files: list[str], channels: int):
        self.files, self.channels = files, channels

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        return self.files[i]

    def read(self, i: int) -> tuple[np.ndarray, tuple[float, float]]:
        array, hi = read_image_file(self.files[i], self.channels)
        return array, (0.0, hi)


class _ArrayReader:
    """Items of an array source, (N, C, H, W) view of the stored array; a .npy is memory-mapped
    in each process that reads it (a memmap would be pickled whole to the workers)."""

    def __init__(self, name: str, array: np.ndarray | None, path: str | None, value_range, layout: str):
        self._name, self._array, self.path = name, array, path
        self.value_range, self.layout = value_range, layout
        self.count = len(self._images())

    def _images(self) -> np.ndarray:
        if self._array is None:
            self._array = read_array_file(self.path, mmap=True)[0]
        return _to_nchw(self._array, self._name, self.layout)

    def __getstate__(self):
        return {**self.__dict__, "_array": None if self.path else self._array}

    def __len__(self) -> int:
        return self.count

    def name(self, i: int) -> str:
        return f"{self._name}[{i}]"

    def read(self, i: int) -> tuple[np.ndarray, tuple[float, float]]:
        return np.asarray(self._images()[i]), self.value_range


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


# ----------------------------------------------------------------------------- opening a source

def _scan_folder(files: list[tuple[int, Path]], options: StreamOptions):
    """Read every header (threads: Pillow releases the GIL in file I/O): (kept files, sizes).
    Unreadable headers stop the run or are dropped, one line each, by options.bad_images."""
    from PIL import Image

    def header(file):
        try:
            with Image.open(file) as img:
                return img.size, None
        except (Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as err:
            return None, f"cannot read image {file}: {_one_line(err)}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        headers = list(pool.map(header, [f for _, f in files], chunksize=64))
    kept, sizes, dropped = [], [], 0
    for (label, file), (size, error) in zip(files, headers):
        if error is None:
            kept.append((label, file))
            sizes.append(size)
        elif options.bad_images == "stop":
            raise DataError(error + " (--bad-images skip passes over unreadable images)")
        else:
            log.warning("skipped %s", error)
            dropped += 1
    if dropped:
        log.warning("skipped %d unreadable image(s) of %d while listing", dropped, len(files))
    if not kept:
        raise DataError(f"no readable image among the {len(files)} listed")
    return kept, sizes


def _open_folder(root: Path, image_size: int, channels: int, options: StreamOptions, hflip):
    files, class_names = list_image_files(root)
    files, sizes = _scan_folder(files, options)
    if options.resize == "none" and len(set(sizes)) > 1:
        first = sizes[0]
        other = next(k for k, size in enumerate(sizes) if size != first)
        raise DataError(f"{root} holds images of mixed sizes ({files[0][1]} is {first[0]}x{first[1]}, "
                        f"{files[other][1]} is {sizes[other][0]}x{sizes[other][1]}): pass --resize center "
                        f"or --resize random")
    stats = [f.stat() for _, f in files]
    listing = [(str(f.relative_to(root)), st.st_size, st.st_mtime_ns) for (_, f), st in zip(files, stats)]
    labels = None if class_names is None else torch.tensor([k for k, _ in files], dtype=torch.int64)
    return StreamingDataset(_FolderReader([str(f) for _, f in files], channels), image_size=image_size,
                            channels=channels, labels=labels, num_classes=None if labels is None else len(class_names),
                            class_names=class_names, source=f"folder {root}", hflip=True if hflip is None else hflip,
                            options=options, listing=listing)


def _open_array(name: str, images: np.ndarray, labels, path, image_size: int, channels: int,
                options: StreamOptions, value_range=None, hflip_default: bool = False):
    if images.dtype == object or not (np.issubdtype(images.dtype, np.number) or images.dtype == bool):
        prepare_images(images[:1], image_size, channels, name=name)  # its type error, one line
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise DataError(f"{name} must have shape (N, H, W), (N, H, W, C) or (N, C, H, W) with N >= 1, "
                        f"got {images.shape}")
    if np.issubdtype(images.dtype, np.floating):  # in chunks: a memory-mapped .npy stays on disk
        chunk = max(1, (1 << 24) // max(1, images[0].size))
        if not all(np.all(np.isfinite(images[k:k + chunk])) for k in range(0, len(images), chunk)):
            raise DataError(f"{name} contains NaN or inf")
    _to_nchw(images[:1], name)  # an ambiguous or unsupported layout: one line, now
    value_range = _value_range(images, name) if value_range is None else value_range
    y = num_classes = names = None
    if labels is not None:
        y, num_classes = _labels_tensor(labels, len(images), f"{name} labels")
        names = [str(k) for k in range(num_classes)]
    reader = _ArrayReader(name, None if path is not None else images, None if path is None else str(path),
                          value_range, "auto")
    listing = [] if path is None else [(str(path), Path(path).stat().st_size, Path(path).stat().st_mtime_ns)]
    return StreamingDataset(reader, image_size=image_size, channels=channels, labels=y, num_classes=num_classes,
                            class_names=names, source=name, hflip=hflip_default, options=options, listing=listing)


def open_streaming(source, image_size: int, channels: int, *, hflip: bool | None = None,
                   options: StreamOptions | None = None) -> StreamingDataset:
    """Like ddpm.data.load_dataset, but read per item: "digits", an image folder, a directory
    of IDX files, .npy (memory-mapped) / .npz, or an IDX file. hflip: None keeps each source's
    default (on for folders and 3-channel arrays, off otherwise)."""
    options = options or StreamOptions()
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if str(source) == "digits":
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        data = _open_array("digits (scikit-learn)", bunch.images, bunch.target, None, image_size, channels,
                           options, value_range=(0.0, 16.0))
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"data source {str(source)!r} does not exist (use 'digits', a folder, "
                            f".npy/.npz or an IDX file)")
        if path.is_dir() and not any("idx3" in p.name for p in path.iterdir() if p.is_file()):
            data = _open_folder(path, image_size, channels, options, hflip)
        elif path.is_dir() or ("idx" in path.name and path.suffix.lower() not in (".npy", ".npz")):
            images_path, labels_path = _find_idx_pair(path) if path.is_dir() else (path, None)
            labels = None if labels_path is None else read_idx(labels_path)
            data = _open_array(f"IDX {images_path}", read_idx(images_path), labels, None, image_size,
                               channels, options)
        elif path.suffix.lower() in (".npy", ".npz"):
            images, labels = read_array_file(path, mmap=path.suffix.lower() == ".npy")
            data = _open_array(f"array {path}", images, labels, path if path.suffix.lower() == ".npy" else None,
                               image_size, channels, options, hflip_default=images.ndim == 4 and channels == 3)
        else:
            raise DataError(f"unknown data file type {path.name!r}: expected .npy, .npz or an IDX file")
    if hflip is not None:
        data.hflip = bool(hflip)
    return data
