"""One comparison helper for the whole suite (Liger-style verbose allclose)."""

from __future__ import annotations

import numpy as np


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach()
        if str(a.dtype) in ("torch.bfloat16", "torch.float16"):
            a = a.float()
        a = a.cpu().numpy()
    return np.asarray(a)


def assert_close(actual, expected, *, atol: float, rtol: float, name: str = "value",
                 max_report: int = 5) -> None:
    """Assert |actual - expected| <= atol + rtol |expected| elementwise.

    NaN/inf must match exactly in position and value; the message gives the count of
    mismatches, the worst error and the first few indices with both values.
    """
    a = _to_numpy(actual).astype(np.float64)
    e = _to_numpy(expected).astype(np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    finite = np.isfinite(e)
    nonfinite_bad = ~finite & ~((a == e) | (np.isnan(a) & np.isnan(e)))
    with np.errstate(invalid="ignore"):
        err = np.abs(a - e)
        bad = finite & ~(err <= atol + rtol * np.abs(e))
    bad |= nonfinite_bad
    if bad.any():
        idx = np.argwhere(bad)[:max_report]
        lines = [f"  at {tuple(int(i) for i in ix)}: got {a[tuple(ix)]!r}, expected {e[tuple(ix)]!r}"
                 for ix in idx]
        worst = np.nanmax(np.where(finite, err, 0.0))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} elements differ beyond atol={atol}, rtol={rtol} "
            f"(max abs err {worst:.3e})\n" + "\n".join(lines)
        )


def rel_error(a, b) -> float:
    """max |a - b| / max(max |b|, tiny): the relative error figure reported in notes."""
    a = _to_numpy(a).astype(np.float64)
    b = _to_numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6, indices=None) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. the float64 array x, modified in place.

    indices: None for every entry, or an iterable of flat indices (a random subset for big x);
    entries not visited are returned as NaN. Error of the estimate is O(eps^2 f''') + O(u f / eps).
    """
    grad = np.full(x.shape, np.nan)
    flat = x.reshape(-1)  # a view: x must be contiguous
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous")
    gflat = grad.reshape(-1)
    for i in (range(flat.size) if indices is None else indices):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def check_gradient(f, x: np.ndarray, analytic: np.ndarray, *, eps: float = 1e-6, rtol: float = 1e-7,
                   name: str = "grad", indices=None) -> float:
    """Compare an analytic gradient with central differences; returns the relative error.

    Relative error = max |a - n| / max(max |n|, 1e-12) over the visited entries.
    """
    num = numerical_gradient(f, x, eps, indices)
    mask = ~np.isnan(num)
    a, n = np.asarray(analytic, dtype=np.float64)[mask], num[mask]
    assert n.size, f"{name}: no entries were checked (empty x or indices)"
    err = float(np.max(np.abs(a - n)) / max(np.max(np.abs(n)), 1e-12))
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"
    return err


def randomize_(model, seed: int = 0, scale: float = 0.5):
    """Give every parameter of a torch module random values in place (no zero, no constant).

    Weights get N(0, scale^2 / fan_in) (fan_in = numel / out_features), biases and GroupNorm
    shifts N(0, (scale / 2)^2), GroupNorm scales 1 + N(0, 0.3^2): the net's output then depends on
    every input (x_t, t, y) and every parameter, which a zero-initialised output layer hides.
    Returns the model.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.3 * noise
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                value = noise * scale / fan_in ** 0.5
            else:
                value = noise * scale / 2
            p.copy_(value.to(p.dtype))
    return model


def in_ci() -> bool:
    """True under CI (.ci/run exports CI=true; so do GitHub Actions and most CI services)."""
    import os

    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_unless_available(available: bool, reason: str) -> None:
    """pytest.skip(reason) outside CI; in CI, where everything the suite needs is installed and
    the shared data sits beside the clone, a missing piece is a FAILURE (a silent skip there
    would hide that the tests never ran)."""
    import pytest

    if available:
        return
    if in_ci():
        pytest.fail(f"CI must run this test, but {reason}", pytrace=False)
    pytest.skip(reason)


def mnist_dir():
    """The real MNIST test split: $DDPM_MNIST_DIR, else ../shared/data/mnist beside the project
    root (where CI puts shared/ next to the fresh clone), else shared/data/mnist inside it.
    Returns the first folder holding t10k-images-idx3-ubyte.gz, or None."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("DDPM_MNIST_DIR"), root.parent / "shared" / "data" / "mnist",
                  root / "shared" / "data" / "mnist"]
    for c in candidates:
        if c and (Path(c) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(c)
    return None
