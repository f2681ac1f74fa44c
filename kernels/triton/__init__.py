"""Triton kernels (each module names the reference function it implements).

Importing this package imports no kernel; kernel modules call `record_decoration()` before
decorating, so the dispatcher knows whether they were built for the interpreter.
"""

from __future__ import annotations

import os

_DECORATED_MODE: bool | None = None


def record_decoration() -> None:
    """Remember whether kernels are being decorated in interpreter mode (TRITON_INTERPRET=1)."""
    global _DECORATED_MODE
    if _DECORATED_MODE is None:
        _DECORATED_MODE = os.environ.get("TRITON_INTERPRET", "0") == "1"


def decorated_mode() -> bool | None:
    """None before any kernel module was imported, else whether they run in the interpreter."""
    return _DECORATED_MODE
