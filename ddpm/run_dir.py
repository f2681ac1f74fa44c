"""A run directory's layout: which checkpoints it holds, which one `latest` names, and the
leftovers of interrupted saves (ddpm.checkpoint writes and reads the checkpoints themselves).

    RUN_DIR/latest                          "checkpoints/step_NNNNNNNN", replaced atomically
    RUN_DIR/checkpoints/step_NNNNNNNN/      complete when it holds COMPLETE.json

Interrupted saves leave hidden `.tmp-step_*` / `.trash-step_*` folders, `.latest.tmp-*` files
and (a deletion cut short, which removes the marker first) step folders without a marker;
`remove_leftovers` deletes them and nothing counts them as checkpoints, except a `.trash-step_N`
that is the only complete copy of step N (a re-save killed between its two renames), which
is moved back. One trainer writes to a run directory at a time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

__all__ = ["MARKER", "CHECKPOINTS", "LATEST", "latest_checkpoint", "remove_leftovers", "one_line"]

log = logging.getLogger("ddpm")

MARKER = "COMPLETE.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP_NAME = re.compile(r"step_\d{8}")
_LATEST_TEXT = re.compile(r"checkpoints/step_\d{8}")


def one_line(err: BaseException) -> str:
    """An exception's message on one line (torch and zlib write several)."""
    text = " ".join(str(err).split())
    return text if text else type(err).__name__


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory, its marker first: a deletion cut short leaves a folder
    without a marker, which nothing counts and `remove_leftovers` removes."""
    try:
        (path / MARKER).unlink()
    except FileNotFoundError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(run_dir) -> list[Path]:
    """Remove what interrupted saves left in `run_dir` (temporary folders and files, step
    folders without their marker, superseded copies); returns the paths removed. A `.trash-`
    copy that is the only complete one of its step is moved back into place instead."""
    run_dir = Path(run_dir)
    removed = []
    if run_dir.is_dir():
        for f in run_dir.glob(f".{LATEST}.tmp-*"):
            f.unlink(missing_ok=True)
            removed.append(f)
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return removed
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        if d.name.startswith(".trash-step_"):
            step_name = d.name[len(".trash-"):].split("-")[0]
            home = root / step_name
            if (d / MARKER).is_file() and not (home / MARKER).is_file() and _STEP_NAME.fullmatch(step_name):
                if home.exists():
                    shutil.rmtree(home, ignore_errors=True)
                os.replace(d, home)
                continue
        elif not (d.name.startswith(".tmp-step_") or (d.name.startswith("step_") and not (d / MARKER).is_file())):
            continue
        _remove_checkpoint(d)
        removed.append(d)
    return removed


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories under run_dir, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    complete = [d for d in root.iterdir() if d.is_dir() and (d / MARKER).is_file()]
    steps = {d.name: d for d in complete if _STEP_NAME.fullmatch(d.name)}
    # a process killed between the two renames of a re-save leaves the step only in .trash-*
    for d in complete:
        if d.name.startswith(".trash-step_"):
            steps.setdefault(d.name[len(".trash-"):].split("-")[0], d)
    return [steps[k] for k in sorted(steps)]


def _read_latest(pointer: Path) -> tuple[Path | None, str]:
    """The checkpoint `latest` names, or (None, why it cannot be used)."""
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"cannot be read ({one_line(err)})"
    if not _LATEST_TEXT.fullmatch(text):
        return None, f"does not name a checkpoint ({text[:60]!r})"
    target = pointer.parent / text
    if not (target / MARKER).is_file():
        return None, f"names {target}, which is missing or incomplete"
    return target, ""


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint `latest` names, or (if that is missing, corrupt or incomplete: with a
    warning naming both) the newest complete one; None when there is no complete checkpoint."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    problem = ""
    if pointer.is_file():
        target, problem = _read_latest(pointer)
        if target is not None:
            return target
    complete = _complete_checkpoints(run_dir)
    newest = complete[-1] if complete else None
    if problem:
        log.warning("%s %s; using the newest complete checkpoint, %s", pointer, problem, newest)
    return newest
