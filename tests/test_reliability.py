"""The CLI tried as a new user would: every bad path, option, data file and checkpoint ends in one
line and status 2 before any work is done (ddpm.preflight, ddpm.cli's option types), resuming on
other data is refused unless allowed, and a failed save (a real write error: RLIMIT_FSIZE) is one
line that keeps the previous checkpoint as `latest`."""

from __future__ import annotations

import gzip
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm import runs
from ddpm.checkpoint import latest_checkpoint, load_checkpoint
from ddpm.cli import main
from ddpm.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def tiny_npz(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, 4, 4), dtype=np.uint8), labels=np.arange(n) % 3)
    return path


def train_argv(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--config", "tiny", "--out", str(out), "--steps", "2",
            "--batch-size", "4", "--timesteps", "20", "--samples", "1", "--no-progress", "--device", "cpu",
            *extra]


def cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


@pytest.fixture()
def no_work(monkeypatch):
    """Any training step or sampling fails the test: the error must come before the work."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the user error was reported")

    monkeypatch.setattr(Trainer, "train_step", refuse)
    monkeypatch.setattr(runs, "draw", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    data = tiny_npz(root / "d.npz")
    assert main(train_argv(data, root / "run", "--samples", "0")) == 0
    return root, data, root / "run"


def _bad_files(root: Path) -> dict[str, Path]:
    """Corrupt data files of every kind the loaders read."""
    files = {}
    good = gzip.compress(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + bytes(32))
    bad_deflate = good[:10] + bytes([good[10] ^ 0xFF]) + good[11:]  # gzip.decompress: zlib.error
    (files.setdefault("gz", root / "train-images-idx3-ubyte.gz")).write_bytes(bad_deflate)
    (files.setdefault("npz", root / "bad.npz")).write_bytes(b"PK\x03\x04" + os.urandom(200))
    np.save(root / "trunc.npy", np.zeros((12, 4, 4), np.uint8))
    raw = (root / "trunc.npy").read_bytes()
    (files.setdefault("npy", root / "trunc.npy")).write_bytes(raw[:-50])
    (files.setdefault("txt", root / "notes.npy")).write_text("these are my images\n")
    folder = root / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    files["png"] = folder
    return files


def test_every_bad_path_option_and_file_is_one_line_and_status_2_before_any_work(tmp_path, capsys, no_work,
                                                                                 trained):
    root, data, run = trained
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad = _bad_files(tmp_path)
    new = tmp_path / "new_run"
    cases = [
        (train_argv(data, a_file), "--out", "is a file, not a directory"),
        (train_argv(data, a_file / "run"), "--out", "is a file, so nothing can be created under it"),
        (train_argv(data, new, "--timesteps", "0"), "--timesteps", "must be an integer >= 1, got '0'"),
        (train_argv(data, new, "--steps", "-5"), "--steps", "must be an integer >= 1"),
        (train_argv(data, new, "--lr", "nan"), "--lr", "must be a finite number in (0, inf)"),
        (train_argv(data, new, "--ema-decay", "1"), "--ema-decay", "in [0, 1)"),
        (train_argv(data, new, "--label-dropout", "-0.1"), "--label-dropout", "in [0, 1)"),
        (train_argv(data, new, "--guidance", "-2"), "--guidance", "in [0, inf)"),
        (train_argv(data, new, "--checkpoint-every", "0"), "--checkpoint-every", ">= 1"),
        (train_argv(data, new, "--seed", "-1"), "--seed", "in [0, 18446744073709551615]"),
        (train_argv(data, new, "--samples", "-1"), "--samples", ">= 0"),
        (train_argv(data, new, "--batch-size", "0"), "--batch-size", ">= 1"),
        (train_argv(tmp_path / "missing.npz", new), "missing.npz", "does not exist"),
        (train_argv(bad["gz"], new), "train-images-idx3-ubyte.gz", "cannot read IDX file"),
        (train_argv(bad["npz"], new), "bad.npz", "cannot read array file"),
        (train_argv(bad["npy"], new), "trunc.npy", "cannot read array file"),
        (train_argv(bad["txt"], new), "notes.npy", "cannot read array file"),
        (train_argv(bad["png"], new), "a.png", "cannot read image"),
        (["sample", "--checkpoint", str(run), "--out", str(tmp_path)], "--out", "is a directory"),
        (["sample", "--checkpoint", str(run), "--out", str(a_file / "x.png")], "--out", "is a file, so nothing"),
        (["sample", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--gif", str(tmp_path)],
         "--gif", "is a directory"),
        (["sample", "--checkpoint", str(run), "--gif", str(tmp_path / "g.gif"), "--gif-frames", "0"],
         "--gif-frames", ">= 1"),
        (["sample", "--checkpoint", str(run), "--guidance", "-1", "--class", "1"], "--guidance", "in [0, inf)"),
        (["sample", "--checkpoint", str(a_file)], str(a_file), "must be a directory"),
        (["demo", "--quick", "--out", str(a_file)], "--out", "is a file, not a directory"),
        (["demo", "--steps", "0"], "--steps", ">= 1"),
    ]
    for argv, names, message in cases:
        code, err = cli(argv, capsys)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and names in err and message in err, (argv, err)
        assert not new.exists() and not (tmp_path / "x.png").exists(), argv  # nothing was made


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders; the probe cannot fail here")
def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, capsys, no_work, trained):
    _, data, run = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for argv, flag in ((train_argv(data, locked / "run"), "--out"),
                           (["sample", "--checkpoint", str(run), "--out", str(locked / "x.png")], "--out")):
            code, err = cli(argv, capsys)
            assert code == 2 and err.count("\n") == 1 and flag in err and "cannot write in" in err, err
    finally:
        locked.chmod(0o700)


def test_resuming_on_other_data_is_refused_unless_allowed(trained, tmp_path, capsys):
    root, data, run = trained
    out = tmp_path / "run"
    assert main(train_argv(data, out, "--samples", "0")) == 0
    fingerprint = load_checkpoint(out).config["data"]["fingerprint"]
    assert fingerprint["count"] == 12 and fingerprint["shape"] == [1, 4, 4] and fingerprint["num_classes"] == 3
    same_size = tiny_npz(tmp_path / "other.npz", seed=1)  # same count and shape, other pixels
    code, err = cli(train_argv(same_size, out, "--steps", "3"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{out} was trained on other data" in err and "the images differ" in err
    assert "--allow-data-change" in err and load_checkpoint(out).step == 2
    bigger = tiny_npz(tmp_path / "bigger.npz", n=15)
    code, err = cli(train_argv(bigger, out, "--steps", "3"), capsys)
    assert code == 2 and "count: saved 12, given 15" in err
    relabelled = tmp_path / "relabelled.npz"
    with np.load(data) as z:
        np.savez(relabelled, images=z["images"], labels=(z["labels"] + 1) % 3)
    code, err = cli(train_argv(relabelled, out, "--steps", "3"), capsys)
    assert code == 2 and "the labels differ" in err and "the images differ" not in err
    # allowed: the run continues on the new data (a new count included) and records it
    assert main(train_argv(bigger, out, "--steps", "3", "--samples", "0", "--allow-data-change")) == 0
    after = load_checkpoint(out)
    assert after.step == 3 and after.config["data"]["fingerprint"]["count"] == 15
    assert after.trainer_state["sampler"]["n"] == 15


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(trained, tmp_path):
    """A real write error (files over RLIMIT_FSIZE fail as on a full disk) while resuming."""
    _, data, _ = trained
    out = tmp_path / "run"
    assert main(train_argv(data, out, "--samples", "0")) == 0
    before = latest_checkpoint(out)
    argv = [sys.executable, "-m", "ddpm", *train_argv(data, out, "--steps", "3", "--samples", "0")]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            preexec_fn=_limit_file_size, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot save checkpoint step 3" in errors[0] and f"{before} stays the latest checkpoint" in errors[0]
    assert latest_checkpoint(out) == before and load_checkpoint(out).step == 2
    assert [p.name for p in (out / "checkpoints").iterdir()] == [before.name]  # nothing half-written
