"""Timing, environment record and output formats shared by every benchmark suite.

A figure is only ever a ratio against peers measured in the same run (and, for bandwidth-bound
kernels, against a device-to-device copy of the same bytes in the same run).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Row", "Report", "environment", "bench", "git_commit", "compile_peer", "launch_floor",
           "mark_launch_bound", "LAUNCH_BOUND_FACTOR"]

# A row is launch-bound when our time, or the time of a device copy of the same bytes, is under
# this many times the launch floor (a 4-byte copy): its GB/s would measure the launch, not memory.
LAUNCH_BOUND_FACTOR = 2.0


def git_commit() -> str:
    """The commit of the working tree ('+dirty' when it has uncommitted changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def environment(device: str) -> dict:
    """Device name, library versions, commit and date: the header of every result file."""
    import torch

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "triton": _version("triton"),
        "cupy": _version("cupy"),
        "diffusers": _version("diffusers"),
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env["device_name"] = props.name
        env["sm_count"] = props.multi_processor_count
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["torch_threads"] = torch.get_num_threads()
    return env


def bench(fn: Callable[[], object], device: str, *, warmup: int = 3, repeat: int = 20,
          min_time_s: float = 0.0) -> float:
    """Median seconds per call of fn().

    CUDA: calls under ~5 ms (kernels) go to triton.testing.do_bench, which flushes L2 between
    calls and takes its warm-up and measuring budgets in milliseconds (25 ms and 40x the call,
    at least 100 ms); longer calls (a sampling run, a training step) are timed with CUDA events
    over `repeat` calls after `warmup` calls, and at least `min_time_s` seconds.
    CPU: time.perf_counter around each call, at least `repeat` calls and `min_time_s` seconds.
    """
    if device.startswith("cuda"):
        import torch

        def event_time() -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        fn()  # compile / autotune outside any measurement
        torch.cuda.synchronize()
        probe = event_time()
        if probe < 5e-3:
            try:
                from triton.testing import do_bench

                ms = do_bench(fn, warmup=25, rep=max(100, int(40 * probe * 1e3)), return_mode="median")
                return float(ms) / 1e3
            except ImportError:
                pass
        for _ in range(warmup):
            fn()
        times: list[float] = []
        begin = time.perf_counter()
        while len(times) < repeat or time.perf_counter() - begin < min_time_s:
            times.append(event_time())
        return statistics.median(times)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - begin < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_LAUNCH_FLOOR: dict[str, float] = {}


def launch_floor(device: str, repeat: int = 20) -> float:
    """Seconds of the smallest device operation (a 4-byte copy), measured once per device and run."""
    if device not in _LAUNCH_FLOOR:
        import torch

        src = torch.zeros(1, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        _LAUNCH_FLOOR[device] = bench(lambda: dst.copy_(src), device, repeat=repeat)
    return _LAUNCH_FLOOR[device]


def mark_launch_bound(row: "Row", device: str, ours: str | None = None) -> None:
    """Set row.launch_bound when our time (the first implementation's, or `ours`) or the copy's
    is within LAUNCH_BOUND_FACTOR of the launch floor; say so in the notes."""
    floor = launch_floor(device)
    first = ours or next((k for k in row.times if k != "copy"), None)
    times = [row.times[k] for k in (first, "copy") if k in row.times]
    if times and min(times) < LAUNCH_BOUND_FACTOR * floor:
        row.launch_bound = True
        note = f"launch-bound (launch floor {floor * 1e6:.1f} us): no GB/s"
        row.notes = f"{row.notes}; {note}" if row.notes else note


def compile_peer(fn, example_args: tuple, report: "Report", what: str):
    """torch.compile(fn) for ONE shape/dtype variant, compiled now, or None (reported).

    Dynamo's caches are reset first: every variant of a suite shares fn's code object, and past
    the recompile limit (8) torch silently runs the function eagerly, so the "torch-compile"
    rows would be eager timings. The compile happens here, outside the timing, with the example
    arguments; a failure is reported as a failed compile instead of surfacing lazily (or being
    timed as eager)."""
    import torch

    try:
        torch._dynamo.reset()
        try:  # the benchmarks time backward with retain_graph=True: no donated buffers
            torch._functorch.config.donated_buffer = False
        except AttributeError:
            pass
        compiled = torch.compile(fn, dynamic=False)
        compiled(*example_args)
    except Exception as exc:  # noqa: BLE001 - no toolchain, an unsupported op, ...
        report.skip(f"torch-compile peer of {what}",
                    f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        return None
    return compiled


@dataclass
class Row:
    """One measured case: its parameters, and one time (seconds) per implementation."""

    suite: str
    case: str
    params: dict
    times: dict[str, float] = field(default_factory=dict)
    bytes_moved: int | None = None      # the fewest bytes the op must move (read + write)
    items: int | None = None            # e.g. images per call, for throughput rows
    notes: str = ""
    launch_bound: bool = False          # too small to measure bandwidth: no GB/s is reported

    def gbps(self, impl: str) -> float | None:
        t = self.times.get(impl)
        if t is None or self.bytes_moved is None or self.launch_bound:
            return None
        return self.bytes_moved / t / 1e9


@dataclass
class Report:
    env: dict
    command: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    autosave: str | None = None   # rewrite this JSON after every row (a run killed keeps its rows)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self._autosave()
        return row

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")
        self._autosave()

    def _autosave(self) -> None:
        if self.autosave:
            self.write_json(self.autosave)

    def to_json(self) -> dict:
        return {"env": self.env, "command": self.command,
                "rows": [asdict(r) for r in self.rows], "skipped": self.skipped}

    def write_json(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)  # never a half-written result file

    def finish(self, json_path: str | None, md_path: str | None) -> str:
        """A standalone benchmark's ending: the load average now, the markdown printed and
        written to md_path, the JSON to json_path (either may be None); returns the markdown."""
        self.env["load_average_end"] = os.getloadavg()
        md = self.markdown()
        print(md)
        if json_path:
            self.write_json(json_path)
        if md_path:
            Path(md_path).write_text(md + "\n")
        return md

    def markdown(self) -> str:
        e = self.env
        out = [f"# Benchmarks on {e.get('device_name')} ({e.get('device')})", "",
               f"- date {e['date']}, commit `{e['commit']}`",
               f"- torch {e['torch']}, triton {e['triton']}, cupy {e['cupy']}, "
               f"diffusers {e['diffusers']}, numpy {e['numpy']}, python {e['python']}",
               f"- command: `{self.command}`", ""]
        suites: dict[str, list[Row]] = {}
        for r in self.rows:
            suites.setdefault(r.suite, []).append(r)
        for suite, rows in suites.items():
            out += [f"## {suite}", "", *_table(rows), ""]
        if self.skipped:
            out += ["## Not measured in this run", ""] + [f"- {s}" for s in self.skipped] + [""]
        return "\n".join(out)


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _table(rows: list[Row]) -> list[str]:
    """Markdown table: one line per case; each implementation's time, the ratio of every other
    implementation's time to the first one's (> 1: the first is faster), and the first one's GB/s
    and % of a same-size device copy when the bytes moved are known."""
    impls: list[str] = []
    for r in rows:
        for k in r.times:
            if k not in impls and k != "copy":
                impls.append(k)
    has_bytes = any(r.bytes_moved for r in rows)
    head = ["case", "params"] + [f"{k}" for k in impls]
    base_name = impls[0] if impls else "first"
    if has_bytes:
        head += [f"{base_name} GB/s", "% of copy"]
    head += [f"{k} / {base_name}" for k in impls[1:]]
    has_notes = any(r.notes for r in rows)
    if has_notes:
        head.append("notes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours = impls[0] if impls else None
        cells = [r.case, ", ".join(f"{k}={v}" for k, v in r.params.items())]
        cells += [_fmt_time(r.times[k]) if k in r.times else "-" for k in impls]
        if has_bytes and r.launch_bound:
            cells += ["launch-bound", "-"]
        elif has_bytes:
            g = r.gbps(next((k for k in impls if k in r.times), "")) if r.bytes_moved else None
            copy = r.gbps("copy")
            cells += [f"{g:.3g}" if g else "-", f"{100 * g / copy:.3g}%" if g and copy else "-"]
        base = r.times.get(ours) if ours else None
        cells += [f"{r.times[k] / base:.2f}x" if base and k in r.times else "-" for k in impls[1:]]
        if has_notes:
            cells.append(r.notes)
        lines.append("| " + " | ".join(cells) + " |")
    return lines
