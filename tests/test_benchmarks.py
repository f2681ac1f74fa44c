"""`python -m benchmarks` end to end at tiny sizes (the CI smoke run), and its output formats."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import kernels
from benchmarks.harness import Report, Row

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_writes_json_and_markdown(tmp_path):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-compile", "--device", "cpu",
         "--json", str(out_json), "--md", str(out_md)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    for key in ("device", "torch", "triton", "commit", "date", "device_name"):
        assert key in report["env"], key
    assert report["command"].startswith("python -m benchmarks --quick")
    suites = {r["suite"] for r in report["rows"]}
    assert suites == {"kernels", "sampler", "training", "cpu", "cpu-vs-diffusers"}
    for row in report["rows"]:
        assert row["times"], row
        assert all(t > 0 for t in row["times"].values()), row
    md = out_md.read_text()
    assert "## kernels" in md and "## cpu" in md and "| case |" in md
    kernel_rows = [r for r in report["rows"] if r["suite"] == "kernels"]
    assert all("copy" in r["times"] and r["bytes_moved"] > 0 for r in kernel_rows)
    # one name per op: every kernel row is named after the op it times (kernels/README.md table)
    ops = {r["case"].split("-")[0] for r in kernel_rows}
    assert ops == set(kernels.OPS), ops


def test_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_markdown_ratios_and_chart(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.chart import bandwidth_chart

    report = Report(env=dict(date="2026-01-01T00:00:00", commit="abc", torch="x", triton="y", cupy=None,
                             diffusers=None, numpy="z", python="3", device="cuda", device_name="GPU"),
                    command="python -m benchmarks")
    for numel in (2**16, 2**18):
        report.add(Row("kernels", "q_sample-sweep", dict(dtype="fp32"),
                       times={"triton": 1e-5, "torch-eager": 4e-5, "copy": 8e-6}, bytes_moved=12 * numel))
    md = report.markdown()
    assert "4.00x" in md          # torch-eager / ours
    assert "80%" in md            # ours at 80% of the copy bandwidth
    path = bandwidth_chart(report.to_json(), tmp_path / "chart.png")
    assert path is not None and path.stat().st_size > 1000


def test_launch_bound_rows_show_no_bandwidth():
    report = Report(env=dict(date="2026-01-01T00:00:00", commit="abc", torch="x", triton="y", cupy=None,
                             diffusers=None, numpy="z", python="3", device="cuda", device_name="GPU"),
                    command="python -m benchmarks")
    row = report.add(Row("kernels", "q_sample", dict(dtype="fp32"),
                         times={"triton": 3e-6, "torch-eager": 9e-6, "copy": 2.5e-6}, bytes_moved=3 * 2**20))
    row.launch_bound = True
    md = report.markdown()
    assert "launch-bound" in md and row.gbps("triton") is None
    assert "3.00x" in md  # the ratio against the peers stays


def test_mark_launch_bound_uses_the_same_run_floor(monkeypatch):
    from benchmarks import harness

    monkeypatch.setitem(harness._LAUNCH_FLOOR, "cuda", 2e-6)
    small = Row("kernels", "normal", {}, times={"triton": 3e-6, "copy": 2.5e-6}, bytes_moved=1)
    big = Row("kernels", "normal", {}, times={"triton": 3e-4, "copy": 2.5e-4}, bytes_moved=1)
    harness.mark_launch_bound(small, "cuda")
    harness.mark_launch_bound(big, "cuda")
    assert small.launch_bound and "launch-bound" in small.notes
    assert not big.launch_bound


def test_gpu_check_script_parses_and_its_memcheck_workload_runs_here():
    """benchmarks/gpu_check.sh is checked end to end with --dry by hand (~90 s); here: bash
    syntax, and the sanitizer's workload on the backends that run on this machine."""
    import shutil

    import torch

    import kernels
    from benchmarks.memcheck_kernels import run_all

    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
    device = torch.device("cpu")
    assert run_all(device, kernels.available_backends(device))
