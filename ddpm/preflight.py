"""The checks made before a run starts: every place it writes can be written, the data fits the
model, and the data is the data a resumed run was trained on. `ddpm.runs` calls them before it
loads a model or takes a step, so a user error costs nothing but one line (the CLI's status 2).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import reference

from .data import DataError, ImageDataset

__all__ = ["UsageError", "check_output_dir", "check_output_file", "check_data_fits", "data_changes"]


class UsageError(ValueError):
    """An argument that is wrong for the checkpoint, model or data it meets (the message names
    the CLI flag and the value; the CLI exits with status 2 on it)."""


# ----------------------------------------------------------------------------- output locations

def _check_creatable(path: Path, flag: str, shown: Path) -> None:
    """`path` exists as a directory we can write in, or can be created: its nearest existing
    ancestor is a directory where a file can really be made (a probe, removed at once)."""
    base = path.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"{flag} {shown}: {base} is a file, so nothing can be created under it; "
                         "pass a path in a directory")
    try:
        if not os.access(base, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        fd, probe = tempfile.mkstemp(dir=base, prefix=".ddpm-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"{flag} {shown}: cannot write in {base} ({err.strerror or err}); "
                         f"pass a writable location") from None


def check_output_dir(path, flag: str = "--out", files: tuple[str, ...] = ()) -> Path:
    """A directory a run writes into (made later): it is a directory or can be created, we can
    write there, and none of `files` (names it will write) is a directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a directory: pass a directory (a new one, "
                         f"or a run to resume)")
    _check_creatable(path, flag, path)
    for name in files:
        if (path / name).is_dir():
            raise UsageError(f"{flag} {path}: {path / name} is a directory where the run writes a file; "
                             f"remove it or pass another {flag}")
    if (path / "checkpoints").exists() and not (path / "checkpoints").is_dir():
        raise UsageError(f"{flag} {path}: {path / 'checkpoints'} is a file where checkpoints go; "
                         f"remove it or pass another {flag}")
    return path


def check_output_file(path, flag: str) -> Path:
    """A file about to be written: not a directory, not read-only, in a writable directory."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: name a file in it, e.g. {path / 'samples.png'}")
    if path.exists():
        try:
            with open(path, "ab"):  # opening to append changes nothing, but needs write permission
                pass
        except OSError as err:
            raise UsageError(f"{flag} {path} cannot be overwritten ({err.strerror}); pass another "
                             f"{flag}") from None
    _check_creatable(path.parent, flag, path)
    return path


# ----------------------------------------------------------------------------- data

def check_data_fits(dataset: ImageDataset, config: reference.UNetConfig, flag: str = "--data") -> None:
    """The data can train a model of `config` (shape, labels, classes), or a DataError."""
    expected = (config.in_channels, config.image_size, config.image_size)
    if dataset.image_shape != expected:
        raise DataError(f"{flag} {dataset.source}: images are {dataset.image_shape}, the model takes {expected}")
    if config.num_classes is not None and dataset.labels is None:
        raise DataError(f"{flag} {dataset.source} has no labels but the model is class-conditional "
                        f"(num_classes={config.num_classes}); pass labelled data or (new runs) --unconditional")
    if config.num_classes is not None and dataset.num_classes > config.num_classes:
        raise DataError(f"{flag} {dataset.source} has {dataset.num_classes} classes, the model "
                        f"{config.num_classes}")


def data_changes(saved_config: dict, fingerprint: dict) -> list[str]:
    """How the data now differs from the data a checkpoint was trained on (its config.json
    "data" entry; a checkpoint from before fingerprints is compared by its count only)."""
    saved_data = saved_config.get("data") or {}
    saved = saved_data.get("fingerprint") or {"count": saved_data.get("size")}
    changes = []
    for key in ("count", "shape", "num_classes"):
        if saved.get(key) is not None and saved.get(key) != fingerprint[key]:
            changes.append(f"{key}: saved {saved[key]!r}, given {fingerprint[key]!r}")
    for key, what in (("items_sha256", "the images differ"), ("labels_sha256", "the labels differ")):
        if key in saved and saved[key] != fingerprint[key]:
            changes.append(what)
    if "items_sha256" in saved and saved.get("resize", "none") != fingerprint.get("resize", "none"):
        changes.append(f"resize: saved {saved.get('resize', 'none')!r}, given {fingerprint.get('resize', 'none')!r}")
    return changes
