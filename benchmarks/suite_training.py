"""Sampler suite (filled in below once the fast sampler exists)."""


def run(report, *, device, quick, dtypes, compile_peers):
    report.skip("training", "not written yet")
