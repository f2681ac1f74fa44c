"""Suite-wide setup: the Triton interpreter on machines without CUDA, hypothesis profiles, and
what CI must have (no silent skips there).

Hypothesis profiles (pick one with HYPOTHESIS_PROFILE=<name> or pytest's
`--hypothesis-profile <name>`):

- "ci" (the default of a plain `pytest`): derandomized, so every run tries the same examples
  (a fixed table of cases, reproducible); max_examples 25 where a test does not set its own.
- "random": derandomize OFF, otherwise as "ci" (each run draws new examples; same run time).
- "thorough": derandomize OFF and many more examples: max_examples 200 by default and every
  test's own `@settings(max_examples=n)` multiplied by HYPOTHESIS_EXAMPLES_SCALE (default 8).
  The @given tests take ~60 s under it on 2 CPU cores (~20 s under "ci"), so CI runs it
  (.ci/run exports HYPOTHESIS_PROFILE=thorough):

      HYPOTHESIS_PROFILE=thorough pytest -q -m hypothesis   (pytest's hypothesis plugin marks @given tests)

A failure prints the `@reproduce_failure` blob and is saved in .hypothesis/ (replayed first on
the next run).
"""

import importlib.util
import os

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before any
# kernels module is imported. Without CUDA, every Triton kernel runs in the interpreter.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True,
                          suppress_health_check=_SUPPRESS)
settings.register_profile("random", derandomize=False, deadline=None, max_examples=25, print_blob=True,
                          suppress_health_check=_SUPPRESS)
settings.register_profile("thorough", derandomize=False, deadline=None, max_examples=200, print_blob=True,
                          suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The optional extras that CI installs (`pip install -e ".[test,diffusers]"`): tests that need
# them skip on a developer machine without them, but in CI a missing extra is an error.
CI_REQUIRED_MODULES = ("diffusers", "matplotlib", "hypothesis", "threadpoolctl")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    if _in_ci():
        missing = [m for m in CI_REQUIRED_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise pytest.UsageError(
                f"CI=true but {missing} cannot be imported: CI installs the '[test,diffusers]' extras "
                f"and must run the tests that need them, not skip them")


def pytest_collection_modifyitems(config, items):
    scale = None
    if settings.default.max_examples >= 200 and not settings.default.derandomize:  # "thorough"
        scale = int(os.environ.get("HYPOTHESIS_EXAMPLES_SCALE", "8"))
    done = set()  # parametrized items share one function: scale it once
    for item in items:
        fn = getattr(item, "obj", None)
        if not getattr(fn, "is_hypothesis_test", False) or id(fn) in done:
            continue
        done.add(id(fn))
        own = getattr(fn, "_hypothesis_internal_use_settings", None)
        if scale and own is not None and own.max_examples != settings.default.max_examples:
            # a test's own max_examples (chosen for the interpreter's speed) times the scale,
            # derandomize off; hypothesis reads this attribute when the test runs
            fn._hypothesis_internal_use_settings = settings(own, max_examples=own.max_examples * scale,
                                                            derandomize=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, a test skipped because a required extra or the shared MNIST data is missing
    (pytest.importorskip('diffusers'), a skip naming them) is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if not (_in_ci() and report.skipped and call.excinfo is not None):
        return
    reason = str(call.excinfo.value)
    if any(name in reason for name in CI_REQUIRED_MODULES) or "MNIST" in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {reason}"
