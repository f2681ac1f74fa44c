"""Streamed image folders against loading them whole: throughput, peak memory, time to first step.

    python -m benchmarks.streaming_data [--sizes 5000 20000] [--repeats 3] [--batches 40]
                                        [--scratch /work/scratch/streaming] [--out FILE.md]

Writes N generated 64x64 RGB PNGs (10 class folders; smooth random blobs plus noise, so they
compress like small photos, not like pure noise) under --scratch (not in git), then measures each
loader in a fresh Python process (so its peak RSS is its own):

    whole       ddpm.data.load_dataset: every image decoded into one float32 tensor
    stream-wK   ddpm.streaming with K DataLoader workers (K = 0, 1, 2), prefetch 2
    cache-build --stream --cache on a run directory without a cache (decodes once, then reads it)
    cache-reuse the same with the cache already there

For each: the seconds from the start of data loading to the first global batch handed to the
trainer (`Trainer._draw_batch`, exactly what `train_step` consumes: indices, t, flips, the images),
i.e. the moment the first training step can start, less the time to build the model and the
Trainer (recorded apart as trainer_s in the JSON); the step itself costs the same whatever the
loader (a 1-level ch-8 UNet step at batch 128 took 12-14 s on this loaded machine), so it is not
part of the figure. Then the images/s the trainer receives over --batches more batches, no model
in between. RSS: the measuring process's high-water
mark (ru_maxrss) when the data is ready (before the first step) and at the end, and the largest
DataLoader worker (VmHWM of the live workers after the last batch; for cache-build also
the reaped build workers' ru_maxrss, which counts every child the process had; forked workers
share the parent's pages, so main + worker overstates the total).

The machine is shared: the load average is recorded before and after each measurement and the
table gives the median and range of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("whole", "stream-w0", "stream-w1", "stream-w2", "cache-build", "cache-reuse")
IMAGE_SIZE, BATCH = 64, 128


# ----------------------------------------------------------------------------- the data

def _write_images(job) -> None:
    from PIL import Image

    root, start, stop = job
    for k in range(start, stop):
        rng = np.random.default_rng(k)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = np.clip(smooth + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
        folder = Path(root) / f"c{k % 10}"
        Image.fromarray(pixels).save(folder / f"{k:06d}.png")


def generate(root: Path, n: int) -> Path:
    """n PNGs under root/c0..c9 (kept when already complete)."""
    from concurrent.futures import ProcessPoolExecutor

    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return root
    for k in range(10):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    larger = [p for p in root.parent.glob("png-*") if p != root and int(p.name[4:]) > n]
    if larger:  # the first n images of a larger folder, hard-linked (the same files)
        for k in range(n):
            name = Path(f"c{k % 10}") / f"{k:06d}.png"
            if not (root / name).exists():
                os.link(larger[0] / name, root / name)
        return root
    chunk = 500
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_write_images, [(str(root), s, min(s + chunk, n)) for s in range(0, n, chunk)]))
    return root


# ----------------------------------------------------------------------------- one measurement

def measure(config: str, folder: str, run_dir: str, batches: int) -> dict:
    """One loader in this process (module docstring); returns the figures as a dict."""
    import torch

    torch.set_num_threads(1)
    import ddpm
    import reference
    from ddpm.data import load_dataset
    from ddpm.streaming import StreamOptions
    from ddpm.streaming_sources import open_streaming
    from ddpm.streaming_cache import attach_cache
    from ddpm.train import TrainConfig, Trainer

    start = time.perf_counter()
    if config == "whole":
        data = load_dataset(folder, IMAGE_SIZE, 3)
    else:
        workers = int(config[-1]) if config.startswith("stream") else 2
        cache = str(Path(run_dir) / "data-cache") if config.startswith("cache") else None
        data = open_streaming(folder, IMAGE_SIZE, 3, options=StreamOptions(workers=workers, cache_dir=cache))
        if cache is not None:
            attach_cache(data, cache)
    loaded = time.perf_counter() - start
    torch.manual_seed(0)
    model = ddpm.UNet(reference.UNetConfig(image_size=IMAGE_SIZE, ch=8, ch_mult=(1,), num_res_blocks=1,
                                           attn_resolutions=(), dropout=0.0, groups=4, mid_attention=False,
                                           num_classes=10))
    trainer = Trainer(model, reference.make_schedule("linear", 1000),
                      TrainConfig(steps=1 + batches, batch_size=BATCH, seed=0), data)
    rss_before_step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    built = time.perf_counter() - start - loaded  # the model and Trainer: the same for every loader
    trainer._draw_batch()  # the first batch train_step would consume (workers started, prefetch)
    first_step = time.perf_counter() - start - built
    tick, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        trainer._draw_batch()  # what train_step consumes, without the model
    delivered, cpu = time.perf_counter() - tick, time.process_time() - cpu
    worker_peak = 0.0
    if trainer.feed is not None:  # VmHWM (peak RSS) of the live DataLoader workers
        for worker in getattr(trainer.feed._batches, "_workers", []):
            worker_peak = max(worker_peak, _vm_hwm_mb(worker.pid))
        trainer.feed.close()
    if config.startswith("cache"):
        worker_peak = max(worker_peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                          if config == "cache-build" else 0.0)
    return {"config": config, "n": len(data), "load_s": loaded, "first_batch_s": first_step, "trainer_s": built,
            "images_per_s": batches * BATCH / delivered, "main_cpu_ms_per_image": 1e3 * cpu / (batches * BATCH),
            "data_rss_mb": rss_before_step, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": worker_peak}


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _run_one(config: str, folder: Path, run_dir: Path, batches: int) -> dict:
    if config == "cache-build" and (run_dir / "data-cache").exists():
        import shutil

        shutil.rmtree(run_dir / "data-cache")
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "benchmarks.streaming_data", "--measure", config, "--folder", str(folder),
           "--run-dir", str(run_dir), "--batches", str(batches)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_avg"] = [load_before, os.getloadavg()[0]]
    return result


# ----------------------------------------------------------------------------- the report

def _cell(values, fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})" if len(values) > 1 else f"{med:{fmt}}"


def report(results: list[dict], args, commit: str) -> str:
    lines = [
        "# Streamed image folders vs loading them whole",
        "",
        f"`python -m benchmarks.streaming_data --sizes {' '.join(map(str, args.sizes))} --repeats {args.repeats} "
        f"--batches {args.batches}` on commit {commit}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, shared with other jobs (load average before/after each run below).",
        "",
        f"Data: generated {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNGs in 10 class folders; batch {BATCH}; a tiny UNet "
        f"built (not run) for the Trainer. Median (min-max) of "
        f"{args.repeats} runs, each in a fresh process.",
        "",
        "| images | loader | images/s delivered | time to first batch (s) | data ready (s) | RSS data ready (MB) "
        "| peak RSS main (MB) | peak RSS largest worker (MB) | load avg |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    cpu_rows = [r for r in results if "main_cpu_ms_per_image" in r]
    for n in args.sizes:
        for config in CONFIGS:
            rows = [r for r in results if r["n"] == n and r["config"] == config]
            if not rows:
                continue
            loads = f"{min(r['load_avg'][0] for r in rows):.1f}-{max(r['load_avg'][1] for r in rows):.1f}"
            worker = _cell([r["worker_peak_rss_mb"] for r in rows], ".0f") if config != "whole" and \
                config != "stream-w0" else "-"
            lines.append(f"| {n} | {config} | {_cell([r['images_per_s'] for r in rows], '.0f')} | "
                         f"{_cell([r['first_batch_s'] for r in rows], '.1f')} | {_cell([r['load_s'] for r in rows], '.1f')} | "
                         f"{_cell([r['data_rss_mb'] for r in rows], '.0f')} | "
                         f"{_cell([r['peak_rss_mb'] for r in rows], '.0f')} | {worker} | {loads} |")
    if cpu_rows:  # CPU time of the training process per delivered image: independent of the load
        lines += ["", "| images | loader | CPU ms per image delivered (training process; workers not counted) |",
                  "|---:|---|---:|"]
        lines += [f"| {r['n']} | {r['config']} | {r['main_cpu_ms_per_image']:.3f} |" for r in cpu_rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--scratch", default="/work/scratch/streaming")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "streaming-data.md"))
    parser.add_argument("--measure", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.folder, args.run_dir, args.batches)))
        return
    scratch = Path(args.scratch)
    results = []
    for n in args.sizes:
        tick = time.perf_counter()
        folder = generate(scratch / f"png-{n}", n)
        print(f"data: {folder} ({time.perf_counter() - tick:.0f} s)", flush=True)
        for repeat in range(args.repeats):
            for config in args.configs:
                result = _run_one(config, folder, scratch / f"run-{n}", args.batches)
                results.append(result)
                print(json.dumps(result), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.write_text(report(results, args, commit))
    print(out.read_text())


if __name__ == "__main__":
    main()
