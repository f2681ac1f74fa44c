"""One name per op: whoever searches for an op's name finds its reference, kernels, tests and
benchmark row (kernels/README.md, "One name per op")."""

from pathlib import Path

import pytest

import kernels
import reference

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("op", kernels.OPS)
def test_every_op_has_one_name_across_the_house(op):
    assert callable(getattr(reference, op)), f"reference.{op} is missing"
    assert callable(getattr(kernels, op)), f"kernels.{op} is missing"
    for folder in ("kernels", "kernels/triton", "kernels/cupy"):
        assert (ROOT / folder / f"{op}.py").is_file(), f"{folder}/{op}.py is missing"
    assert sorted(ROOT.glob(f"tests/test_{op}_*.py")), f"no tests/test_{op}_*.py"
    assert f'"{op}' in (ROOT / "benchmarks" / "suite_kernels.py").read_text(), f"no benchmark row {op}"
    rows = [line for line in (ROOT / "kernels" / "README.md").read_text().splitlines()
            if line.startswith(f"| `{op}` |") and f"kernels/{op}.py" in line]
    assert len(rows) == 1, f"kernels/README.md needs one table row for {op}"
    for path in (f"kernels/{op}.py", f"kernels/triton/{op}.py", f"kernels/cupy/{op}.py"):
        assert path in rows[0], f"the README row of {op} does not name {path}"


def test_no_op_keeps_an_old_name():
    """The names retired by the renaming must not come back as files or attributes."""
    for old in ("forward_process", "sampler_update", "group_norm", "noise", "group_norm_reduce"):
        assert not (ROOT / "kernels" / f"{old}.py").exists(), f"kernels/{old}.py is back"
    assert not hasattr(reference, "sampler_update")
    assert not hasattr(kernels, "ddpm_step") and not hasattr(kernels, "ddim_step")
