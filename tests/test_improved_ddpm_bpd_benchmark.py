"""benchmarks.improved_ddpm_bpd: the data it evaluates is on the 8-bit grid, and a tiny run of
each objective writes a JSON row that the report reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")

from benchmarks import improved_ddpm_bpd as bench  # noqa: E402
import reference  # noqa: E402


def test_digits_are_put_on_the_8bit_grid_and_split():
    train, held_out = bench.digits_8bit()
    assert train.shape == (1797 - bench.HELD_OUT, 1, 8, 8) and held_out.shape == (bench.HELD_OUT, 1, 8, 8)
    reference.check_8bit_grid(held_out.double().numpy())
    levels = np.unique(np.round((held_out.double().numpy() + 1) * 127.5))
    assert levels.min() == 0 and levels.max() == 255 and len(levels) <= 17  # the 17 original levels


@pytest.mark.parametrize("objective", ["simple", "vlb"])
def test_a_tiny_run_writes_a_row_the_report_reads(tmp_path, objective, capsys):
    bench.main(["--objective", objective, "--steps", "3", "--T", "4", "--batch-size", "64", "--out", str(tmp_path)])
    row = json.loads((tmp_path / f"{objective}.json").read_text())
    assert row["steps"] == 3 and row["T"] == 4
    evaluated = {"simple": {"fixed_small", "fixed_large"}, "vlb": {"learned"}}[objective]
    assert set(row["bpd"]) == evaluated and all(np.isfinite(b["mean"]) for b in row["bpd"].values())
    if objective == "vlb":  # 192 draws over T = 4: every t has its 10 values after the first steps
        assert row["importance_warmed_up"] is True
    capsys.readouterr()
    bench.main(["--report", str(tmp_path)])
    assert f"| {objective} (" in capsys.readouterr().out
