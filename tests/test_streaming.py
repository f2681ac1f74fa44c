"""ddpm.streaming: per-item decoding through DataLoader workers sees exactly what the in-memory
path sees (same batches, same training), resumes mid-epoch with workers, splits over ranks like
one process, crops from (seed, position) only; the cache, bad images and bad folders."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

import ddpm
import reference
from ddpm.checkpoint import load_checkpoint
from ddpm.cli import main
from ddpm.data import DataError, EpochSampler, load_dataset
from ddpm.distributed import DistributedContext
from ddpm.streaming import StreamOptions
from ddpm.streaming_sources import open_streaming
from ddpm.streaming_cache import attach_cache
from ddpm.train import TrainConfig, Trainer

SCHEDULE = reference.make_schedule("linear", 20)


def write_folder(root, counts=(7, 6), size=(4, 4), mode="L", seed=0):
    """class folders c0, c1, ... of random PNGs (size = (width, height))."""
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,)}[mode]
    for c, count in enumerate(counts):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for k in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / f"c{c}" / f"{k:03d}.png")
    return root


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def trainer_on(data, steps=6, **overrides):
    torch.manual_seed(0)
    config = TrainConfig(**{**dict(steps=steps, batch_size=4, lr=1e-3, seed=3, label_dropout=0.0), **overrides})
    return Trainer(ddpm.UNet(reference.UNetConfig.tiny(num_classes=2)), SCHEDULE, config, data)


def params(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_training_is_the_in_memory_training(tmp_path, workers):
    root = write_folder(tmp_path / "f")
    whole = load_dataset(root, 4, 1)
    streamed = open_streaming(root, 4, 1, options=StreamOptions(workers=workers))
    assert streamed.hflip and whole.hflip and streamed.fingerprint() == whole.fingerprint()
    assert torch.equal(streamed.labels, whole.labels) and streamed.class_names == whole.class_names
    a, b = trainer_on(whole), trainer_on(streamed)
    losses_a = [a.train_step().loss for _ in range(6)]  # 24 items over 13: two epoch boundaries
    losses_b = [b.train_step().loss for _ in range(6)]
    assert losses_a == losses_b
    assert all(torch.equal(params(a)[k], v) for k, v in params(b).items())


def test_arrays_and_idx_stream_item_for_item_as_loaded(tmp_path):
    from test_data import write_idx

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (9, 5, 3, 3), dtype=np.uint8)  # NHWC, padded 5x3 -> 6
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "b.npz", images=rng.random((9, 1, 7, 7)).astype(np.float32), labels=np.arange(9) % 4)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[..., 0], compress=True)
    for source in ("a.npy", "b.npz", "train-images-idx3-ubyte.gz"):
        whole = load_dataset(tmp_path / source, 6, 3)
        streamed = open_streaming(tmp_path / source, 6, 3, options=StreamOptions(workers=0))
        assert streamed.hflip == whole.hflip and streamed.fingerprint() == whole.fingerprint(), source
        assert torch.equal(torch.stack([streamed.item(i, 0, 0) for i in range(9)]), whole.images), source


def test_resume_mid_epoch_with_workers_sees_what_the_uninterrupted_run_sees(tmp_path):
    root = write_folder(tmp_path / "f", size=(7, 5), mode="RGB")
    options = StreamOptions(workers=2, resize="random", crop_scale=0.5)
    data = open_streaming(root, 4, 3, options=options)
    cfg = reference.UNetConfig.tiny(num_classes=2, in_channels=3, out_channels=3)

    def fresh():
        torch.manual_seed(0)
        return Trainer(ddpm.UNet(cfg), SCHEDULE, TrainConfig(steps=6, batch_size=4, lr=1e-3, seed=3), data)

    whole = fresh()
    whole.fit(6, progress=False)
    first = fresh()
    first.fit(2, run_dir=tmp_path / "run", progress=False)  # stops at position 8 of 13: mid-epoch
    resumed = fresh()
    resumed.load(tmp_path / "run")
    resumed.fit(6, progress=False)
    assert resumed.history["loss"] == whole.history["loss"]
    assert all(torch.equal(params(whole)[k], v) for k, v in params(resumed).items())


def _rank_batches(data, world_size, batch, steps, seed=3):
    """The global batches as `world_size` ranks load them, and as items drawn one by one at their
    global positions (the crop a slot sees is a function of (seed, position) only)."""
    feeds = [data.feed(seed, batch, DistributedContext(rank=r, world_size=world_size)) for r in range(world_size)]
    sampler = EpochSampler(len(data), seed)
    out, one_by_one = [], []
    for _ in range(steps):
        start, indices = sampler.position, sampler.next(batch)
        per = batch // world_size
        out.append(torch.cat([f.take(start, indices[r * per:(r + 1) * per]) for r, f in enumerate(feeds)]))
        one_by_one.append(torch.stack([data.item(int(i), start + k, seed) for k, i in enumerate(indices)]))
    return out, one_by_one


def test_two_ranks_load_their_slices_of_the_one_process_batches(tmp_path):
    root = write_folder(tmp_path / "f", size=(6, 9))
    one, items = _rank_batches(open_streaming(root, 4, 1, options=StreamOptions(workers=0, resize="random")), 1, 6, 5)
    two, _ = _rank_batches(open_streaming(root, 4, 1, options=StreamOptions(workers=2, resize="random")), 2, 6, 5)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(one, two, items))


# ----------------------------------------------------------------------------- crops

@settings(max_examples=30)
@given(seed=st.integers(0, 2**64 - 1), start=st.integers(0, 2**63), height=st.integers(1, 300),
       width=st.integers(1, 300), scale=st.floats(0.01, 1.0))
@example(seed=0, start=2**32 - 2, height=1, width=1, scale=1.0)
def test_random_crops_are_squares_inside_the_image_from_the_position_alone(seed, start, height, width, scale):
    positions = np.arange(start, start + 5, dtype=np.uint64).astype(np.int64) if start + 5 < 2**63 else \
        np.arange(start - 5, start, dtype=np.int64)
    boxes = reference.random_crop_boxes(seed, positions, height, width, scale)
    top, left, side = boxes.T
    short = min(height, width)
    assert np.all((top >= 0) & (left >= 0) & (top + side <= height) & (left + side <= width))
    assert np.all(side >= max(1, np.floor(np.sqrt(scale) * short))) and np.all(side <= short)
    one_by_one = np.concatenate([reference.random_crop_boxes(seed, positions[k:k + 1], height, width, scale)
                                 for k in range(5)])
    assert np.array_equal(boxes, one_by_one)


def test_random_crops_use_their_own_counters_and_vary():
    boxes = reference.random_crop_boxes(7, np.arange(1000), 64, 96, 0.25)
    assert len({tuple(b) for b in boxes}) > 900 and boxes[:, 2].min() < 40 and boxes[:, 2].max() == 64
    assert not np.array_equal(boxes, reference.random_crop_boxes(8, np.arange(1000), 64, 96, 0.25))
    assert reference.center_crop_box(5, 8) == (0, 1, 5)
    with pytest.raises(ValueError, match="min_scale"):
        reference.random_crop_boxes(0, np.arange(3), 4, 4, 0.0)


def test_center_resize_is_pillows_lanczos_of_the_centre_square(tmp_path):
    root = write_folder(tmp_path / "f", counts=(2,), size=(12, 8), mode="RGB")
    data = open_streaming(root, 4, 3, options=StreamOptions(workers=0, resize="center"))
    with Image.open(sorted((root / "c0").iterdir())[0]) as img:
        expected = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[:, :, 2:10]
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((4, 4), Image.Resampling.LANCZOS))
                for c in expected]
    expected = np.clip(np.stack(channels).astype(np.float64) * (2 / 255) - 1, -1, 1).astype(np.float32)
    assert torch.equal(data.item(0, 0, 0), torch.from_numpy(expected))


# ----------------------------------------------------------------------------- the cache

def test_cache_is_reused_only_for_the_same_data_and_reads_the_same_items(tmp_path):
    root = write_folder(tmp_path / "f")
    cache = tmp_path / "run" / "data-cache"
    data = open_streaming(root, 4, 1, options=StreamOptions(workers=1, cache_dir=str(cache)))
    expected = torch.stack([data.item(i, 0, 0) for i in range(len(data))])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".data-cache.tmp-123").mkdir()  # what a killed build leaves
    assert attach_cache(data, cache) is False
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["data-cache"]
    assert np.load(cache / "images.npy", mmap_mode="r").dtype == np.uint8
    assert torch.equal(torch.stack([data.item(i, 0, 0) for i in range(len(data))]), expected)
    again = open_streaming(root, 4, 1, options=StreamOptions(workers=0, cache_dir=str(cache)))
    assert attach_cache(again, cache) is True
    os.utime(root / "c0" / "000.png", ns=(1, 1))  # same pixels, but the listing changed: rebuilt
    changed = open_streaming(root, 4, 1, options=StreamOptions(workers=0, cache_dir=str(cache)))
    assert attach_cache(changed, cache) is False
    with pytest.raises(DataError, match="--cache"):
        StreamOptions(resize="random", cache_dir=str(cache))


def test_a_failed_cache_build_leaves_nothing(tmp_path):
    root = write_folder(tmp_path / "f")
    truncate(root / "c1" / "002.png")
    data = open_streaming(root, 4, 1, options=StreamOptions(workers=0, cache_dir=str(tmp_path / "c")))
    with pytest.raises(DataError, match="002.png"):
        attach_cache(data, tmp_path / "c")
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]


# ----------------------------------------------------------------------------- bad input

def test_a_truncated_image_stops_the_run_naming_it(tmp_path):
    root = write_folder(tmp_path / "f", counts=(4, 4))
    truncate(root / "c0" / "001.png")
    trainer = trainer_on(open_streaming(root, 4, 1, options=StreamOptions(workers=1)), steps=4)
    with pytest.raises(DataError, match=r"cannot read image .*c0/001.png") as info:
        for _ in range(4):
            trainer.train_step()
    assert "\n" not in str(info.value)


def test_skipped_images_are_reported_once_and_counted_per_epoch(tmp_path, caplog):
    root = write_folder(tmp_path / "f", counts=(4, 4))
    truncate(root / "c0" / "001.png")
    (root / "c1" / "999.png").write_bytes(b"not a png")  # found by the header scan
    with caplog.at_level(logging.WARNING, logger="ddpm.streaming"):
        data = open_streaming(root, 4, 1, options=StreamOptions(workers=2, bad_images="skip"))
        assert len(data) == 8
        trainer = trainer_on(data, steps=6)
        for _ in range(6):  # 24 items: three epochs of 8
            trainer.train_step()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("999.png" in line for line in lines) == 1 and sum("001.png" in line for line in lines) == 1
    assert [line for line in lines if line.startswith("epoch")] == \
        [f"epoch {e}: skipped 1 unreadable image(s) (each replaced by the next readable one)" for e in (0, 1, 2)]
    assert trainer.feed.skipped == {0: 1, 1: 1, 2: 1}


def test_bad_folders_are_one_clear_error(tmp_path):
    write_folder(tmp_path / "mixed" / "a", counts=(1,), size=(4, 4))
    write_folder(tmp_path / "mixed" / "b", counts=(1,), size=(5, 4))
    (tmp_path / "empty" / "c0").mkdir(parents=True)
    write_folder(tmp_path / "empty" / "c1", counts=(1,))
    (tmp_path / "none").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"junk")
    cases = [("mixed", "mixed sizes.*--resize center"), ("empty", r"class folder\(s\) \['c0'\] hold no images"),
             ("none", "holds no images"), ("junk", "cannot read image .*x.png.*--bad-images skip")]
    for name, message in cases:
        with pytest.raises(DataError, match=message):
            open_streaming(tmp_path / name, 4, 1)
    assert len(open_streaming(tmp_path / "mixed", 4, 1, options=StreamOptions(resize="center"))) == 2


# ----------------------------------------------------------------------------- the command line

def test_cli_records_the_loader_and_keeps_it_on_resume(tmp_path, capsys):
    from test_cli import cli, train_args

    root = write_folder(tmp_path / "f", size=(6, 5))
    out = tmp_path / "run"
    args = train_args(root, out, 2, "--samples", "0", "--stream", "--workers", "1", "--resize", "center",
                      "--cache")
    assert main(args) == 0
    saved = load_checkpoint(out, trainer_state=False).config["data"]
    assert saved["loader"] == {"stream": True, "resize": "center", "crop_scale": 0.64, "bad_images": "stop",
                               "cache": True}
    assert saved["fingerprint"]["resize"] == "center" and (out / "data-cache" / "images.npy").is_file()
    assert main(train_args(root, out, 3, "--samples", "0")) == 0  # resumed streamed, centre-cropped
    code, err = cli(train_args(root, out, 4, "--samples", "0", "--stream", "--resize", "none"), capsys)
    assert code == 2 and "resize: saved 'center', given 'none'" in err
    code, err = cli(train_args(root, tmp_path / "new", 1, "--workers", "2"), capsys)
    assert code == 2 and "--workers applies to streamed data: add --stream" in err


def test_cached_training_is_the_streamed_training_and_skips_alike(tmp_path, caplog):
    root = write_folder(tmp_path / "f", counts=(4, 4))
    truncate(root / "c1" / "000.png")
    streamed = open_streaming(root, 4, 1, options=StreamOptions(workers=1, bad_images="skip"))
    cached = open_streaming(root, 4, 1, options=StreamOptions(workers=1, bad_images="skip",
                                                             cache_dir=str(tmp_path / "c")))
    attach_cache(cached, tmp_path / "c")
    a, b = trainer_on(streamed), trainer_on(cached)
    with caplog.at_level(logging.WARNING, logger="ddpm.streaming"):
        assert [a.train_step().loss for _ in range(5)] == [b.train_step().loss for _ in range(5)]
    assert a.feed.skipped == b.feed.skipped == {0: 1, 1: 1, 2: 1}  # index 4 at positions 1, 12, 18
    assert all(torch.equal(params(a)[k], v) for k, v in params(b).items())
