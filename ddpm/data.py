"""Training data: the embedded digits, image folders, .npy/.npz arrays and IDX files.

Every loader returns an `ImageDataset`: float32 images (N, C, H, W) scaled to [-1, 1] (the
range DDPM trains in, Ho et al. 2020 Sec. 3.3), fitted to the model's size and channels, with
optional int64 labels. Nothing here downloads anything.

    load_dataset("digits", image_size=8, channels=1)          scikit-learn's 1,797 8x8 digits
    load_dataset("path/to/folder", 32, 3)                     Pillow; class = subfolder name
    load_dataset("x.npz", 28, 1)                              arrays "images" (+ "labels")
    load_dataset("../shared/data/mnist", 32, 1)               IDX files (gzipped or not)

Data order for training comes from `EpochSampler`: one permutation per epoch from a NumPy
Generator seeded with (seed, epoch), so the whole order is a pure function of (seed, position)
and resuming needs only the position.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import reference

__all__ = [
    "DataError",
    "ImageDataset",
    "EpochSampler",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_array_file",
    "load_idx_dataset",
    "read_idx",
    "prepare_images",
    "IMAGE_EXTENSIONS",
    "fingerprint_picks",
    "data_fingerprint",
    "list_image_files",
    "read_array_file",
    "read_image_file",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """Data that cannot be used: a missing, corrupt or unsupported file, or images/labels that do
    not fit the model. The message names the file (the CLI prints it as one line, status 2)."""


class DataTypeError(DataError, TypeError):
    """A DataError about an array's type (also a TypeError, as before)."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


FINGERPRINT_ITEMS = 64

# IDX type byte -> big-endian NumPy dtype (LeCun's MNIST format description).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageDataset:
    """Images ready for training.

    images: (N, C, H, W) float32 in [-1, 1]; labels: (N,) int64 in [0, num_classes) or None;
    class_names: the name of each class id (folder names, or "0".."9"); hflip: whether random
    horizontal flips are a valid augmentation for this data (never for digits).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int | None
    class_names: list[str] | None
    source: str
    hflip: bool = False

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.float32:
            raise TypeError(f"images must be a float32 tensor, got {getattr(self.images, 'dtype', type(self.images))}")
        if self.images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.images.shape[0] == 0:
            raise ValueError(f"dataset {self.source!r} holds no images")
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
                raise ValueError(f"labels must be int64 of shape ({self.images.shape[0]},), "
                                 f"got {self.labels.dtype} {tuple(self.labels.shape)}")
            if self.num_classes is None:
                raise ValueError("num_classes is required when labels are given")
            reference.check_class_labels(self.labels, self.num_classes, "labels")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> dict:
        """What identifies this data for a resumed run: the count, the image shape, a SHA-256 of
        a fixed sample of items (FINGERPRINT_ITEMS spread evenly over the dataset, quantised to
        8 bits so that a last-bit difference of a resize does not count) and of all labels."""
        picks = fingerprint_picks(len(self))
        return data_fingerprint(len(self), picks, self.images[torch.from_numpy(picks)], self.labels, self.image_shape,
                                self.num_classes)

    def describe(self) -> str:
        c, h, w = self.image_shape
        classes = f", {self.num_classes} classes" if self.num_classes else ", unlabelled"
        return f"{self.source}: {len(self)} images {c}x{h}x{w}{classes}"


def fingerprint_picks(n: int) -> np.ndarray:
    """The dataset indices a fingerprint hashes: FINGERPRINT_ITEMS spread evenly over n."""
    return np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ITEMS)).round().astype(np.int64))


def data_fingerprint(n: int, picks: np.ndarray, images: torch.Tensor, labels: torch.Tensor | None,
                     shape, num_classes: int | None) -> dict:
    """`ImageDataset.fingerprint` of any n-item dataset: `images` (len(picks), C, H, W) in [-1, 1]
    are the items at `picks` (quantised to 8 bits before hashing); labels (n,) int64 or None."""
    pixels = ((images.double() + 1.0) * 127.5).round().to(torch.uint8)
    items = hashlib.sha256(picks.astype("<i8").tobytes() + pixels.numpy().tobytes()).hexdigest()
    label_hash = (None if labels is None
                  else hashlib.sha256(labels.numpy().astype("<i8").tobytes()).hexdigest())
    return {"count": int(n), "shape": list(shape), "items_sha256": items, "labels_sha256": label_hash,
            "num_classes": num_classes}


# ----------------------------------------------------------------------------- data order

class EpochSampler:
    """Global batches of dataset indices: epoch e is `default_rng([seed, e]).permutation(n)`.

    `next(batch_size)` continues across epoch boundaries. The state is just `position` (indices
    handed out so far), so a resumed run draws exactly what an uninterrupted run would.
    """

    def __init__(self, n: int, seed: int, position: int = 0):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.n, self.seed, self.position = n, reference.check_seed(seed), int(position)
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._perm

    def next(self, batch_size: int) -> np.ndarray:
        """The next `batch_size` indices, int64 (batch_size,)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        out = np.empty(batch_size, dtype=np.int64)
        filled = 0
        while filled < batch_size:
            epoch, offset = divmod(self.position, self.n)
            take = min(batch_size - filled, self.n - offset)
            out[filled:filled + take] = self._permutation(epoch)[offset:offset + take]
            filled += take
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n or state.get("seed") != self.seed:
            raise ValueError(f"data sampler state is for n={state.get('n')}, seed={state.get('seed')}; "
                             f"this run has n={self.n}, seed={self.seed} (different data or seed)")
        self.position = int(state["position"])


# ----------------------------------------------------------------------------- fitting to the model

def _to_nchw(array: np.ndarray, name: str, layout: str = "auto") -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W); C in {1, 3, 4}."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise DataError(f"{name} must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {array.shape}")
    if layout == "NCHW":
        return array
    if layout == "NHWC":
        return np.moveaxis(array, 3, 1)
    channels_last = array.shape[3] in (1, 3, 4)
    channels_first = array.shape[1] in (1, 3, 4)
    if channels_last and channels_first and array.shape[1] != array.shape[3]:
        # both readings possible: take the one that gives square images, if only one does
        square_first, square_last = array.shape[2] == array.shape[3], array.shape[1] == array.shape[2]
        if square_first == square_last:
            raise DataError(f"{name} has an ambiguous layout {array.shape}: both axis 1 and axis 3 "
                             f"could be channels; pass layout='NCHW' or 'NHWC'")
        channels_last = square_last
    if channels_last:
        return np.moveaxis(array, 3, 1)
    if channels_first:
        return array
    raise DataError(f"{name} must have 1, 3 or 4 channels on axis 1 or 3, got shape {array.shape}")


def _value_range(array: np.ndarray, name: str) -> tuple[float, float]:
    if array.dtype == np.uint8:
        return 0.0, 255.0
    if array.dtype == bool:
        return 0.0, 1.0
    lo, hi = float(array.min()), float(array.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if lo >= -1.0 and hi <= 1.0:
        return -1.0, 1.0
    if lo >= 0.0 and hi <= 255.0:
        return 0.0, 255.0
    raise DataError(f"{name} values lie in [{lo}, {hi}]; expected [0, 1], [-1, 1] or [0, 255] "
                     f"(pass value_range=(lo, hi) explicitly)")


def _fit_channels(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    c = x.shape[1]
    if c == channels:
        return x
    if c == 4 and channels == 3:  # RGBA: drop alpha
        return x[:, :3]
    if c == 1 and channels == 3:  # grayscale -> RGB
        return x.expand(-1, 3, -1, -1).contiguous()
    raise DataError(f"{name} has {c} channel(s) but the model takes {channels}; "
                     f"convert the data (only 1 -> 3 and RGBA -> RGB are done automatically)")


def _fit_size(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Pad (centred, with -1 = black) when smaller; centre-crop to square and resize when larger."""
    h, w = x.shape[2], x.shape[3]
    if h == w == image_size:
        return x
    if h <= image_size and w <= image_size:
        top, left = (image_size - h) // 2, (image_size - w) // 2
        return F.pad(x, (left, image_size - w - left, top, image_size - h - top), value=-1.0)
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, :, top:top + side, left:left + side]
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                         align_corners=False).clamp_(-1.0, 1.0)


def prepare_images(array: np.ndarray, image_size: int, channels: int, *, value_range=None,
                   layout: str = "auto", name: str = "images") -> torch.Tensor:
    """An image array -> float32 (N, channels, image_size, image_size) in [-1, 1].

    array: (N, H, W), (N, H, W, C) or (N, C, H, W), uint8/bool/int/float; layout "auto" tells
    the 4-d layouts apart by which axis holds 1, 3 or 4 entries, "NCHW"/"NHWC" force one.
    value_range: the (lo, hi) the raw values span; None infers it from the dtype and values.
    Smaller images are padded (centred, with black); larger ones centre-cropped and resized.
    """
    if layout not in ("auto", "NCHW", "NHWC"):
        raise DataError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    array = np.asarray(array)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataTypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if array.size == 0 or array.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise DataError(f"{name} contains NaN or inf")
    array = _to_nchw(array, name, layout)
    lo, hi = _value_range(array, name) if value_range is None else (float(value_range[0]), float(value_range[1]))
    if not hi > lo:
        raise DataError(f"value_range must satisfy lo < hi, got {(lo, hi)}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    x = ((x - lo) * (2.0 / (hi - lo)) - 1.0).clamp_(-1.0, 1.0).to(torch.float32)
    x = _fit_channels(x, channels, name)
    return _fit_size(x, image_size).contiguous()


def _labels_tensor(labels, n: int, name: str) -> tuple[torch.Tensor, int]:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataTypeError(f"{name} must be integers, got dtype {labels.dtype}")
    labels = labels.reshape(-1)
    if labels.shape != (n,):
        raise DataError(f"{name} must have shape ({n},) to match the images, got {labels.shape}")
    if labels.min() < 0:
        raise DataError(f"{name} must be >= 0, got min {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64)), int(labels.max()) + 1


# ----------------------------------------------------------------------------- sources

def load_digits(image_size: int = 8, channels: int = 1) -> ImageDataset:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 images, values 0..16, 10 classes."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = prepare_images(bunch.images, image_size, channels, value_range=(0.0, 16.0), name="digits")
    return ImageDataset(x, torch.from_numpy(bunch.target.astype(np.int64)), 10,
                        [str(k) for k in range(10)], "digits (scikit-learn)", hflip=False)


def read_idx(path) -> np.ndarray:
    """An IDX file (MNIST format, optionally gzipped) -> ndarray of the stored dtype and shape.

    Header: two zero bytes, a type byte, the number of dimensions, then one big-endian uint32 per
    dimension; the data follow. Every field is checked against the file's length.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # zlib: corrupt gzip data
        raise DataError(f"cannot read IDX file {path}: {_one_line(err)}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file: magic {raw[:4].hex() or '(empty)'} should start with 0000")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX data type 0x{type_code:02x}; expected one of "
                         f"{[hex(k) for k in _IDX_DTYPES]}")
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header declares {ndim} dimensions but the file is {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says shape {shape} ({expected} bytes), file holds {len(raw)} "
                         f"bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx_pair(directory: Path) -> tuple[Path, Path | None]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and "idx" in p.name)
    images = [p for p in files if "idx3" in p.name]
    if len(images) > 1:  # a standard MNIST folder holds train-* and t10k-*: train on the train split
        train = [p for p in images if p.name.startswith("train")]
        images = train if len(train) == 1 else images
    if len(images) != 1:
        raise DataError(f"{directory}: expected exactly one '*idx3*' image file, found "
                         f"{[p.name for p in images] or 'none'}")
    image_path = images[0]
    stem = image_path.name.split("-images")[0] if "-images" in image_path.name else None
    labels = [p for p in files if "idx1" in p.name and (stem is None or p.name.startswith(stem))]
    return image_path, (labels[0] if len(labels) == 1 else None)


def load_idx_dataset(images_path, image_size: int, channels: int, labels_path=None) -> ImageDataset:
    """MNIST-style IDX images (N, H, W) uint8 (+ labels (N,)); a directory finds the pair."""
    images_path = Path(images_path)
    if images_path.is_dir():
        images_path, found = _find_idx_pair(images_path)
        labels_path = labels_path if labels_path is not None else found
    array = read_idx(images_path)
    if array.ndim not in (3, 4):
        raise DataError(f"{images_path}: IDX images must have 3 or 4 dimensions, got shape {array.shape}")
    x = prepare_images(array, image_size, channels, name=str(images_path))
    labels = num_classes = names = None
    if labels_path is not None:
        labels, num_classes = _labels_tensor(read_idx(labels_path), len(x), str(labels_path))
        names = [str(k) for k in range(num_classes)]
    return ImageDataset(x, labels, num_classes, names, f"IDX {images_path}", hflip=False)


def read_array_file(path, mmap: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) of a .npy (images only; memory-mapped with mmap=True) or a .npz
    with "images" (or "x") and optional "labels" (or "y"), as stored (not yet fitted)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"cannot read array file {path}: {_one_line(err)}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded, None
    with loaded:
        keys = set(loaded.files)
        image_key = next((k for k in ("images", "x", "arr_0") if k in keys), None)
        if image_key is None:
            raise DataError(f"{path}: an .npz needs an 'images' (or 'x') array, found {sorted(keys)}")
        try:
            label_key = next((k for k in ("labels", "y", "arr_1") if k in keys), None)
            return loaded[image_key], (None if label_key is None else loaded[label_key])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise DataError(f"cannot read array file {path}: {_one_line(err)}") from None


def load_array_file(path, image_size: int, channels: int, *, hflip: bool | None = None) -> ImageDataset:
    """A .npy of images, or a .npz with "images" (or "x") and optional "labels" (or "y")."""
    path = Path(path)
    images, labels = read_array_file(path)
    x = prepare_images(images, image_size, channels, name=str(path))
    y = num_classes = names = None
    if labels is not None:
        y, num_classes = _labels_tensor(labels, len(x), f"{path} labels")
        names = [str(k) for k in range(num_classes)]
    flip = (np.asarray(images).ndim == 4 and channels == 3) if hflip is None else hflip
    return ImageDataset(x, y, num_classes, names, f"array {path}", hflip=flip)


# Pillow modes: 8-bit ones Pillow converts exactly to L / RGB (ITU-R 601 luma for grey)
_PIL_8BIT = ("1", "L", "P", "RGB", "CMYK", "YCbCr")
_PIL_ALPHA = ("LA", "PA", "RGBA")        # straight alpha: composited on black
_PIL_PREMULTIPLIED = ("La", "RGBa")      # alpha already multiplied in: these ARE the composite on black
_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, what Pillow's convert("L") uses


def pillow_pixels(img, channels: int, file) -> tuple[np.ndarray, float]:
    """A Pillow image -> ((C, H, W) array, the value that means white), C = 1 or `channels`.

    8-bit modes convert as Pillow does; 16-bit greyscale (I;16*) is scaled by 65535 (not
    saturated to 255, as convert("L") would); 32-bit integer greyscale (I) must hold 0..65535
    (what Pillow makes of 16-bit data) and is scaled by 65535; float greyscale (F) must lie in
    [0, 1]. Transparency (LA, PA, RGBA, a palette's transparent colour) is composited on black,
    the colour the model pads with. Other modes (HSV, LAB, ...) are refused by name."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _PIL_8BIT:
        array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), 255.0
    if mode in _PIL_ALPHA or mode in _PIL_PREMULTIPLIED:
        if mode == "La":
            return np.asarray(img, dtype=np.float64)[None, :, :, 0], 255.0
        rgba = np.asarray(img if mode == "RGBa" else img.convert("RGBA"), dtype=np.float64)
        rgb = rgba[..., :3] if mode == "RGBa" else rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return ((rgb @ _LUMA)[None] if channels == 1 else rgb.transpose(2, 0, 1)), 255.0
    if mode in _PIL_16BIT:
        return np.asarray(img).astype(np.float64)[None], 65535.0
    if mode in ("I", "F"):
        array = np.asarray(img).astype(np.float64)
        lo, hi = (0.0, 65535.0) if mode == "I" else (0.0, 1.0)
        if not (np.all(np.isfinite(array)) and array.min() >= lo and array.max() <= hi):
            kind = "32-bit integer" if mode == "I" else "32-bit float"
            raise DataError(f"{file}: {kind} greyscale (Pillow mode {mode}) with values in "
                            f"[{array.min()}, {array.max()}]; only [{lo:g}, {hi:g}] is read (scaled to "
                            f"black..white): convert the image to 8 or 16 bits")
        return array[None], hi
    raise DataError(f"{file}: Pillow mode {mode!r} is not supported (supported: "
                    f"{', '.join(_PIL_8BIT + _PIL_ALPHA + _PIL_PREMULTIPLIED + _PIL_16BIT)}, I, F); "
                    f"convert it to RGB or L")


def list_image_files(path) -> tuple[list[tuple[int, Path]], list[str] | None]:
    """The images under an image folder, sorted: ([(class id, file)], class names or None).

    With subfolders, class = subfolder name (sorted) and every image must sit in one; without,
    the images are unlabelled (class names None). An empty class folder, loose images beside
    class folders, or no images at all is a DataError naming the folder."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        groups = [(d.name, sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS))
                  for d in subdirs]
        loose = [f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise DataError(f"{root} has class subfolders and loose images {loose[:3]}; put every "
                             f"image in a class folder")
        empty = [name for name, files in groups if not files]
        if empty:
            raise DataError(f"{root}: class folder(s) {empty} hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    else:
        groups = [("", sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS))]
    files = [(k, f) for k, (_, fs) in enumerate(groups) for f in fs]
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, ([name for name, _ in groups] if subdirs else None)


# what Pillow raises on a file it cannot decode (zlib: corrupt PNG data; SyntaxError: bad headers)
PILLOW_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error)


def read_image_file(file, channels: int) -> tuple[np.ndarray, float]:
    """One image file -> `pillow_pixels` (array (C, H, W), white value); a file that cannot be
    read is a DataError naming it (one line)."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            return pillow_pixels(img, channels, file)
    except DataError:
        raise
    except (Image.DecompressionBombError,) + PILLOW_READ_ERRORS as err:  # Unidentified: an OSError
        raise DataError(f"cannot read image {file}: {_one_line(err)}") from None


def load_image_folder(path, image_size: int, channels: int, *, hflip: bool = True) -> ImageDataset:
    """Images under `path` (Pillow), listed by `list_image_files` (class = subfolder name), all
    decoded into memory (ddpm.streaming reads them per item instead). Each file's mode is read
    as `pillow_pixels` says. A corrupt or unsupported file raises DataError naming it."""
    root = Path(path)
    files, class_names = list_image_files(root)
    tensors, labels = [], []
    for label, file in files:
        array, hi = read_image_file(file, channels)
        tensors.append(prepare_images(array[None], image_size, channels, value_range=(0, hi),
                                      layout="NCHW", name=str(file)))
        labels.append(label)
    x = torch.cat(tensors)
    if class_names is not None:
        return ImageDataset(x, torch.tensor(labels, dtype=torch.int64), len(class_names),
                            class_names, f"folder {root}", hflip=hflip)
    return ImageDataset(x, None, None, None, f"folder {root}", hflip=hflip)


def load_dataset(source: str | os.PathLike, image_size: int, channels: int, *,
                 hflip: bool | None = None) -> ImageDataset:
    """Dispatch on `source`: "digits", a directory (IDX files or an image folder), .npy/.npz, IDX.

    hflip: None keeps each source's default (off for digits and IDX, on for image folders and
    3-channel arrays); True/False overrides it.
    """
    if str(source) == "digits":
        data = load_digits(image_size, channels)
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"data source {str(source)!r} does not exist (use 'digits', a folder, "
                             f".npy/.npz or an IDX file)")
        if path.is_dir():
            has_idx = any("idx3" in p.name for p in path.iterdir() if p.is_file())
            data = (load_idx_dataset(path, image_size, channels) if has_idx
                    else load_image_folder(path, image_size, channels))
        elif path.suffix.lower() in (".npy", ".npz"):
            data = load_array_file(path, image_size, channels)
        elif "idx" in path.name:
            data = load_idx_dataset(path, image_size, channels)
        else:
            raise DataError(f"unknown data file type {path.name!r}: expected .npy, .npz or an IDX file")
    if hflip is not None:
        data.hflip = bool(hflip)
    return data
