"""Mutation check: plant one-line bugs, one at a time, in a copy of the tree and see which tests
catch each. Every listed mutation must be caught (exit status 1 otherwise).

    python -m tests.mutation              # baseline, then every mutation (~15 min on 2 cores)
    python -m tests.mutation --check      # only check that every anchor still matches (seconds)
    python -m tests.mutation --list       # the mutations and the tests that should catch them
    python -m tests.mutation --only dpm-solver-bf16,ema-before-step [--no-baseline]

For each mutation: copy reference/ kernels/ ddpm/ tests/ benchmarks/ pyproject.toml README.md
to a fresh temporary directory, replace the mutation's exact original text (it must occur exactly
once in its file, or the script stops: the tree was refactored and the anchor needs updating),
run its test selection there with PYTHONPATH pointing at the copy (so the copy, not the installed
package, is imported; checked at start), and record the failing tests. A mutation is caught when
pytest fails with at least one FAILED/ERROR test. The baseline runs every selection on the
unmutated copy first: a selection that fails without a bug would catch everything.

Not collected by pytest (not a test_*.py file). The selections are the smallest test sets that
should catch each bug, so the run takes minutes, not the suite's time per mutation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("reference", "kernels", "ddpm", "tests", "benchmarks", "pyproject.toml", "README.md")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str          # relative to the repository root
    original: str      # exact text; must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest arguments (files or node ids) that should catch it
    why: str = ""
    extra: tuple[str, ...] = field(default=())  # extra pytest arguments (e.g. -k)


MUTATIONS: list[Mutation] = [
    # ---------------------------------------------------------------- the list
    Mutation(
        "trainer-feeds-x0", "ddpm/train.py",
        "out = self.ddp_model(x_t, t, y)", "out = self.ddp_model(x0, t, y)",
        ("tests/test_trainer_learning.py", "tests/test_demo.py::test_a_short_real_demo_run_draws_the_requested_digits"),
        "the Trainer feeds x0 instead of x_t to the model"),
    Mutation(
        "ema-before-step", "ddpm/train.py",
        "self.optimizer.step()\n            self.optimizer.zero_grad(set_to_none=True)\n            self.ema.update(self.model)",
        "self.ema.update(self.model)\n            self.optimizer.step()\n            self.optimizer.zero_grad(set_to_none=True)",
        ("tests/test_ema_trainer.py", "tests/test_trainer_learning.py::test_trainer_steps_are_the_reference_chain_on_random_weights"),
        "the EMA is updated before optimizer.step() (it averages the old weights)"),
    Mutation(
        "checkpoint-sha-first-mib", "ddpm/checkpoint.py",
        'for block in iter(lambda: f.read(1 << 20), b""):', "for block in [f.read(1 << 20)]:",
        ("tests/test_checkpoint.py::test_a_flipped_byte_anywhere_in_any_checkpoint_file_is_refused",),
        "the checkpoint SHA-256 covers the first MiB of each file only"),
    Mutation(
        "checkpoint-sha-only-pt", "ddpm/checkpoint.py",
        'if _sha256(fpath) != files[fname]["sha256"]:',
        'if fname.endswith(".pt") and _sha256(fpath) != files[fname]["sha256"]:',
        ("tests/test_checkpoint.py::test_a_flipped_byte_anywhere_in_any_checkpoint_file_is_refused",),
        "the checkpoint SHA-256 is checked for *.pt files only"),
    Mutation(
        "dpm-solver-bf16", "ddpm/samplers.py",
        "self._compute_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32",
        "self._compute_dtype = self.dtype",
        ("tests/test_samplers_bf16.py",),
        "the DPM-Solver++ update is computed in bf16 for half-precision states (FastSampler's default)"),
    Mutation(
        "class-embedding-no-silu-prime", "reference/unet.py",
        'g["class_embedding.weight"] = embedding_backward(dtemb, class_cache)',
        'g["class_embedding.weight"] = embedding_backward(dtemb_silu, class_cache)',
        ("tests/test_unet_reference.py::test_unet_backward_matches_finite_differences",),
        "the reference UNet's class-embedding gradient drops SiLU' (the reference's own FD check)"),
    # ---------------------------------------------------------------- reference
    Mutation(
        "posterior-variance-is-beta", "reference/schedules.py",
        "posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)", "posterior_variance = betas * 1.0",
        ("tests/test_process.py", "tests/test_schedules.py"),
        "the posterior variance beta~_t is beta_t (fixed_small silently becomes fixed_large)"),
    Mutation(
        "ddim-direction-without-sigma", "reference/process.py",
        "direction = np.sqrt(np.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0))",
        "direction = np.sqrt(np.maximum(1.0 - alpha_bar_prev, 0.0))",
        ("tests/test_process.py",),
        "DDIM's direction coefficient forgets sigma^2 (eta > 0)"),
    Mutation(
        "group-norm-backward-drops-mean", "reference/norm.py",
        "dx = (rstd * (dx_hat_g - mean_dx_hat - x_hat_g * mean_dx_hat_x_hat))",
        "dx = (rstd * (dx_hat_g - x_hat_g * mean_dx_hat_x_hat))",
        ("tests/test_group_norm_silu_reference.py",),
        "GroupNorm backward loses the mean(dx_hat) term"),
    Mutation(
        "q-sample-index-t-minus-1", "reference/process.py",
        "a = per_sample(schedule.sqrt_alpha_bars[t], x0.ndim).astype(dtype)",
        "a = per_sample(schedule.sqrt_alpha_bars[t - 1], x0.ndim).astype(dtype)",
        ("tests/test_process.py", "tests/test_q_sample_kernels.py::test_q_sample_matches_reference"),
        "q_sample reads sqrt(alpha_bar) at t - 1 (the paper's 1-based t)", ("-k", "torch or not kernels")),
    Mutation(
        "adam-bias-correction-without-sqrt", "reference/optim.py",
        "bias_correction2_sqrt = np.sqrt(1.0 - b2 ** self.step_count)",
        "bias_correction2_sqrt = 1.0 - b2 ** self.step_count",
        ("tests/test_optim.py",),
        "Adam's second-moment bias correction without its square root"),
    Mutation(
        "min-snr-epsilon-weight", "reference/losses.py",
        "return clipped / snr", "return clipped / (snr + 1.0)",
        ("tests/test_losses.py",),
        "Min-SNR-gamma weight of the epsilon objective uses the v denominator"),
    Mutation(
        "label-dropout-from-t-word", "reference/train.py",
        "label_drop = uint_to_uniform_float(words[:, 3])", "label_drop = uint_to_uniform_float(words[:, 2])",
        ("tests/test_optim.py",),
        "label dropout drawn from the timestep's Philox word (correlated with t)", ("-k", "draws or dropout")),
    # ---------------------------------------------------------------- kernels
    Mutation(
        "philox-round-constant", "kernels/torch_ops.py",
        "PHILOX_ROUND_A = 0xD2511F53", "PHILOX_ROUND_A = 0xD2511F51",
        ("tests/test_normal_kernels.py",),
        "a Philox round multiplier off by two bits in the torch backend", ("-k", "torch")),
    Mutation(
        "cfg-combine-from-cond", "kernels/torch_ops.py",
        "out = uncond + guidance_scale * (out - uncond)", "out = out + guidance_scale * (out - uncond)",
        ("tests/test_sampler_step_kernels.py",),
        "the classifier-free-guidance combine starts from cond instead of uncond", ("-k", "torch")),
    # ---------------------------------------------------------------- ddpm
    Mutation(
        "trainer-grad-clip-doubled", "ddpm/train.py",
        "return torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)",
        "return torch.nn.utils.clip_grad_norm_(params, 2 * self.config.grad_clip)",
        ("tests/test_trainer_learning.py::test_trainer_steps_are_the_reference_chain_on_random_weights",),
        "gradient clipping at twice the configured norm"),
    Mutation(
        "label-dropout-inverted", "ddpm/train.py",
        "torch.where(label_drop[mine], self.unet_config.num_classes, self.dataset.labels[idx])",
        "torch.where(label_drop[mine], self.dataset.labels[idx], self.unet_config.num_classes)",
        ("tests/test_trainer.py",),
        "the Trainer keeps the labels it should drop (drops 1 - p of them)", ("-k", "dropout or draws")),
    Mutation(
        "ddp-gradients-summed", "ddpm/train.py",
        "per_sample = (out.float() - target).pow(2).flatten(1).mean(dim=1)",
        "per_sample = (out.float() - target).pow(2).flatten(1).mean(dim=1) * self.ctx.world_size",
        ("tests/test_ddp.py::test_two_gloo_ranks_end_with_the_parameters_of_one_process_with_the_doubled_batch",),
        "DDP gradients summed over ranks instead of averaged (one process is unaffected)"),
]


def check_anchors(mutations, root: Path = ROOT) -> list[str]:
    """Problems with the anchors: missing files, text not found or found more than once."""
    problems = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist (renamed?)")
            continue
        count = path.read_text().count(m.original)
        if count != 1:
            problems.append(f"{m.name}: {m.file} contains the original text {count} times (need exactly 1):\n"
                            f"    {m.original!r}")
        for t in m.tests:
            tf = root / t.split("::")[0]
            if not tf.is_file():
                problems.append(f"{m.name}: test file {tf.relative_to(root)} does not exist")
            elif "::" in t and f"def {t.split('::')[1].split('[')[0]}(" not in tf.read_text():
                problems.append(f"{m.name}: test {t} does not exist")
    return problems


def make_copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "*.egg-info", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def apply(m: Mutation, root: Path) -> None:
    path = root / m.file
    text = path.read_text()
    if text.count(m.original) != 1:
        raise SystemExit(f"mutation {m.name}: original text not found exactly once in {m.file}")
    path.write_text(text.replace(m.original, m.replacement))


def environment(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # the fixed table: a catch is reproducible
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from helpers import mnist_dir  # the copy sits in /tmp: point it at the real data
    finally:
        sys.path.pop(0)
    mnist = mnist_dir()
    if mnist is not None:
        env.setdefault("DDPM_MNIST_DIR", str(mnist))
    return env


def check_imports_from_copy(root: Path) -> None:
    code = "import ddpm, kernels, reference; print(ddpm.__file__, kernels.__file__, reference.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=environment(root),
                         capture_output=True, text=True, check=True).stdout.split()
    wrong = [p for p in out if not Path(p).resolve().is_relative_to(root.resolve())]
    if wrong:
        raise SystemExit(f"the copy is not what gets imported (installed package wins?): {wrong}")


FAILED = re.compile(r"^(FAILED|ERROR) (\S+)")


def run_tests(m: Mutation, root: Path, timeout: int) -> tuple[int, list[str], str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=",
           *m.extra, *m.tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=environment(root), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return 124, [], f"timed out after {timeout} s\n{err.stdout or ''}"
    failed = [FAILED.match(line).group(2) for line in proc.stdout.splitlines() if FAILED.match(line)]
    return proc.returncode, failed, proc.stdout[-3000:] + proc.stderr[-2000:]


def _summarise(failed: list[str]) -> str:
    """Node ids grouped by test function: 'file.py::test (3 cases)'."""
    counts: dict[str, int] = {}
    for nodeid in failed:
        key = nodeid.replace("tests/", "").split("[")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(k if n == 1 else f"{k} ({n} cases)" for k, n in counts.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check the anchors")
    parser.add_argument("--list", action="store_true", help="list the mutations")
    parser.add_argument("--only", default=None, help="comma-separated mutation names")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)

    mutations = MUTATIONS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.name for m in MUTATIONS}
        if unknown:
            raise SystemExit(f"unknown mutation(s) {sorted(unknown)}")
        mutations = [m for m in MUTATIONS if m.name in wanted]
    if args.list:
        for m in mutations:
            print(f"{m.name:36s} {m.file:24s} {m.why}\n{'':36s} tests: {' '.join(m.extra + m.tests)}")
        return 0
    problems = check_anchors(mutations)
    if problems:
        print("ANCHORS DO NOT MATCH THE TREE (update tests/mutation.py):", *problems, sep="\n  ", file=sys.stderr)
        return 2
    print(f"{len(mutations)} mutation anchors match the tree")
    if args.check:
        return 0

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        base = Path(tmp) / "baseline"
        make_copy(base)
        check_imports_from_copy(base)
        if not args.no_baseline:
            seen, bad = set(), []
            for m in mutations:
                key = (m.extra, m.tests)
                if key in seen:
                    continue
                seen.add(key)
                t0 = time.perf_counter()
                rc, failed, log = run_tests(m, base, args.timeout)
                print(f"baseline {' '.join(m.extra + m.tests)}: rc {rc} ({time.perf_counter() - t0:.0f} s)", flush=True)
                if rc != 0:
                    bad.append((m, rc, failed, log))
            if bad:
                for m, rc, failed, log in bad:
                    print(f"\nBASELINE FAILS for {m.tests} (rc {rc}): {failed}\n{log}", file=sys.stderr)
                return 2
        shutil.rmtree(base)

        rows, survived = [], []
        for m in mutations:
            work = Path(tmp) / m.name
            make_copy(work)
            apply(m, work)
            t0 = time.perf_counter()
            rc, failed, log = run_tests(m, work, args.timeout)
            seconds = time.perf_counter() - t0
            if rc == 5:
                raise SystemExit(f"mutation {m.name}: pytest collected no tests from {m.tests}")
            caught = rc != 0 and (bool(failed) or rc in (2, 3, 124))
            if not caught:
                survived.append(m)
            who = _summarise(failed) if failed else f"(pytest rc {rc})"
            rows.append((m, caught, who, seconds))
            print(f"{'CAUGHT  ' if caught else 'SURVIVED'} {m.name} ({seconds:.0f} s): {who if caught else ''}",
                  flush=True)
            if not caught:
                print(log, file=sys.stderr)
            shutil.rmtree(work)

    total = time.perf_counter() - start
    print(f"\n| mutation | file | caught by | s |\n|---|---|---|---|")
    for m, caught, who, seconds in rows:
        print(f"| {m.name}: {m.why} | {m.file} | {who if caught else '**SURVIVED**'} | {seconds:.0f} |")
    print(f"\n{len(rows) - len(survived)}/{len(rows)} caught, {total / 60:.1f} min")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
