"""Sampler suite (filled in below once the fast sampler exists)."""


def run(report, *, device, quick, dtypes, compile_peers):
    report.skip("sampler", "not written yet")
