"""Crash safety end to end: `python -m ddpm train` saving every step, SIGKILLed at random moments
N times and restarted each time, ends bit-for-bit where an uninterrupted run ends, and leaves no
leftover of an interrupted save behind (ddpm.checkpoint.remove_leftovers at resume and save).

N (default 5) comes from DDPM_SIGKILLS; the random kill delays come from a seed printed in every
failure message (DDPM_SIGKILL_SEED reproduces one). Each kill waits for a new `latest` first, so
every restart makes progress and the kills land among the steps and saves, not in the imports.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpm.checkpoint import MARKER, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30
KILLS = int(os.environ.get("DDPM_SIGKILLS", "5"))


def _train_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ddpm", "train", "--data", str(data), "--config", "tiny",
            "--out", str(out), "--steps", str(STEPS), "--batch-size", "4", "--timesteps", "20",
            "--checkpoint-every", "1", "--samples", "0", "--no-progress", "--device", "cpu"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _latest_text(out: Path) -> str | None:
    try:
        return (out / "latest").read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _kill_after_a_new_save(cmd, out: Path, delay: float, timeout: float = 120.0) -> bool:
    """Start the run, wait for it to move `latest`, wait `delay` s more, SIGKILL it. False when
    it finished first."""
    before = _latest_text(out)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while _latest_text(out) in (before, None) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no checkpoint in time"
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _leftovers(out: Path) -> list[str]:
    root = out / "checkpoints"
    bad = [p.name for p in out.iterdir() if p.name.startswith(".latest.tmp")]
    bad += [p.name for p in root.iterdir() if p.name.startswith(".") or not (p / MARKER).is_file()]
    return bad


def test_random_sigkills_during_a_run_that_saves_every_step(tmp_path):
    seed = int(os.environ.get("DDPM_SIGKILL_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    rs = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rs.integers(0, 256, (12, 4, 4), dtype=np.uint8), labels=np.arange(12) % 3)

    straight = tmp_path / "straight"
    done = subprocess.run(_train_cmd(data, straight), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr

    killed, out, seen = 0, tmp_path / "killed", set()
    for _ in range(KILLS):
        if not _kill_after_a_new_save(_train_cmd(data, out), out, rng.uniform(0.0, 0.25)):
            break
        killed += 1
        seen.update(_leftovers(out))  # what the kills left for the next start to remove
    resumed = subprocess.run(_train_cmd(data, out), cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=300)
    context = f"(seed {seed}, {killed} kills, leftovers seen between them: {sorted(seen)})"
    assert resumed.returncode == 0, f"{context}: {resumed.stderr}"
    assert killed >= min(KILLS, 2), f"{context}: the run finished before it could be killed"
    assert _leftovers(out) == [], f"{context}: left behind {_leftovers(out)}"

    a, b = load_checkpoint(straight), load_checkpoint(out)
    assert a.step == b.step == STEPS, context
    for ema in (False, True):  # bit for bit (atol = 0), the weights and the EMA weights
        sa, sb = a.state_dict(ema), b.state_dict(ema)
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"{context}: {'EMA ' * ema}{name} differs"
    assert a.trainer_state["optimizer"]["state"].keys() == b.trainer_state["optimizer"]["state"].keys()
    for k, slot in a.trainer_state["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(slot[key], b.trainer_state["optimizer"]["state"][k][key]), context
    assert a.trainer_state["history"] == b.trainer_state["history"], context
    assert a.trainer_state["sampler"] == b.trainer_state["sampler"], context
