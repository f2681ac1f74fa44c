"""The score view on 2-D data: Langevin vs annealed Langevin vs PC vs DDPM with EXACT scores.

    python -m benchmarks.score_view_2d [--n 4000] [--evals 1000] [--out benchmarks/results/score-view.md]

Song & Ermon 2019 (Sec. 3.2.2, Fig. 3): on a mixture with unequal weights, Langevin dynamics at
one noise level recovers each mode's shape but not the modes' relative weights (in finite time
the chains cannot cross between well-separated modes, so the weights are those of the start);
annealed Langevin, which runs chains over decreasing noise levels, recovers them. The data is
their example, p = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I). Every sampler gets the exact score of
the perturbed density (a mixture again: VE components N(mu, (1 + sigma^2) I), VP components
N(sqrt(alpha_bar) mu, I)), written as the model output the library's samplers read (VE: the noise
z, score = -out / sigma; VP: eps, score = -eps / sqrt(1 - alpha_bar)), so only the sampler
differs. All samplers run through `reference.sample_score` / `reference.sample_plan` at the
same number of score evaluations. Quality: `reference.energy_distance` to a fresh data draw
(floor: two independent data draws) and the fraction of samples in the (5, 5) mode (truth 0.8).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

import reference

MEANS = np.array([[-5.0, -5.0], [5.0, 5.0]])
WEIGHTS = np.array([0.2, 0.8])


def draw_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.choice(2, size=n, p=WEIGHTS)
    return MEANS[k] + rng.standard_normal((n, 2))


def mixture_score(x: np.ndarray, scale: np.ndarray, var: np.ndarray) -> np.ndarray:
    """grad log sum_k w_k N(x; scale mu_k, var I), per sample (scale, var: (N,))."""
    diff = x[:, None, :] - scale[:, None, None] * MEANS[None]            # (N, K, 2)
    log_p = np.log(WEIGHTS)[None] - 0.5 * np.sum(diff ** 2, axis=2) / var[:, None]
    resp = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    resp /= resp.sum(axis=1, keepdims=True)
    return -np.sum(resp[:, :, None] * diff, axis=1) / var[:, None]


def ve_model(schedule):
    def model(x, t):
        sigma = schedule.sigmas[t]
        return -sigma[:, None] * mixture_score(x, np.ones_like(sigma), 1.0 + sigma ** 2)
    return model


def vp_model(schedule):
    def model(x, t):
        alpha_bar = schedule.alpha_bars[t]
        return -np.sqrt(1.0 - alpha_bar)[:, None] * mixture_score(x, np.sqrt(alpha_bar), np.ones_like(alpha_bar))
    return model


def configurations(evals: int):
    """(name, process, sampler, num_steps, options) at `evals` score evaluations each."""
    per_level = 100
    return [
        ("Langevin (one level, sigma_min)", "ve", "langevin", evals - 1, {"step_size": 0.05, "level": 0}),
        ("annealed Langevin (Song & Ermon Alg. 1)", "ve", "annealed_langevin", evals // per_level,
         {"steps_per_level": per_level, "step_size": 2e-5}),
        ("PC, VE, per-sample snr norms (default)", "ve", "pc", evals // 2, {"corrector_steps": 1, "snr": 0.16}),
        ("PC, VE, batch-mean snr norms (Song, diffusers)", "ve", "pc", evals // 2,
         {"corrector_steps": 1, "snr": 0.16, "snr_norms": "batch"}),
        ("PC, VP, batch-mean snr norms", "vp", "pc", evals // 2,
         {"corrector_steps": 1, "snr": 0.16, "snr_norms": "batch"}),
        ("DDPM ancestral (VP, all T steps)", "vp", "ddpm", evals, {}),
    ]


def run(n: int, evals: int, seed: int, log=print) -> dict:
    ve = reference.ve_schedule(20.0, 0.01, evals // 2)   # sigma_max ~ the largest pairwise distance
    vp = reference.make_schedule("linear", evals, rescale=True)  # betas x 1000/T: alpha_bar_T ~ 4e-5
    data, fresh = draw_data(n, seed + 1), draw_data(n, seed + 2)
    rows = [{"name": "data vs data (floor)", "energy": reference.energy_distance(data, fresh),
             "mode_weight": float(np.mean(fresh[:, 0] > 0)), "evals": 0, "samples": fresh}]
    for name, process, sampler, steps, options in configurations(evals):
        schedule, model = (ve, ve_model(ve)) if process == "ve" else (vp, vp_model(vp))
        plan = reference.sampling_plan(schedule, sampler, steps, **options)
        start = time.perf_counter()
        x = reference.sample_plan(model, (n, 2), plan, seed)
        rows.append({"name": name, "sampler": sampler, "process": process, "num_steps": steps,
                     "options": options, "evals": plan.num_steps, "seconds": time.perf_counter() - start,
                     "energy": reference.energy_distance(x, data), "mode_weight": float(np.mean(x[:, 0] > 0)),
                     "samples": x})
        log(f"{name}: {plan.num_steps} evals, energy {rows[-1]['energy']:.4f}, "
            f"weight of (5, 5) {rows[-1]['mode_weight']:.3f}")
    return {"rows": rows, "n": n, "evals": evals, "seed": seed,
            "schedules": {"ve": repr(ve), "vp": repr(vp)}}


def save_picture(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    for ax, row in zip(axes.flat, rows):
        x = row["samples"][:2000]
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_title(f"{row['name']}\nweight(5,5) {row['mode_weight']:.2f}, ED {row['energy']:.3f}", fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def format_markdown(result: dict, seconds: float, picture: str) -> str:
    floor = result["rows"][0]["energy"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"### 2-D mixture 0.2 N((-5,-5), I) + 0.8 N((5,5), I), exact scores, {result['evals']} score "
             f"evaluations per sampler, {result['n']} samples (seed {result['seed']})", "",
             "| sampler | score evaluations | energy distance | x floor | weight of (5, 5) (truth 0.8) | seconds |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        secs = f"{row['seconds']:.1f}" if "seconds" in row else ""
        lines.append(f"| {row['name']} | {row['evals']} | {row['energy']:.4f} | {row['energy'] / floor:.2f} | "
                     f"{row['mode_weight']:.3f} | {secs} |")
    lines += ["", f"Schedules: VE {result['schedules']['ve']}, VP {result['schedules']['vp']}. Options: "
              + "; ".join(f"{r['name']}: {r['options']}" for r in result["rows"][1:]), "",
              f"![2-D samples]({picture})", "",
              f"Measured on {platform.node() or 'this machine'} ({platform.processor() or platform.machine()}), "
              f"commit {commit}, {seconds:.0f} s total, load average {open('/proc/loadavg').read().split()[0]} "
              "(a shared machine: seconds are not comparable across runs)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.score_view_2d")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--evals", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/score-view-2d.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args.n, args.evals, args.seed)
    out = Path(args.out)
    picture = out.with_suffix(".png")
    save_picture(result, picture)
    out.write_text(format_markdown(result, time.perf_counter() - start, picture.name))
    summary = [{k: v for k, v in row.items() if k != "samples"} for row in result["rows"]]
    out.with_suffix(".json").write_text(json.dumps({"rows": summary, "n": args.n, "evals": args.evals,
                                                    "seed": args.seed, "schedules": result["schedules"]}, indent=1))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
