"""Charts of a benchmark report: kernel bandwidth vs size, with the device-copy line."""

from __future__ import annotations

from pathlib import Path

__all__ = ["bandwidth_chart"]


def bandwidth_chart(report_json: dict, path: str | Path) -> Path | None:
    """One panel per kernel op: GB/s of each implementation vs bytes moved, copy as a dashed line.

    Uses rows of the 'kernels' suite whose case name ends in '-sweep'. Returns the path written,
    or None when the report has no sweep rows. Needs matplotlib (the `demo` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the bandwidth chart needs matplotlib: pip install -e '.[demo]'") from exc

    rows = [r for r in report_json["rows"] if r["suite"] == "kernels" and r["case"].endswith("-sweep")
            and r.get("bytes_moved")]
    if not rows:
        return None
    ops: dict[str, list[dict]] = {}
    for r in rows:
        key = f"{r['case'][: -len('-sweep')]} ({r['params'].get('dtype', '')})"
        ops.setdefault(key, []).append(r)
    fig, axes = plt.subplots(1, len(ops), figsize=(5 * len(ops), 4), squeeze=False)
    for ax, (name, op_rows) in zip(axes[0], ops.items()):
        op_rows.sort(key=lambda r: r["bytes_moved"])
        impls = sorted({k for r in op_rows for k in r["times"]})
        for impl in impls:
            pts = [(r["bytes_moved"], r["bytes_moved"] / r["times"][impl] / 1e9)
                   for r in op_rows if impl in r["times"]]
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = dict(linestyle="--", color="black") if impl == "copy" else dict(marker="o")
            ax.plot(xs, ys, label=impl, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes moved per call")
        ax.set_ylabel("GB/s")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    env = report_json["env"]
    fig.suptitle(f"{env.get('device_name')} - commit {env.get('commit', '')[:10]} - {env.get('date', '')[:10]}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
