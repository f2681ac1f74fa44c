"""ddpm.checkpoint + Trainer.save/load: atomic saves, bit-exact resume, clear errors for bad files."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm import checkpoint as ckpt_module
from ddpm.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from ddpm.data import ImageDataset
from ddpm.train import TrainConfig, Trainer

SCHEDULE = reference.make_schedule("linear", 50)


def tiny_dataset(n: int = 24, classes: int = 3, seed: int = 0, hflip: bool = True) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    labels = torch.arange(n) % classes
    return ImageDataset(images, labels, classes, [str(k) for k in range(classes)], "tiny", hflip=hflip)


def make_trainer(init_seed: int = 0, config=None, **overrides) -> Trainer:
    torch.manual_seed(init_seed)
    unet_config = config or reference.UNetConfig.tiny(num_classes=3, dropout=0.1)
    settings = dict(steps=8, batch_size=6, lr=1e-2, warmup_steps=3, lr_schedule="cosine",
                    grad_clip=0.5, ema_decay=0.9, label_dropout=0.3, seed=11)
    settings.update(overrides)
    return Trainer(ddpm.UNet(unet_config), SCHEDULE, TrainConfig(**settings), tiny_dataset())


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), f"parameter {name} differs after resume"
    for name in a.ema.shadow:
        assert torch.equal(a.ema.shadow[name], b.ema.shadow[name]), f"EMA {name} differs after resume"
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for k in sa:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][key], sb[k][key]), f"optimizer {key} of param {k} differs"
    assert a.history == b.history
    assert (a.step, a.optimizer_steps, a.ema.num_updates) == (b.step, b.optimizer_steps, b.ema.num_updates)


def test_resume_is_bit_exact_on_cpu(tmp_path):
    """Train 2N steps == train N, save, load into a fresh process state, train N (atol = 0).

    The config exercises every source of randomness: model dropout (global torch RNG), label
    dropout, horizontal flips and t (the trainer's generator), data order, the noise stream.
    """
    n = 4
    straight = make_trainer()
    straight.fit(2 * n, progress=False)

    first = make_trainer()
    first.fit(n, progress=False, run_dir=tmp_path)
    # disturb every global RNG and build the resumed trainer from a different initialisation
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    resumed = make_trainer(init_seed=123)
    resumed.load(tmp_path)
    assert resumed.step == n
    resumed.fit(2 * n, progress=False)
    assert_same_state(straight, resumed)


def test_checkpoint_layout_config_and_ema_weights_load_into_a_unet(tmp_path):
    trainer = make_trainer()
    trainer.fit(3, progress=False, run_dir=tmp_path)
    path = latest_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoints" / "step_00000003"
    assert (tmp_path / "latest").read_text().strip() == "checkpoints/step_00000003"
    assert sorted(p.name for p in path.iterdir()) == sorted(ckpt_module.FILES + (ckpt_module.MARKER,))
    config = json.loads((path / "config.json").read_text())
    assert config["step"] == 3 and config["unet"] == trainer.unet_config.to_dict()
    assert config["schedule"]["kind"] == "linear" and config["schedule"]["T"] == 50
    assert config["training"]["batch_size"] == 6
    loaded = load_checkpoint(tmp_path)
    assert loaded.unet_config == trainer.unet_config
    assert np.array_equal(loaded.schedule.betas, SCHEDULE.betas)
    model = ddpm.UNet(loaded.unet_config)
    model.load_state_dict(loaded.ema_state)  # EMA weights are a plain UNet state dict
    for name, p in model.named_parameters():
        assert torch.equal(p, trainer.ema.shadow[name])


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(4, progress=False)

    def crash(obj, f, *args, **kwargs):  # write half a file, then die
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(CheckpointError, match=r"cannot save checkpoint step 4 in .*: disk full; "
                                              r".*step_00000002 stays the latest checkpoint"):
        trainer.save(tmp_path)
    monkeypatch.undo()
    # nothing half-written is visible, `latest` still names step 2, and it loads
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 2
    for name, value in before.items():
        assert torch.equal(loaded.model_state[name], value)


def test_a_crash_after_the_directory_move_but_before_latest_still_finds_a_complete_checkpoint(tmp_path):
    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    trainer.fit(3, progress=False, run_dir=tmp_path)
    (tmp_path / "latest").write_text("checkpoints/step_99999999\n")  # points at nothing
    assert load_checkpoint(tmp_path).step == 3  # falls back to the newest complete checkpoint


def test_resaving_a_step_and_keep_last(tmp_path):
    trainer = make_trainer()
    for target in (1, 2, 3, 4):
        trainer.fit(target, progress=False)
        trainer.save(tmp_path, keep_last=2)
    trainer.save(tmp_path, keep_last=2)  # the same step again replaces it whole
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000003", "step_00000004"]
    assert load_checkpoint(tmp_path).step == 4


def test_a_resave_killed_between_its_two_renames_still_finds_the_step(tmp_path, monkeypatch):
    """Re-saving step N moves the old step_N aside, then renames the new one in. A failure of
    the second rename puts the old one back; a process killed right between them leaves step N
    only in .trash-step_N-*, which the loader still finds."""
    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    real_replace = ckpt_module.os.replace
    calls = []

    def second_rename_fails(src, dst):
        calls.append((str(src), str(dst)))
        if len(calls) == 2:
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_module.os, "replace", second_rename_fails)
    with pytest.raises(CheckpointError, match="killed"):
        trainer.save(tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 2 and (tmp_path / "checkpoints" / "step_00000002").is_dir()
    # the kill case: the complete step only in the trash directory
    root = tmp_path / "checkpoints"
    real_replace(root / "step_00000002", root / ".trash-step_00000002-deadbeef")
    assert load_checkpoint(tmp_path).step == 2


@pytest.fixture()
def saved(tmp_path):
    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    return latest_checkpoint(tmp_path)


def test_truncated_safetensors_is_a_clear_error(saved):
    model_file = saved / "model.safetensors"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated or altered: \d+ bytes"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_checkpoint(saved, verify=False)


def test_garbage_config_json_is_a_clear_error(saved):
    (saved / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_checkpoint(saved, verify=False)
    (saved / "config.json").write_text(json.dumps({"format": "ddpm-checkpoint", "version": 1,
                                                   "unet": {"ch": "wide"}}))
    with pytest.raises(CheckpointError, match="invalid UNet config"):
        load_checkpoint(saved, verify=False)


def test_same_size_corruption_is_caught_by_the_hash(saved):
    state_file = saved / "trainer_state.pt"
    data = bytearray(state_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt: its SHA-256 differs"):
        load_checkpoint(saved)
    state_file.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="trainer_state.pt cannot be read"):
        load_checkpoint(saved, verify=False)


def test_missing_marker_means_incomplete(saved):
    (saved / ckpt_module.MARKER).unlink()
    with pytest.raises(CheckpointError, match="incomplete: the marker COMPLETE.json is missing"):
        load_checkpoint(saved)
    # a run directory whose only checkpoint is incomplete has nothing to resume from
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        load_checkpoint(saved.parent.parent)


def test_checkpoint_of_another_config_is_refused(saved, tmp_path):
    other = make_trainer(config=reference.UNetConfig.tiny(num_classes=3, ch=6, groups=3))
    with pytest.raises(CheckpointError, match="different UNet config: ch: checkpoint 4 vs requested 6"):
        other.load(saved)
    # weights of another config swapped in under a valid config.json
    other_dir = tmp_path / "other"
    other.fit(1, progress=False, run_dir=other_dir)
    shutil.copy(latest_checkpoint(other_dir) / "model.safetensors", saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match the UNet config"):
        load_checkpoint(saved, verify=False)


def test_schedule_mismatch_and_bad_paths(saved, tmp_path):
    trainer = make_trainer()
    trainer.schedule = reference.make_schedule("cosine", 50)
    with pytest.raises(CheckpointError, match="schedule"):
        trainer.load(saved)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="must be a directory"):
        load_checkpoint(tmp_path / "file")
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        ckpt_module.save_checkpoint(tmp_path, -1, model_state={}, ema_state={}, config={}, trainer_state={})


# ----------------------------------------------------------------------------- every file, every MiB

MiB = 1 << 20


@pytest.fixture(scope="module")
def big_saved(tmp_path_factory):
    """A checkpoint whose weight files are > 1 MiB (ch=24: 1.5 MiB each, the optimizer state 3 MiB),
    so a hash over only the first MiB of a file would miss the last corruption below."""
    run = tmp_path_factory.mktemp("big")
    torch.manual_seed(0)
    trainer = Trainer(ddpm.UNet(reference.UNetConfig.tiny(num_classes=3, ch=24, groups=4)), SCHEDULE,
                      TrainConfig(steps=1, batch_size=4, lr=1e-3, seed=2), tiny_dataset())
    trainer.fit(1, progress=False, run_dir=run)
    path = latest_checkpoint(run)
    files = sorted(p.name for p in path.iterdir())
    # what the directory holds is what ddpm.checkpoint says it writes, and nothing else
    assert files == sorted([*ckpt_module.FILES, ckpt_module.MARKER])
    for name in ("model.safetensors", "ema.safetensors", "trainer_state.pt"):
        assert (path / name).stat().st_size > MiB + 4096, name
    return path


def _offsets(size: int) -> dict[str, int]:
    spots = {"first": 0, "middle": size // 2, "last": size - 1}
    if size > MiB + 4096:
        spots["beyond 1 MiB"] = MiB + 4000
    return spots


def _flip(path, offset: int):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01  # one bit: the same size, so only the hash can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fname", ckpt_module.FILES)
def test_a_flipped_byte_anywhere_in_any_checkpoint_file_is_refused(big_saved, fname, tmp_path):
    """Every data file, at its first, middle and last byte and (files over 1 MiB) past the first
    MiB: load refuses with CheckpointError naming the file's hash. A flip inside safetensors
    tensor data or a pickled tensor parses fine, so only the SHA-256 over the WHOLE file of EVERY
    file (not just *.pt, not just the first MiB) can catch it."""
    size = (big_saved / fname).stat().st_size
    for where, offset in _offsets(size).items():
        copy = tmp_path / where.replace(" ", "_")
        shutil.copytree(big_saved, copy)
        _flip(copy / fname, offset)
        with pytest.raises(CheckpointError, match=rf"{fname} is corrupt: its SHA-256 differs"):
            load_checkpoint(copy)
    load_checkpoint(big_saved)  # the untouched original still loads


def test_a_corrupted_marker_is_refused(big_saved, tmp_path):
    """COMPLETE.json: a flipped character in any recorded hash or size, or in its JSON syntax."""
    text = (big_saved / ckpt_module.MARKER).read_text()
    marker = json.loads(text)
    spots = {}
    for fname, entry in marker["files"].items():
        spots[f"{fname} sha256"] = text.index(entry["sha256"]) + 5
        spots[f"{fname} bytes"] = text.index(f'"bytes": {entry["bytes"]}') + len('"bytes": ')
    spots["syntax"] = text.index("{")
    assert len(spots) == 2 * len(ckpt_module.FILES) + 1
    for where, offset in spots.items():
        copy = tmp_path / where.replace(" ", "_")
        shutil.copytree(big_saved, copy)
        _flip(copy / ckpt_module.MARKER, offset)
        with pytest.raises(CheckpointError):
            load_checkpoint(copy)


# ----------------------------------------------------------------------------- leftovers and edges

def test_leftovers_of_interrupted_saves_are_never_counted_and_removed_at_the_next_save(tmp_path):
    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    root = tmp_path / "checkpoints"
    step2 = root / "step_00000002"
    shutil.copytree(step2, root / ".tmp-step_00000007-99-deadbeef")  # complete, killed before its rename
    (root / "step_00000009").mkdir()                                # a deletion cut short (marker first)
    (root / "step_00000009" / "model.safetensors").write_bytes(b"half")
    shutil.copytree(step2, root / ".trash-step_00000002-cafe0000")  # a superseded copy
    (tmp_path / ".latest.tmp-0123").write_text("checkpoints/step_00000007\n")
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == step2  # none of them counts as a checkpoint
    assert ckpt_module._complete_checkpoints(tmp_path) == [step2]
    trainer.fit(3, progress=False, run_dir=tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000003"]
    assert not list(tmp_path.glob(".latest.tmp*"))


def test_the_only_complete_copy_of_a_step_is_moved_back_not_removed(tmp_path):
    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    root = tmp_path / "checkpoints"
    (root / "step_00000002").rename(root / ".trash-step_00000002-deadbeef")  # killed mid re-save
    removed = ckpt_module.remove_leftovers(tmp_path)
    assert removed == [] and sorted(p.name for p in root.iterdir()) == ["step_00000002"]
    assert load_checkpoint(tmp_path).step == 2


def test_resuming_a_run_removes_its_leftovers(tmp_path):
    from ddpm.distributed import single_process
    from ddpm.runs import open_run

    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    (tmp_path / "checkpoints" / ".tmp-step_00000003-1-abcd").mkdir()
    (tmp_path / ".latest.tmp-xyz").write_text("")
    assert open_run(tmp_path, single_process("cpu")).step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "latest"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000002"]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"../../etc\n", b"checkpoints/step_00000099\n"])
def test_a_corrupt_latest_falls_back_to_the_newest_complete_checkpoint_with_a_warning(tmp_path, caplog, content):
    trainer = make_trainer()
    trainer.fit(2, progress=False, run_dir=tmp_path)
    trainer.fit(3, progress=False, run_dir=tmp_path)
    (tmp_path / "latest").write_bytes(content)
    with caplog.at_level("WARNING", logger="ddpm"):
        assert load_checkpoint(tmp_path).step == 3
    warning = caplog.records[-1].getMessage()
    assert str(tmp_path / "latest") in warning and str(tmp_path / "checkpoints" / "step_00000003") in warning


def _rewrite_state(saved, change) -> None:
    state = torch.load(saved / "trainer_state.pt", weights_only=True)
    change(state)
    torch.save(state, saved / "trainer_state.pt")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("ema_num_updates"), r"lacks the trainer state entries \['ema_num_updates'\]"),
    (lambda s: s.update(step="3"), "step is str, expected int"),
    (lambda s: s["sampler"].pop("position"), "sampler lacks position"),
    (lambda s: s["optimizer"]["param_groups"][0]["params"].pop(), "the optimizer state covers"),
])
def test_a_trainer_state_with_missing_or_wrong_keys_is_one_line_naming_the_file(saved, change, message):
    _rewrite_state(saved, change)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(saved, verify=False)
    assert str(saved / "trainer_state.pt") in str(info.value) and "\n" not in str(info.value)


class _Planted:
    def __reduce__(self):
        return (open, ("/tmp/ddpm-planted-pickle-ran", "w"))


def test_a_refused_pickle_is_one_line_and_never_runs(saved):
    import os

    marker = "/tmp/ddpm-planted-pickle-ran"
    if os.path.exists(marker):
        os.unlink(marker)
    torch.save({"step": _Planted()}, saved / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="refuses") as info:
        load_checkpoint(saved, verify=False)
    assert str(saved / "trainer_state.pt") in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(marker)


def test_a_config_that_does_not_match_the_weights_is_one_line_naming_the_file(saved):
    config = json.loads((saved / "config.json").read_text())
    config["unet"]["ch"] = 2 * config["unet"]["ch"]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved, verify=False)
    assert str(saved / "model.safetensors") in str(info.value) and "\n" not in str(info.value)
