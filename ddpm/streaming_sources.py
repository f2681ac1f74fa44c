"""Opening a source for streaming: `open_streaming` lists an image folder (reading every header
once: sizes, unreadable files) or maps an array source, and returns a ddpm.streaming
StreamingDataset whose reader decodes one item at a time (see ddpm.streaming for the rest)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .data import (DataError, _find_idx_pair, _labels_tensor, _one_line, _to_nchw, _value_range, list_image_files,
                   prepare_images, read_array_file, read_idx, read_image_file)
from .streaming import StreamingDataset, StreamOptions

__all__ = ["open_streaming"]

log = logging.getLogger("ddpm.streaming")


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
