"""Checkpoints: one directory per save, written atomically, verified on load.

    RUN_DIR/
      latest                       name of the newest complete checkpoint (replaced atomically)
      checkpoints/step_00001000/
        model.safetensors          the trained weights (names = reference.parameter_shapes)
        ema.safetensors            the EMA weights, same names (load them into a UNet directly)
        config.json                UNet config, schedule, training config, step
        trainer_state.pt           optimizer, step counters, RNG states, data position, losses
        COMPLETE.json              written last: size and SHA-256 of every file above

A save writes everything into a hidden temporary directory, fsyncs it, writes the marker, then
`os.replace`s the directory into place and only then moves `latest`. A save that fails half-way
leaves the previous checkpoint untouched and `latest` pointing at it. Loading checks the marker,
each file's size and hash, the JSON, the safetensors headers and every parameter's name and shape,
and says which file is wrong and how.

A failed write (disk full, permission) is one CheckpointError line. What interrupted saves leave
behind is removed at the next save (and when ddpm.runs resumes the run): see ddpm.run_dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import reference

from .run_dir import (  # noqa: F401  (MARKER, CHECKPOINTS, LATEST and _complete_checkpoints: tests)
    CHECKPOINTS,
    LATEST,
    MARKER,
    _complete_checkpoints,
    _remove_checkpoint,
    latest_checkpoint,
    one_line,
    remove_leftovers,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "checkpoint_config",
    "schedule_to_dict",
    "schedule_from_dict",
    "check_state_dict",
    "capture_rng_states",
    "restore_rng_states",
    "remove_leftovers",
    "check_trainer_state",
]


FORMAT = "ddpm-checkpoint"
VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "config.json", "trainer_state.pt")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or does not match the model."""


# ----------------------------------------------------------------------------- config helpers

def schedule_to_dict(schedule: reference.Schedule) -> dict:
    """JSON form of a schedule: kind, T, params, and the float64 betas (repr round-trips)."""
    if not isinstance(schedule, reference.Schedule):
        raise TypeError(f"schedule must be a reference.Schedule, got {type(schedule).__name__}")
    params = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dict(schedule.params).items()}
    return {"kind": schedule.kind, "T": schedule.T, "params": params,
            "betas": [float(b) for b in schedule.betas]}


def schedule_from_dict(d: dict) -> reference.Schedule:
    """Rebuild a schedule; a named kind is recomputed by `reference.make_schedule` and must give
    exactly the stored betas, anything else is rebuilt from the betas."""
    try:
        kind, T, betas = d["kind"], int(d["T"]), np.asarray(d["betas"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"schedule entry is malformed ({err!r}): {str(d)[:200]}") from None
    if betas.shape != (T,):
        raise CheckpointError(f"schedule betas have shape {betas.shape}, expected ({T},)")
    if kind in reference.SCHEDULE_KINDS:
        schedule = reference.make_schedule(kind, T, **d.get("params", {}))
        if not np.array_equal(schedule.betas, betas):
            raise CheckpointError(f"schedule {kind!r} T={T} recomputes to different betas than stored")
        return schedule
    return reference.Schedule.from_betas(betas)


# what a checkpoint holds: the denoiser UNet (no "model" key in config.json, as before) or the
# noise-aware classifier of classifier guidance (reference.Classifier's names)
MODEL_KINDS = ("unet", "classifier")


def model_parameter_shapes(config: reference.UNetConfig, kind: str = "unet"):
    """name -> shape of the parameters of a `kind` model of `config`."""
    if kind == "classifier":
        return reference.classifier_parameter_shapes(config)
    return reference.parameter_shapes(config)


def checkpoint_config(unet_config: reference.UNetConfig, schedule: reference.Schedule, *,
                      training: dict | None = None, data: dict | None = None, step: int = 0,
                      model: str = "unet") -> dict:
    """The config.json content for a model of `unet_config` trained on `schedule` (`model`: one
    of MODEL_KINDS; "classifier" is recorded as "model", the UNet's config.json is unchanged)."""
    if not isinstance(unet_config, reference.UNetConfig):
        raise TypeError(f"unet_config must be a reference.UNetConfig, got {type(unet_config).__name__}")
    if model not in MODEL_KINDS:
        raise ValueError(f"model must be one of {MODEL_KINDS}, got {model!r}")
    config = {"format": FORMAT, "version": VERSION, "step": int(step), "unet": unet_config.to_dict(),
              "schedule": schedule_to_dict(schedule), "training": dict(training or {}),
              "data": dict(data or {})}
    return config if model == "unet" else {**config, "model": model}


def check_state_dict(state: dict, config: reference.UNetConfig, what: str = "state dict",
                     kind: str = "unet") -> None:
    """Raise CheckpointError unless `state` has exactly the parameters of `config` (a `kind` model).

    The names are the reference's check; its ValueError becomes a CheckpointError so that a
    caller can tell a bad checkpoint from a bad argument.
    """
    try:
        reference.check_parameter_names(model_parameter_shapes(config, kind), state, what)
    except ValueError as error:
        raise CheckpointError(str(error)) from None


# ----------------------------------------------------------------------------- RNG states

def capture_rng_states() -> dict:
    """Global RNG states of torch (CPU and every CUDA device), NumPy's legacy generator, Python."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }


def restore_rng_states(states: dict) -> None:
    """Inverse of `capture_rng_states` (CUDA states only where the device count matches)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = states["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- saving

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself survives a power cut
    finally:
        if tmp.exists():
            tmp.unlink()


def _tensors_for_file(state: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state entry {name!r} must be a tensor, got {type(value).__name__}")
        out[name] = value.detach().to("cpu").contiguous().clone()
    return out


def _save_files(tmp: Path, step: int, *, model_state, ema_state, config, trainer_state) -> None:
    """Every file of a checkpoint into `tmp`, fsynced, the marker last."""
    meta = {"format": FORMAT, "step": str(step)}
    save_file(_tensors_for_file(model_state), tmp / "model.safetensors", metadata=meta)
    save_file(_tensors_for_file(ema_state), tmp / "ema.safetensors", metadata=meta)
    (tmp / "config.json").write_text(json.dumps({**config, "step": step}, indent=2, sort_keys=True))
    torch.save(trainer_state, tmp / "trainer_state.pt")
    files = {}
    for fname in FILES:
        _fsync(tmp / fname)
        files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
    marker = json.dumps({"format": FORMAT, "version": VERSION, "step": step, "files": files}, indent=2)
    with open(tmp / MARKER, "w") as f:  # the marker is written last: its presence means complete
        f.write(marker)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)


def _move_into_place(tmp: Path, final: Path) -> None:
    root = final.parent
    if final.exists():  # re-saving a step: move the old one aside first (never half-replaced)
        trash = root / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(trash, final)  # put the complete old one back
            raise
        _remove_checkpoint(trash)
    else:
        os.replace(tmp, final)
    _fsync(root)


def _save_failed(run_dir: Path, step: int, err: BaseException) -> CheckpointError:
    """A failed write (disk full, permission, quota) as one line that says what is still there."""
    previous = latest_checkpoint(run_dir)
    kept = f"{previous} stays the latest checkpoint" if previous else "no earlier checkpoint exists"
    reason = one_line(err)
    if not isinstance(err, OSError):  # torch's zip writer and safetensors hide the errno
        try:
            reason = f"{reason} ({shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free on that disk)"
        except OSError:
            pass
    return CheckpointError(f"cannot save checkpoint step {step} in {run_dir}: {reason}; {kept}")


def save_checkpoint(run_dir, step: int, *, model_state: dict, ema_state: dict, config: dict,
                    trainer_state: dict, keep_last: int | None = None) -> Path:
    """Write checkpoint `step` under `run_dir` atomically and point `latest` at it.

    model_state / ema_state: name -> tensor (saved as float tensors by safetensors);
    config: JSON-serialisable (see `checkpoint_config`); trainer_state: what `torch.save` stores
    (loaded back with weights_only=True, so tensors, numbers, strings and containers only).
    keep_last: delete all but the newest `keep_last` complete checkpoints after a save.
    Returns the checkpoint directory. A write that fails (disk full, permission) removes what it
    wrote and raises a CheckpointError; the previous checkpoint stays `latest`.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"keep_last must be None or a positive int, got {keep_last!r}")
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    name = f"step_{step:08d}"
    final = root / name
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(run_dir)
        tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()  # inside the try: a failure from here on removes it
        _save_files(tmp, step, model_state=model_state, ema_state=ema_state, config=config,
                    trainer_state=trainer_state)
        _move_into_place(tmp, final)
        _write_text_atomic(run_dir / LATEST, f"{CHECKPOINTS}/{name}\n")
    except (OSError, RuntimeError, SafetensorError) as err:  # the writers' I/O errors
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _save_failed(run_dir, step, err) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        for old in _complete_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                _remove_checkpoint(old)
    return final


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} must be a directory (a run or a checkpoint directory)")
    if any((path / f).exists() for f in FILES + (MARKER,)):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path} holds no complete checkpoint (no {MARKER} under {path / CHECKPOINTS})")
    return found


def _verify(path: Path) -> dict:
    marker_path = path / MARKER
    if not marker_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: the marker {MARKER} is missing "
                              f"(the save did not finish)")
    try:
        marker = json.loads(marker_path.read_text())
        files = marker["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{marker_path} is corrupt: {err}") from None
    if marker.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} (format {marker.get('format')!r})")
    for fname in FILES:
        fpath = path / fname
        if fname not in files:
            raise CheckpointError(f"{marker_path} does not list {fname}")
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {fname}")
        size, expected = fpath.stat().st_size, files[fname]["bytes"]
        if size != expected:
            raise CheckpointError(f"{fpath} is truncated or altered: {size} bytes, the marker "
                                  f"records {expected}")
        if _sha256(fpath) != files[fname]["sha256"]:
            raise CheckpointError(f"{fpath} is corrupt: its SHA-256 differs from the one recorded "
                                  f"when it was written")
    return marker


def _read_safetensors(fpath: Path, map_location) -> dict[str, torch.Tensor]:
    try:
        return load_file(fpath, device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{fpath} is not a readable safetensors file: {err}") from None


# the trainer state's entries and their types (ddpm.train.Trainer.trainer_state writes them)
TRAINER_STATE_TYPES = {
    "step": int, "optimizer_steps": int, "skipped_steps": int, "consecutive_nonfinite": int,
    "optimizer": dict, "ema_num_updates": int, "generator": torch.Tensor, "sampler": dict,
    "rng": dict, "history": dict,
}


def check_trainer_state(state, fpath, unet_config: reference.UNetConfig | None = None,
                        kind: str = "unet") -> None:
    """Raise CheckpointError (one line naming `fpath`) unless `state` has every entry a Trainer
    restores, of the right type, with one optimizer slot per parameter of `unet_config`."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{fpath} holds a {type(state).__name__}, not a trainer state (a dict)")
    missing = [k for k in TRAINER_STATE_TYPES if k not in state]
    if missing:
        raise CheckpointError(f"{fpath} lacks the trainer state entries {missing}: it was not written "
                              f"by this library's Trainer, or was altered")
    wrong = [f"{k} is {type(state[k]).__name__}, expected {t.__name__}" for k, t in TRAINER_STATE_TYPES.items()
             if not isinstance(state[k], t) or (t is int and isinstance(state[k], bool))]
    sampler, rng, opt = state["sampler"], state["rng"], state["optimizer"]
    if not wrong:
        wrong += [f"sampler lacks {k}" for k in ("n", "seed", "position") if k not in sampler]
        wrong += [f"rng lacks {k}" for k in ("torch", "numpy", "python") if k not in rng]
        wrong += [f"optimizer lacks {k}" for k in ("state", "param_groups") if k not in opt]
    if not wrong and unet_config is not None:
        slots = sum(len(g.get("params", ())) for g in opt["param_groups"] if isinstance(g, dict))
        expected = len(model_parameter_shapes(unet_config, kind))
        if slots != expected:
            wrong.append(f"the optimizer state covers {slots} parameters, the model has {expected}")
    if wrong:
        raise CheckpointError(f"{fpath} is not a valid trainer state: {'; '.join(wrong)}")


def _unpickler_reason(err: BaseException) -> str:
    """The one sentence of torch's weights_only error that says what it met."""
    text = one_line(err)
    reason = text.split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0].strip()
    return reason.split(". Please use")[0][:200]


def _read_trainer_state(fpath: Path, map_location, unet_config, kind: str = "unet") -> dict:
    try:
        state = torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if "Unsupported global" in reason:  # a planted object: refused, never run
            raise CheckpointError(f"{fpath} holds objects that safe loading (weights_only=True) "
                                  f"refuses ({reason}); it was not written by this library") from None
        raise CheckpointError(f"{fpath} cannot be read: {reason}") from None
    except Exception as err:  # torch raises RuntimeError/EOFError/... for a bad zip
        raise CheckpointError(f"{fpath} cannot be read: {one_line(err)[:300]}") from None
    check_trainer_state(state, fpath, unet_config, kind)
    return state


@dataclass
class Checkpoint:
    """A loaded checkpoint. `schedule` is the reference (float64) schedule trained on."""

    path: Path
    step: int
    config: dict
    unet_config: reference.UNetConfig
    schedule: reference.Schedule
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor]
    trainer_state: dict | None = field(default=None, repr=False)

    def state_dict(self, ema: bool = False) -> dict[str, torch.Tensor]:
        return self.ema_state if ema else self.model_state

    @property
    def model_kind(self) -> str:
        """"unet" (the denoiser) or "classifier" (MODEL_KINDS)."""
        return self.config.get("model", "unet")

    def check_compatible(self, unet_config: reference.UNetConfig,
                         schedule: reference.Schedule | None = None) -> None:
        """Raise CheckpointError naming every field where `unet_config` differs from this one's,
        or when `schedule` (if given) has other betas than the one trained on. The one
        comparison behind the resume policy (ddpm.runs.check_resume) and `Trainer.load`."""
        mine, theirs = self.unet_config.to_dict(), unet_config.to_dict()
        diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs.get(k)}
        if diff:
            raise CheckpointError(f"checkpoint {self.path} was trained with a different UNet config: "
                                  + ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}"
                                              for k, (a, b) in diff.items()))
        if schedule is not None and not np.array_equal(self.schedule.betas, schedule.betas):
            raise CheckpointError(f"checkpoint {self.path} was trained with schedule {self.schedule!r}, "
                                  f"requested {schedule!r}")


def load_checkpoint(path, *, map_location="cpu", verify: bool = True,
                    trainer_state: bool = True) -> Checkpoint:
    """Load a checkpoint directory, or a run directory's latest checkpoint.

    verify: check the marker's sizes and SHA-256 hashes before reading anything.
    Every problem is a CheckpointError (a ValueError) naming the file.
    """
    path = _resolve(Path(path))
    if verify:
        _verify(path)
    elif not (path / MARKER).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: the marker {MARKER} is missing")
    cfg_path = path / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a {FORMAT} config (format "
                              f"{config.get('format') if isinstance(config, dict) else type(config).__name__!r})")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{cfg_path} has format version {config.get('version')}, this library reads {VERSION}")
    if "unet" not in config and config.get("kind"):  # e.g. an autoencoder run (ddpm.autoencoder_train)
        raise CheckpointError(f"{path} holds a {config['kind']} checkpoint, not a UNet's")
    try:
        unet_config = reference.UNetConfig.from_dict(config["unet"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: invalid UNet config: {err}") from None
    kind = config.get("model", "unet")
    if kind not in MODEL_KINDS or (kind == "classifier" and unet_config.num_classes is None):
        raise CheckpointError(f"{cfg_path}: model must be one of {MODEL_KINDS} (a classifier with "
                              f"num_classes), got {kind!r}")
    schedule = schedule_from_dict(config.get("schedule", {}))
    model_state = _read_safetensors(path / "model.safetensors", map_location)
    ema_state = _read_safetensors(path / "ema.safetensors", map_location)
    check_state_dict(model_state, unet_config, f"{path / 'model.safetensors'}", kind)
    check_state_dict(ema_state, unet_config, f"{path / 'ema.safetensors'}", kind)
    state = (_read_trainer_state(path / "trainer_state.pt", map_location, unet_config, kind)
             if trainer_state else None)
    return Checkpoint(path, int(config.get("step", 0)), config, unet_config, schedule,
                      model_state, ema_state, state)
