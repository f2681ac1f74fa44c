"""Build a C++ source into a shared library once, cache it on disk, load it with ctypes.

Threads: the libraries are built with -fopenmp and, through the rpath to torch/lib, run on the
libgomp.so.1 torch itself loaded, so a parallel loop uses the workers torch already has (its own
threads would compete with those workers while they spin after torch's last op: on 2 cores the
q_sample call then took the time of one thread, 2x the CPU).

Why not torch.utils.cpp_extension: its sources include <torch/extension.h> (all of ATen and
pybind11), about a minute of compiling on a two-core CI machine; these kernels need none of it.
A plain `c++ -O3 -shared` of a few hundred lines takes seconds, and ctypes releases the GIL
around the call.

- The compiler is $CXX, else `c++`, else `g++`; no compiler, a failed build or a failed load is
  one warning per library and process, and the caller's pure-torch code runs instead.
- The library lives in $DDPM_CACHE/cpu-kernels (default ~/.cache/ddpm/cpu-kernels), named by a
  hash of the source, the flags, the compiler's version line and torch's version and library
  folder, so an edit, another compiler or another torch builds a new one. It is written under a
  temporary name and renamed into place: concurrent processes (DDP workers, pytest-xdist) never
  load a half-written file.
- DDPM_KERNELS_CPU_NATIVE=0 skips the native code (no warning): the pure-torch path, for tests
  and for comparing the two.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["NATIVE_ENV", "native_enabled", "scalar_only", "cache_dir", "compiler", "load_library",
           "load_typed_library", "clear_cache"]

NATIVE_ENV = "DDPM_KERNELS_CPU_NATIVE"
BUILD_TIMEOUT_S = 300

_LOCK = threading.Lock()
_LOADED: dict[str, ctypes.CDLL | None] = {}  # library name -> loaded library, or None (failed)


def native_enabled() -> bool:
    """False when DDPM_KERNELS_CPU_NATIVE is set to 0/false/off (read at every call, so tests
    can switch paths with monkeypatch.setenv)."""
    return os.environ.get(NATIVE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def scalar_only() -> bool:
    """DDPM_KERNELS_CPU_NATIVE=scalar: keep the libraries but skip their AVX2 code (the path of
    CPUs without AVX2), so both instruction sets are testable on one machine."""
    return os.environ.get(NATIVE_ENV, "").strip().lower() == "scalar"


def cache_dir() -> Path:
    """$DDPM_CACHE/cpu-kernels, else ~/.cache/ddpm/cpu-kernels."""
    root = os.environ.get("DDPM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ddpm")
    return Path(root) / "cpu-kernels"


def compiler() -> str | None:
    """The C++ compiler to use: $CXX if set (None if it is not found), else c++ or g++."""
    chosen = os.environ.get("CXX")
    if chosen:
        return shutil.which(chosen)
    return shutil.which("c++") or shutil.which("g++")


def _torch_lib_dir() -> str:
    return str(Path(torch.__file__).resolve().parent / "lib")


def _build(name: str, source: str, flags: list[str], libraries: list[str]) -> Path:
    """Compile `source` into cache_dir()/<name>-<hash>.so unless it is there; return its path."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError(f"no C++ compiler found ({'$CXX=' + os.environ['CXX'] if os.environ.get('CXX') else 'c++ or g++'})")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    lib_dir = _torch_lib_dir()
    link = [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}"] + [f"-l{lib}" for lib in libraries]
    key = "\n".join([source, " ".join(flags + link), version.splitlines()[0] if version else cxx,
                     torch.__version__])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{digest}.so"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}-build-") as tmp:
        src = Path(tmp) / f"{name}.cpp"
        src.write_text(source)
        out = Path(tmp) / f"{name}.so"
        cmd = [cxx, *flags, str(src), "-o", str(out), *link]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:300])
            raise RuntimeError(f"{os.path.basename(cxx)} failed: {first}")
        os.replace(out, target)  # atomic: another process sees the old state or the whole file
    return target


def load_library(name: str, source: str, flags: list[str], libraries: list[str] = ()) -> ctypes.CDLL | None:
    """The compiled library `name`, built on first use; None (after one warning) if it cannot be
    built or loaded, and None without a warning when DDPM_KERNELS_CPU_NATIVE=0."""
    if not native_enabled():
        return None
    if name in _LOADED:  # the common case, without the lock
        return _LOADED[name]
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        try:
            _LOADED[name] = ctypes.CDLL(str(_build(name, source, list(flags), list(libraries))))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _LOADED[name] = None
            warnings.warn(f"kernels: the compiled CPU library {name!r} is unavailable ({exc}); using "
                          f"the pure-torch code instead (slower; set {NATIVE_ENV}=0 to silence this)",
                          RuntimeWarning, stacklevel=3)
        return _LOADED[name]


_SOURCES: dict[Path, str] = {}  # source file -> its text, read once per process


def load_typed_library(name: str, source_path: Path, flags: list[str], libraries: list[str],
                       signatures: dict[str, tuple[list, object]]) -> ctypes.CDLL | None:
    """load_library of source_path's text, with each function's ctypes argtypes/restype set
    from `signatures` (name -> (argtypes, restype)) once; None as load_library."""
    if not native_enabled():
        return None
    if source_path not in _SOURCES:
        _SOURCES[source_path] = source_path.read_text()
    lib = load_library(name, _SOURCES[source_path], flags, libraries)
    if lib is not None and not getattr(lib, "_ddpm_typed", False):
        for fn_name, (args, result) in signatures.items():
            fn = getattr(lib, fn_name)
            fn.argtypes, fn.restype = args, result
        lib._ddpm_typed = True
    return lib


def clear_cache() -> None:
    """Forget the libraries loaded (or failed) in this process: the next use builds/loads again
    (for tests that change the compiler or the cache folder)."""
    with _LOCK:
        _LOADED.clear()
