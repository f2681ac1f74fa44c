"""ddpm.data: every source lands in [-1, 1] at the model's size, and bad data fails clearly."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.data import (
    DataError,
    EpochSampler,
    ImageDataset,
    load_array_file,
    load_dataset,
    load_digits,
    load_image_folder,
    load_idx_dataset,
    pillow_pixels,
    prepare_images,
    read_idx,
)
from helpers import mnist_dir, skip_unless_available


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, compress: bool = False) -> Path:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ----------------------------------------------------------------------------- digits

def test_digits_default_is_sklearn_digits_scaled_to_minus_one_one():
    from sklearn.datasets import load_digits as sk

    data = load_digits()
    raw = sk()
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.float32
    expected = torch.from_numpy(raw.images / 8.0 - 1.0).float()[:, None]  # 0..16 -> -1..1
    assert torch.equal(data.images, expected)
    assert torch.equal(data.labels, torch.from_numpy(raw.target).long())
    assert data.num_classes == 10 and data.hflip is False  # flipped digits are not digits
    assert load_dataset("digits", 8, 1).hflip is False


def test_digits_padded_to_a_larger_model_keep_the_digit_in_the_centre():
    data = load_digits(image_size=12, channels=3)
    assert data.images.shape == (1797, 3, 12, 12)
    small = load_digits().images
    assert torch.equal(data.images[:, 0, 2:10, 2:10], small[:, 0])
    assert torch.all(data.images[:, :, :2] == -1.0) and torch.all(data.images[:, :, :, 10:] == -1.0)
    assert torch.equal(data.images[:, 0], data.images[:, 2])  # grey replicated to RGB


# ----------------------------------------------------------------------------- prepare_images

def test_prepare_images_scales_uint8_and_infers_layouts():
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    nhwc[0, 0, 0] = (0, 255, 128)
    out = prepare_images(nhwc, 8, 3)
    assert out.shape == (5, 3, 8, 8)
    nchw = prepare_images(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)), 8, 3)
    assert torch.equal(out, nchw)
    # (N, 4, 4, 3) could be RGBA 4x3 images; the square reading (4x4 RGB) is taken
    small = nhwc[:, :4, :4]
    assert torch.equal(prepare_images(small, 4, 3), prepare_images(small, 4, 3, layout="NHWC"))
    # 6x7 padded into 8x8: top 1, left 0 (centred, the odd pixel at the end)
    assert out[0, :, 1, 0].tolist() == [-1.0, 1.0, pytest.approx(128 / 127.5 - 1.0)]
    assert torch.all(out[:, :, 0] == -1.0)


def test_prepare_images_resizes_larger_images_by_centre_crop():
    # a 40x64 image: centre 40x40 crop is bright, the side bands dark -> all bright after resize
    img = np.zeros((1, 40, 64), dtype=np.uint8)
    img[:, :, 12:52] = 255
    out = prepare_images(img, 8, 1)
    assert out.shape == (1, 1, 8, 8)
    assert torch.allclose(out, torch.ones_like(out))


@pytest.mark.parametrize("value_range, row, expected", [
    (None, [0.0, 1.0], [-1.0, 1.0]),              # floats in [0, 1]
    (None, [-1.0, 0.5], [-1.0, 0.5]),             # already in [-1, 1]
    (None, [0.0, 255.0], [-1.0, 1.0]),            # float 0..255
    ((0, 16), [0, 8, 16], [-1.0, 0.0, 1.0]),      # explicit range (the digits' 0..16)
])
def test_prepare_images_value_ranges(value_range, row, expected):
    square = np.array([[row] * len(row)])  # (1, k, k), every row the same
    out = prepare_images(square, len(row), 1, value_range=value_range)
    assert out[0, 0, 0].tolist() == pytest.approx(expected)


@pytest.mark.parametrize("array, error, match", [
    (np.zeros((0, 8, 8)), ValueError, "empty"),
    (np.full((2, 8, 8), np.nan), ValueError, "NaN"),
    (np.zeros((2, 3, 1, 4)), ValueError, "ambiguous"),
    (np.zeros((2, 8, 8, 2)), ValueError, "channels"),
    (np.zeros((2, 8)), ValueError, "shape"),
    (np.array([[["a"]]]), TypeError, "numeric"),
    (np.full((2, 8, 8), 300.0), ValueError, "value_range"),
])
def test_prepare_images_rejects_bad_arrays(array, error, match):
    with pytest.raises(error, match=match):
        prepare_images(array, 8, 1)


def test_prepare_images_refuses_rgb_data_for_a_grey_model():
    with pytest.raises(ValueError, match="3 channel.*takes 1"):
        prepare_images(np.zeros((2, 8, 8, 3), dtype=np.uint8), 8, 1)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        prepare_images(np.zeros((2, 8, 8), dtype=np.uint8), 8, 2)


# ----------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_uint8_and_float(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte", images, compress=compress)), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    out = read_idx(write_idx(tmp_path / "b-idx2", floats, type_code=0x0D, compress=compress))
    assert out.dtype == np.float32 and np.array_equal(out, floats)


def test_read_idx_rejects_bad_magic_type_and_truncation(tmp_path):
    good = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 3, 3), dtype=np.uint8))
    raw = good.read_bytes()
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "type").write_bytes(raw[:2] + b"\x07" + raw[3:])
    with pytest.raises(ValueError, match="unknown IDX data type 0x07"):
        read_idx(tmp_path / "type")
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "badgz").write_bytes(gzip.compress(raw)[:-8])
    with pytest.raises(ValueError, match="cannot read IDX"):
        read_idx(tmp_path / "badgz")


def test_idx_directory_pairs_images_with_labels(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    data = load_dataset(tmp_path, 32, 1)
    assert data.images.shape == (6, 1, 32, 32) and data.labels.tolist() == labels.tolist()
    assert data.num_classes == 10 and data.hflip is False
    assert torch.equal(data.images[:, 0, 2:30, 2:30], torch.from_numpy(images / 127.5 - 1.0).float())
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:5], compress=True)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        load_idx_dataset(tmp_path, 32, 1)


def test_real_mnist_test_split_loads_padded_to_32():
    mnist = mnist_dir()  # ../shared/data/mnist beside the clone; a failure, not a skip, in CI
    skip_unless_available(mnist is not None, "real MNIST not found in ../shared/data/mnist (or $DDPM_MNIST_DIR)")
    data = load_dataset(mnist, 32, 1)
    assert data.images.shape == (10_000, 1, 32, 32)
    assert data.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.images.min() == -1.0 and data.images.max() == 1.0
    assert torch.all(data.images[:, :, :2] == -1.0)  # the 2-pixel pad is background


# ----------------------------------------------------------------------------- arrays

def test_npz_with_labels_and_npy_without(tmp_path):
    images = np.random.default_rng(2).random((4, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 2, 1, 2]))
    data = load_dataset(tmp_path / "d.npz", 8, 3)
    assert data.labels.tolist() == [0, 2, 1, 2] and data.num_classes == 3
    assert torch.allclose(data.images, torch.from_numpy(images.transpose(0, 3, 1, 2) * 2 - 1))
    assert data.hflip is True  # RGB photos may be flipped
    np.save(tmp_path / "g.npy", (images[..., 0] * 255).astype(np.uint8))
    grey = load_dataset(tmp_path / "g.npy", 8, 1)
    assert grey.labels is None and grey.images.shape == (4, 1, 8, 8) and grey.hflip is False


def test_bad_array_files_give_clear_errors(tmp_path):
    np.savez(tmp_path / "nokey.npz", pictures=np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="'images'"):
        load_array_file(tmp_path / "nokey.npz", 8, 1)
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 8, 8)), labels=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        load_array_file(tmp_path / "labels.npz", 8, 1)
    np.savez(tmp_path / "neg.npz", images=np.zeros((2, 8, 8)), labels=np.array([0, -1]))
    with pytest.raises(ValueError, match=">= 0"):
        load_array_file(tmp_path / "neg.npz", 8, 1)
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="cannot read array file"):
        load_dataset(tmp_path / "corrupt.npy", 8, 1)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "missing.npy", 8, 1)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown data file type"):
        load_dataset(tmp_path / "notes.txt", 8, 1)


# ----------------------------------------------------------------------------- image folders

def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(3)
    for cls, n in (("cat", 2), ("ant", 3)):
        for k in range(n):
            write_png(tmp_path / cls / f"{k}.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    data = load_dataset(tmp_path, 8, 3)
    assert data.class_names == ["ant", "cat"]  # sorted folder names
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.images.shape == (5, 3, 8, 8) and data.hflip is True
    grey = load_image_folder(tmp_path, 8, 1)  # Pillow converts to the model's channels
    assert grey.images.shape == (5, 1, 8, 8)


def test_image_folder_without_subfolders_is_unlabelled(tmp_path):
    pixels = np.full((4, 4), 255, dtype=np.uint8)
    write_png(tmp_path / "a.png", pixels)
    write_png(tmp_path / "b.png", pixels)
    data = load_dataset(tmp_path, 4, 1)
    assert data.labels is None and torch.all(data.images == 1.0)


def test_empty_or_corrupt_image_folders_fail_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_dataset(empty, 8, 1)
    corrupt = tmp_path / "corrupt"
    write_png(corrupt / "ok.png", np.zeros((8, 8), dtype=np.uint8))
    (corrupt / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        load_dataset(corrupt, 8, 1)
    classes = tmp_path / "classes"
    write_png(classes / "a" / "1.png", np.zeros((8, 8), dtype=np.uint8))
    (classes / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['b'\] hold no images"):
        load_dataset(classes, 8, 1)
    write_png(classes / "b" / "1.png", np.zeros((8, 8), dtype=np.uint8))
    write_png(classes / "loose.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="loose images"):
        load_dataset(classes, 8, 1)


def test_image_dataset_validates_its_fields():
    with pytest.raises(TypeError, match="float32"):
        ImageDataset(torch.zeros(2, 1, 8, 8, dtype=torch.float64), None, None, None, "x")
    with pytest.raises(ValueError, match="labels must lie in"):
        ImageDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 5]), 3, None, "x")
    with pytest.raises(ValueError, match="holds no images"):
        ImageDataset(torch.zeros(0, 1, 8, 8), None, None, None, "x")


# ----------------------------------------------------------------------------- data order

def test_epoch_sampler_visits_every_index_once_per_epoch_and_resumes():
    sampler = EpochSampler(10, seed=7)
    drawn = np.concatenate([sampler.next(4) for _ in range(5)])  # 20 = two epochs
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    assert not np.array_equal(drawn[:10], drawn[10:])  # a fresh permutation per epoch
    again = EpochSampler(10, seed=7)
    again.next(6)
    resumed = EpochSampler(10, seed=7)
    resumed.load_state_dict(again.state_dict())
    assert np.array_equal(resumed.next(14), drawn[6:])
    with pytest.raises(ValueError, match="different data or seed"):
        EpochSampler(11, seed=7).load_state_dict(again.state_dict())
    with pytest.raises(ValueError, match="batch_size"):
        sampler.next(0)


def test_a_standard_mnist_folder_trains_on_the_train_split(tmp_path):
    """train-* and t10k-* side by side (the usual MNIST download): the train files are used."""
    from ddpm.data import _find_idx_pair

    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"")
    images, labels = _find_idx_pair(tmp_path)
    assert images.name == "train-images-idx3-ubyte" and labels.name == "train-labels-idx1-ubyte"


# ----------------------------------------------------------------------------- Pillow modes, corrupt files

def _folder_of(tmp_path, name, image) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    image.save(folder / ("x.tif" if image.mode in ("I", "F") else "x.png"))
    return folder


def test_16_bit_greyscale_is_scaled_by_65535_not_saturated(tmp_path):
    from PIL import Image

    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000 + 500).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    x = load_dataset(_folder_of(tmp_path, "g16", image), 8, 1).images[0, 0].double()
    expected = torch.from_numpy(ramp.astype(np.float64) / 65535.0 * 2 - 1)
    assert torch.allclose(x, expected, atol=1e-6)  # convert("L") made 98% of these +1
    assert (x == 1.0).float().mean() == 0


def test_32_bit_integer_and_float_greyscale_are_read_in_range_or_refused_by_name(tmp_path):
    from PIL import Image

    ints = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000
    x = load_dataset(_folder_of(tmp_path, "i", Image.fromarray(ints, mode="I")), 8, 1).images[0, 0]
    assert torch.allclose(x.double(), torch.from_numpy(ints / 65535.0 * 2 - 1), atol=1e-6)
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    x = load_dataset(_folder_of(tmp_path, "f", Image.fromarray(floats, mode="F")), 8, 1).images[0, 0]
    assert torch.allclose(x, torch.from_numpy(floats * 2 - 1), atol=1e-6)
    with pytest.raises(DataError, match=r"big.*x.tif: 32-bit integer greyscale .* values in \[0.0, 630000.0\]"):
        load_dataset(_folder_of(tmp_path, "big", Image.fromarray(ints * 10, mode="I")), 8, 1)
    with pytest.raises(DataError, match=r"x.tif: 32-bit float greyscale"):
        load_dataset(_folder_of(tmp_path, "f2", Image.fromarray(floats * 3, mode="F")), 8, 1)


def test_alpha_is_composited_on_black(tmp_path):
    from PIL import Image

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255                      # pure red everywhere
    rgba[:, :4, 3] = 255                    # left half opaque, right half half-transparent
    rgba[:, 4:, 3] = 51
    image = Image.fromarray(rgba, mode="RGBA")
    rgb = load_dataset(_folder_of(tmp_path, "rgba", image), 8, 3).images[0]
    assert torch.all(rgb[0, :, :4] == 1.0) and torch.allclose(rgb[0, :, 4:], torch.tensor(51 / 255 * 2 - 1))
    assert torch.all(rgb[1:] == -1.0)  # no green or blue: black behind, not the hidden colour
    grey = load_dataset(tmp_path / "rgba", 8, 1).images[0, 0]
    assert torch.allclose(grey[:, 4:], torch.tensor(0.299 * 51 / 255 * 2 - 1), atol=1e-6)
    la = Image.fromarray(np.stack([np.full((8, 8), 200, np.uint8), rgba[..., 3]], -1), mode="LA")
    x = load_dataset(_folder_of(tmp_path, "la", la), 8, 1).images[0, 0]
    assert torch.allclose(x[:, 4:], torch.tensor(200 * 51 / 255 / 255 * 2 - 1), atol=1e-6)
    palette = Image.fromarray(np.array([[0, 1] * 4] * 8, np.uint8), mode="P")
    palette.putpalette([255, 255, 255, 255, 255, 255])
    palette.info["transparency"] = 1      # colour 1 transparent: black, colour 0 stays white
    x = load_dataset(_folder_of(tmp_path, "p", palette), 8, 1).images[0, 0]
    assert torch.all(x[:, 0::2] == 1.0) and torch.all(x[:, 1::2] == -1.0)


def test_8_bit_modes_convert_as_pillow_does_and_others_are_refused_by_name():
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), mode="RGB")
    for image in (rgb, rgb.convert("P"), rgb.convert("CMYK"), rgb.convert("1")):
        array, white = pillow_pixels(image, 1, "x.png")
        assert white == 255 and np.array_equal(array[0], np.asarray(image.convert("L")))
    for mode in ("HSV", "LAB"):
        with pytest.raises(DataError, match=f"x.png: Pillow mode '{mode}' is not supported"):
            pillow_pixels(Image.new(mode, (4, 4)), 3, "x.png")


def test_every_corrupt_file_kind_is_one_line_naming_it(tmp_path):
    arrays = np.zeros((4, 4, 4), np.uint8)
    gz = tmp_path / "imgs-idx3-ubyte.gz"
    packed = gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 4, 4) + arrays.tobytes())
    gz.write_bytes(packed[:10] + bytes([packed[10] ^ 0xFF]) + packed[11:])  # bad deflate data: zlib.error
    cut_gz = tmp_path / "cut-idx3-ubyte.gz"
    cut_gz.write_bytes(packed[:-12])  # ends before the end-of-stream marker: EOFError
    np.savez_compressed(tmp_path / "crc.npz", images=arrays)
    raw = bytearray((tmp_path / "crc.npz").read_bytes())
    raw[60] ^= 0xFF  # inside the member's data: a CRC or deflate error on read
    (tmp_path / "crc.npz").write_bytes(bytes(raw))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    np.save(tmp_path / "cut.npy", arrays)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-10])
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cut_png = tmp_path / "png"
    write_png(cut_png / "cut.png", np.zeros((64, 64), np.uint8) + 7)
    (cut_png / "cut.png").write_bytes((cut_png / "cut.png").read_bytes()[:-30])
    for source, name in ((gz, gz.name), (cut_gz, cut_gz.name), (tmp_path / "crc.npz", "crc.npz"), (tmp_path / "junk.npz", "junk.npz"),
                         (tmp_path / "cut.npy", "cut.npy"), (tmp_path / "obj.npy", "obj.npy"),
                         (cut_png, "cut.png")):
        with pytest.raises(DataError) as info:
            load_dataset(source, 8, 1)
        assert name in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_the_fingerprint_tells_data_apart_and_ignores_nothing_that_matters():
    digits = load_digits()
    fp = digits.fingerprint()
    assert fp == load_digits().fingerprint()  # a pure function of the data
    assert fp["count"] == 1797 and fp["shape"] == [1, 8, 8] and fp["num_classes"] == 10
    moved = ImageDataset(digits.images.clone(), digits.labels.clone(), 10, None, "copy")
    moved.images[0, 0, 0, 0] = -moved.images[0, 0, 0, 0] - 0.5  # item 0 is always in the sample
    assert moved.fingerprint()["items_sha256"] != fp["items_sha256"]
    relabelled = ImageDataset(digits.images, (digits.labels + 1) % 10, 10, None, "x")
    changed = relabelled.fingerprint()
    assert changed["labels_sha256"] != fp["labels_sha256"] and changed["items_sha256"] == fp["items_sha256"]
