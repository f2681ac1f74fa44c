"""Mutation check: plant one-line bugs, one at a time, in a copy of the tree and see which tests
catch each. Every listed mutation must be caught (exit status 1 otherwise).

    python -m tests.mutation              # baseline, then every mutation (~15 min on 2 cores for the
                                          # first 18; the 25 of the new model families add ~47 min,
                                          # measured with baseline on 2 shared cores, load ~13)
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
    # ---------------------------------------------------------------- Improved DDPM
    Mutation(
        "normal-kl-without-half", "reference/variational.py",
        "kl = 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))",
        "kl = (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))",
        ("tests/test_variational_reference.py::test_normal_kl_closed_forms",),
        "the Gaussian KL of L_t without its factor 1/2"),
    Mutation(
        "posterior-log-variance-unclipped", "reference/schedules.py",
        "np.append(posterior_variance[1], posterior_variance[1:])",
        "np.maximum(posterior_variance, 1e-20)",
        ("tests/test_variational_reference.py::test_learned_log_variance_endpoints_are_beta_and_beta_tilde",),
        "log beta~_t floored at 1e-20 (the DDPM code) instead of clipped to beta~_1 at t = 0"),
    Mutation(
        "importance-p-without-sqrt", "reference/importance.py",
        "p = np.sqrt(np.mean(self.losses**2, axis=1))", "p = np.mean(self.losses**2, axis=1)",
        ("tests/test_variational_reference.py::test_importance_history_is_uniform_until_full_then_follows_the_second_moment",),
        "importance sampling p_t proportional to E[L_t^2] instead of its square root (Eq. 18)"),
    Mutation(
        "learned-variance-ends-swapped", "kernels/torch_ops.py",
        "log_variance = frac * col[7] + (1.0 - frac) * col[8]  # Improved DDPM Eq. 15",
        "log_variance = frac * col[8] + (1.0 - frac) * col[7]  # Improved DDPM Eq. 15",
        ("tests/test_learned_variance_step_kernels.py",),
        "the torch learned-variance step interpolates from beta_t at v = -1 (Eq. 15's ends swapped)",
        ("-k", "torch")),
    Mutation(
        "hybrid-vlb-trains-the-mean", "ddpm/losses.py",
        "mean_out = mean_out.detach()", "mean_out = mean_out",
        ("tests/test_improved_ddpm_torch.py::test_losses_and_gradients_equal_the_reference",),
        "L_hybrid's L_vlb term also trains the mean (the stop-gradient of Sec. 3.1 lost)"),
    # ---------------------------------------------------------------- classifier guidance
    Mutation(
        "guidance-eps-shift-sqrt-alpha-bar", "reference/classifier_guidance.py",
        "-np.sqrt(1.0 - alpha_bar), zero]", "-np.sqrt(alpha_bar), zero]",
        ("tests/test_classifier_guidance.py::test_ddim_column_is_the_eps_shift_of_algorithm_2",),
        "Algorithm 2's eps shift scaled by sqrt(alpha_bar) instead of sqrt(1 - alpha_bar)"),
    Mutation(
        "guidance-ddpm-shift-by-sigma", "reference/classifier_guidance.py",
        "return np.stack([zero, zero, sigma**2], axis=-1)", "return np.stack([zero, zero, sigma], axis=-1)",
        ("tests/test_classifier_guidance.py::test_ddpm_column_is_the_mean_shift_of_algorithm_1",),
        "Algorithm 1's mean shift s Sigma g uses sigma, not sigma^2"),
    Mutation(
        "classifier-gradient-of-minus-log-p", "reference/classifier.py",
        "dlogits = -np.exp(log_p)\n        dlogits[rows, y] += 1.0",
        "dlogits = np.exp(log_p)\n        dlogits[rows, y] -= 1.0",
        ("tests/test_classifier_reference.py::test_log_prob_gradient_is_the_gradient_of_each_samples_log_probability",),
        "the reference guidance gradient is that of the cross-entropy (-log p), pushing away from y"),
    Mutation(
        "torch-classifier-gradient-of-p", "ddpm/classifier.py",
        "log_p = F.log_softmax(self(x_in, t), dim=1)", "log_p = F.softmax(self(x_in, t), dim=1)",
        ("tests/test_classifier_torch.py::test_autograd_guidance_gradient_equals_the_hand_backward",),
        "the torch guidance gradient is grad p(y | x_t), not grad log p(y | x_t)"),
    # ---------------------------------------------------------------- the score view
    Mutation(
        "langevin-noise-without-sqrt-2", "reference/score_plan.py",
        "rows += [_row(1.0, scale, eps, math.sqrt(2.0 * eps))] * count",
        "rows += [_row(1.0, scale, eps, math.sqrt(eps))] * count",
        ("tests/test_score_reference.py::test_samplers_draw_the_right_variance_from_exact_scores",),
        "Langevin dynamics' noise scale sqrt(eps) instead of sqrt(2 eps)", ("-k", "langevin")),
    Mutation(
        "dsm-backward-sign", "reference/score.py",
        "return -d_score / s                              # s = -out / sigma",
        "return d_score / s                              # s = -out / sigma",
        ("tests/test_score_reference.py::test_dsm_loss_is_the_eps_loss_and_its_backward_matches_finite_differences",),
        "the DSM loss's backward forgets the minus of s = -out / sigma"),
    Mutation(
        "torch-snr-corrector-noise-sqrt-step", "ddpm/samplers.py",
        "torch.sqrt(2.0 * step)], dim=1)", "torch.sqrt(step)], dim=1)",
        ("tests/test_score_samplers.py::test_torch_trajectory_equals_reference_every_step",),
        "the torch snr corrector's noise scale sqrt(step) instead of sqrt(2 step) (Song et al. Alg. 4)"),
    Mutation(
        "torch-langevin-score-unscaled", "kernels/torch_ops.py",
        "score = col[1] * model_output.to(compute)", "score = model_output.to(compute)",
        ("tests/test_langevin_step_kernels.py",),
        "the torch Langevin step takes the eps output as the score (c1 = -1/sigma dropped)", ("-k", "torch")),
    # ---------------------------------------------------------------- latent diffusion
    Mutation(
        "posterior-std-exp-logvar", "reference/autoencoder.py",
        "std = np.exp(0.5 * logvar)", "std = np.exp(logvar)",
        ("tests/test_autoencoder_reference.py::test_posterior_sample_clamp_and_gradient",),
        "the autoencoder posterior samples with std = exp(logvar) instead of exp(logvar / 2)"),
    Mutation(
        "torch-posterior-std-exp-logvar", "ddpm/autoencoder.py",
        "mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)", "mean + torch.exp(logvar) * noise.to(mean.dtype)",
        ("tests/test_autoencoder_torch.py::test_float64_equals_reference",),
        "the torch autoencoder samples z with std = exp(logvar)"),
    Mutation(
        "torch-autoencoder-kl-without-half", "ddpm/autoencoder.py",
        "kl_elements = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)",
        "kl_elements = (mean.pow(2) + logvar.exp() - 1.0 - logvar)",
        ("tests/test_autoencoder_torch.py::test_float64_equals_reference",),
        "the torch autoencoder's KL without its factor 1/2"),
    Mutation(
        "latent-scaling-factor-is-std", "reference/autoencoder_config.py",
        "    return 1.0 / std\n", "    return std\n",
        ("tests/test_autoencoder_reference.py::test_scaling_factor_is_inverse_std_and_round_trips",),
        "the latent scaling factor is std, not 1 / std (LDM Sec. 4.3.2)"),
    # ---------------------------------------------------------------- DiT
    Mutation(
        "dit-backward-attention-gate-lost", "reference/dit.py",
        "self_attention_backward(dx1 * gate1[:, None, :], attn_cache)", "self_attention_backward(dx1, attn_cache)",
        ("tests/test_dit_reference.py::test_dit_block_backward",),
        "the reference DiT block's backward skips adaLN-Zero's attention gate"),
    Mutation(
        "torch-dit-mlp-gate-lost", "ddpm/dit.py",
        "return x + gate2[:, None] * self.mlp(", "return x + self.mlp(",
        ("tests/test_dit_torch.py::test_torch_equals_reference_in_float64",),
        "the torch DiT block adds the MLP branch without adaLN-Zero's gate"),
    Mutation(
        "dit-diffusers-q-k-swapped", "reference/dit_config.py",
        'enumerate("qkv")', 'enumerate("kqv")',
        ("tests/test_dit_torch.py::test_import_from_diffusers_state_dict_gives_the_same_outputs",),
        "the qkv rows map to diffusers' to_k/to_q/to_v (q and k swapped; export-import still round-trips)"),
    Mutation(
        "layer-norm-modulate-backward-drops-mean", "reference/layer_norm_modulate.py",
        "dx = rstd * (g - g.mean(axis=-1, keepdims=True) - x_hat", "dx = rstd * (g - x_hat",
        ("tests/test_layer_norm_modulate_reference.py::test_backward_matches_finite_differences",),
        "LayerNorm+modulation backward loses the mean(g) term"),
    Mutation(
        "torch-layer-norm-modulate-scale-without-one", "kernels/torch_ops.py",
        "y = centred * rstd * (1.0 + scale.to(compute)[:, None, :])", "y = centred * rstd * scale.to(compute)[:, None, :]",
        ("tests/test_layer_norm_modulate_kernels.py::test_torch_backend_float64_equals_reference_to_round_off",),
        "the torch adaLN modulation multiplies by scale instead of (1 + scale)"),
    # ---------------------------------------------------------------- evaluation
    Mutation(
        "precision-recall-swapped", "reference/eval_metrics.py",
        "    return precision, recall\n", "    return recall, precision\n",
        ("tests/test_eval_metrics.py::test_precision_without_recall_for_a_collapsed_generator",),
        "precision_recall returns (recall, precision)"),
    Mutation(
        "frechet-covmean-real-too-early", "reference/eval_metrics.py",
        "covmean = linalg.sqrtm(sigma1 @ sigma2)\n", "covmean = linalg.sqrtm(sigma1 @ sigma2).real\n",
        ("tests/test_eval_metrics.py::test_frechet_distance_rejects_bad_statistics",),
        "sqrtm(S1 S2)'s real part taken before the imaginary-part check (a bad product passes silently)"),
    Mutation(
        "evaluate-real-and-samples-swapped", "ddpm/evaluate.py",
        "precision, recall = eval_metrics.precision_recall(real_a, other, k)",
        "precision, recall = eval_metrics.precision_recall(other, real_a, k)",
        ("tests/test_evaluate.py::test_real_digits_near_floor_and_noise_far",),
        "sample_quality passes samples as the real set: its precision is recall and vice versa"),
    # ---------------------------------------------------------------- the compiled CPU GroupNorm (issue 17)
    Mutation(
        "gns-cpu-centre-low-part-dropped", "kernels/cpu/group_norm_silu.cpp",
        "return Centre{_mm256_set1_ps(hi), _mm256_set1_ps((float)(c - (double)hi)), _mm256_set1_ps((float)g.rstd)};",
        "return Centre{_mm256_set1_ps(hi), _mm256_setzero_ps(), _mm256_set1_ps((float)g.rstd)};",
        ("tests/test_group_norm_silu_cpu_compiled.py",),
        "h - mean taken against the float32-rounded mean only: x_hat off by ulp(mean) rstd in nearly-equal groups"),
    Mutation(
        "gns-cpu-nhwc-partials-swapped", "kernels/cpu/group_norm_silu.cpp",
        "        partial[2 * c] = dz_sums[c];\n        partial[2 * c + 1] = dz_x_hat_sums[c];",
        "        partial[2 * c] = dz_x_hat_sums[c];\n        partial[2 * c + 1] = dz_sums[c];",
        ("tests/test_group_norm_silu_cpu_compiled.py",),
        "the channels_last backward stores sum dz x_hat as dbias's partial and sum dz as dweight's"),
    Mutation(
        "gns-cpu-exp-coefficient", "kernels/cpu/group_norm_silu.cpp",
        "p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));",
        "p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6e-1f));",
        ("tests/test_group_norm_silu_cpu_compiled.py::test_silu_and_its_gradient_over_the_whole_float_range",),
        "the SiLU's exp polynomial with a wrong cubic coefficient (~1e-4 relative error)"),
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
