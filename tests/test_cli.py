"""`python -m ddpm train | sample`: end to end on a tiny model, resume, and bad arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
import reference
from ddpm.checkpoint import latest_checkpoint, load_checkpoint
from ddpm.cli import main
from ddpm.viz import make_grid

ROOT = Path(__file__).resolve().parents[1]


def tiny_npz(path: Path, channels_last: int | None = None, labelled: bool = True) -> Path:
    rng = np.random.default_rng(0)
    shape = (12, 4, 4) if channels_last is None else (12, 4, 4, channels_last)
    arrays = {"images": rng.integers(0, 256, shape, dtype=np.uint8)}
    if labelled:
        arrays["labels"] = np.arange(12) % 3
    np.savez(path, **arrays)
    return path


def train_args(data: Path, out: Path, steps: int = 2, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--config", "tiny", "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--timesteps", "20", "--samples", "1", "--no-progress",
            "--device", "cpu", *extra]


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `python -m ddpm ARGV`; a user error must be exactly one line."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    if code == 2:
        assert err.count("\n") == 1 and "error:" in err, err
    return code, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(train_args(tiny_npz(root / "d.npz"), root / "run")) == 0
    return root / "run"


def test_train_writes_checkpoint_loss_curve_and_samples(run_dir):
    ckpt = load_checkpoint(run_dir)
    assert ckpt.step == 2 and ckpt.unet_config.num_classes == 3 and ckpt.schedule.T == 20
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    with Image.open(run_dir / "samples.png") as img:  # 3 classes x 1 sample, 4x4 images x12, pad 2
        assert img.size == (1 * 48 + 2 * 2, 3 * 48 + 4 * 2)


def test_sample_from_a_saved_checkpoint_matches_the_library(run_dir, tmp_path, capsys):
    png, gif = tmp_path / "grid.png", tmp_path / "reverse.gif"
    args = ["sample", "--checkpoint", str(run_dir), "--steps", "4", "--n", "2", "--class", "all",
            "--guidance", "2", "--ema", "--seed", "3", "--out", str(png), "--gif", str(gif), "--device", "cpu"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    ckpt = load_checkpoint(run_dir)
    model = ddpm.UNet(ckpt.unet_config)
    model.load_state_dict(ckpt.ema_state)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        expected = ddpm.sample(model.eval(), (6, 1, 4, 4), ckpt.schedule, num_steps=4, y=y,
                               guidance_scale=2.0, seed=3)
    with Image.open(png) as img:
        assert np.array_equal(np.asarray(img), np.asarray(make_grid(expected, 2)))
    with Image.open(gif) as img:  # one frame per step (Pillow merges identical neighbours)
        assert 2 <= img.n_frames <= 4
        img.seek(img.n_frames - 1)  # the last frame is x_0: the grid itself
        assert np.array_equal(np.asarray(img.convert("L")), np.asarray(make_grid(expected, 2)))


def test_train_resumes_from_out_and_refuses_changed_settings(run_dir, tmp_path, capsys):
    data = tmp_path / "d.npz"
    tiny_npz(data)
    before = load_checkpoint(run_dir)
    assert main(train_args(data, run_dir, 3)) == 0
    assert "resuming" in capsys.readouterr().out
    after = load_checkpoint(run_dir)
    assert after.step == 3 and after.trainer_state["history"]["step"] == [0, 1, 2]
    assert after.trainer_state["optimizer_steps"] == before.trainer_state["optimizer_steps"] + 1
    # a refused resume is a CheckpointError (ddpm.runs.check_resume): status 2 and one line
    code, err = cli(train_args(data, run_dir, 4, "--lr", "0.5"), capsys)
    assert code == 2
    assert f"{run_dir} holds a checkpoint with other settings (lr): lr: saved 0.0002, given 0.5" in err
    for extra, message in ((["--timesteps", "30"], "was trained with schedule Schedule(kind='linear', T=20"),
                           (["--config", "digits8"], "was trained with a different UNet config"),
                           (["--unconditional"], "num_classes: checkpoint 3 vs requested None")):
        code, err = cli(train_args(data, run_dir, 4, *extra), capsys)  # the later --timesteps wins
        assert code == 2 and message in err
    code, err = cli(train_args(data, run_dir, 2), capsys)
    assert code == 2 and "steps=2 lies behind" in err
    assert load_checkpoint(run_dir).step == 3  # nothing refused was written


def test_check_resume_is_the_one_resume_policy(run_dir):
    from ddpm.checkpoint import CheckpointError
    from ddpm.runs import check_resume

    ckpt = load_checkpoint(run_dir)
    saved = ckpt.config["training"]
    config, schedule, train = check_resume(ckpt, training={"steps": 50, "lr": saved["lr"]})
    assert config == ckpt.unet_config and schedule is ckpt.schedule
    assert train.steps == 50 and {**train.to_dict(), "steps": saved["steps"]} == saved
    with pytest.raises(CheckpointError, match=r"holds a demo checkpoint with other settings \(seed, lr\): "
                                              r"seed: saved 0, given 1, lr: saved 0.0002, given 0.1"):
        check_resume(ckpt, training={"seed": 1, "lr": 0.1, "steps": 50}, label="demo")
    with pytest.raises(CheckpointError, match="was trained with schedule"):
        check_resume(ckpt, schedule=reference.make_schedule("cosine", 20))
    # the speed options may change (the same math): the resumed run takes the ones asked for
    flipped = {k: not saved.get(k, False) for k in ("channels_last", "compile")}
    _, _, train = check_resume(ckpt, training={"steps": 50, **flipped})
    assert (train.channels_last, train.compile) == (flipped["channels_last"], flipped["compile"])
    assert {**train.to_dict(), "steps": saved["steps"], **{k: saved.get(k, False) for k in flipped}} == saved


@pytest.mark.parametrize("extra, message", [
    (["--class", "7"], "--class 7 is out of range: the model has classes 0..2"),
    (["--class", "seven"], "argument --class: must be a class id K >= 0 or 'all', got 'seven'"),
    (["--class", "-1"], "argument --class: must be a class id K >= 0 or 'all'"),
    (["--guidance", "3"], "--guidance needs --class K"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (["--steps", "21"], r"--steps must lie in \[1, T=20\]"),
    (["--n", "0"], "argument --n/--num-samples: must be an integer >= 1, got '0'"),
    (["--sampler", "euler"], "invalid choice: 'euler'"),
    (["--guidance", "-1", "--class", "1"], r"argument --guidance: must be a finite number in \[0, inf\)"),
    (["--eta", "1.5"], r"argument --eta: must be a finite number in \[0, 1\]"),
    (["--eta", "nan"], r"argument --eta: must be a finite number"),
    (["--sampler", "ddpm", "--steps", "3", "--eta", "0.5"], "--eta 0.5 applies to the ddim sampler only"),
    (["--gif", "g.gif", "--gif-frames", "0"], "argument --gif-frames: must be an integer >= 1, got '0'"),
    (["--seed", "-3"], r"argument --seed: must be an integer in \[0, 18446744073709551615\]"),
    (["--nrow", "0"], "argument --nrow: must be an integer >= 1"),
])
def test_sample_rejects_bad_arguments(run_dir, tmp_path, capsys, extra, message):
    code, err = cli(["sample", "--checkpoint", str(run_dir), "--out", str(tmp_path / "x.png"),
                     "--device", "cpu", *extra], capsys)
    assert code == 2
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "x.png").exists()


def test_guidance_and_classes_need_a_class_conditional_model(tmp_path, capsys):
    data = tiny_npz(tmp_path / "u.npz", labelled=False)
    assert main(train_args(data, tmp_path / "u", 1)) == 0
    for extra, message in ((["--guidance", "2", "--class", "1"], "needs a class-conditional model"),
                           (["--class", "1"], "the checkpoint's model is unconditional")):
        code, err = cli(["sample", "--checkpoint", str(tmp_path / "u"), "--out", str(tmp_path / "x.png"),
                         "--device", "cpu", *extra], capsys)
        assert code == 2 and message in err


def test_bad_data_and_checkpoints_exit_with_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, message in ((train_args(empty, tmp_path / "r1"), "holds no images"),
                          (train_args(tiny_npz(tmp_path / "rgb.npz", channels_last=3), tmp_path / "r2"),
                           "has 3 channel(s) but the model takes 1"),
                          (["sample", "--checkpoint", str(tmp_path / "nowhere"), "--device", "cpu"],
                           "does not exist"),
                          (["sample", "--checkpoint", str(empty), "--device", "cpu"],
                           "holds no complete checkpoint")):
        code, err = cli(argv, capsys)
        assert code == 2 and message in err
    assert latest_checkpoint(tmp_path / "r1") is None  # nothing half-made was left behind


def test_usage_errors_exit_2():
    for argv in ([], ["fly"], ["sample"], ["train", "--data", "digits"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


def test_python_dash_m_ddpm_entry_point():
    result = subprocess.run([sys.executable, "-m", "ddpm", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "{train,sample,demo," in result.stdout  # more commands follow (eval, ...)


@pytest.mark.parametrize("steps, frames, expected", [(10, 8, 8), (10, 3, 3), (4, 10, 4), (7, 1, 1)])
def test_draw_keeps_at_most_gif_frames_snapshots_ending_at_the_last_step(steps, frames, expected):
    from ddpm.distributed import single_process
    from ddpm.runs import draw

    model = ddpm.UNet(reference.UNetConfig.tiny())
    images, snapshots = draw(model, reference.make_schedule("linear", 20), None, 2, single_process(),
                             num_steps=steps, gif_frames=frames)
    assert len(snapshots) == expected
    assert torch.equal(snapshots[-1], images)
