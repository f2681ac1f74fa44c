"""The exact NumPy reference: the definition of every number in the project.

float64 by default, float32 on request. Imports nothing of `kernels`, `ddpm`, `tests` or
`benchmarks`.
"""

from ._validate import check_class_labels, check_parameter_names, check_seed  # shared by ddpm
from .learned_variance_step import (
    LEARNED_VARIANCE,
    LEARNED_VARIANCE_COEFFICIENTS,
    ddpm_learned_step,
    learned_variance_coefficients,
    learned_variance_step,
)
from .losses import (
    LOSSES,
    VLB_WEIGHT,
    check_loss_variance,
    min_snr_weights,
    training_target,
    variational_loss,
    variational_loss_backward,
    weighted_mse,
    weighted_mse_backward,
)
from .importance import LossSecondMomentHistory
from .metrics import energy_distance, mean_pairwise_distance, sliced_wasserstein
from .mlp import MLP
from .optim import EMA, Adam, clip_grad_norm, global_norm
from .norm import group_norm, group_norm_backward, group_norm_silu, group_norm_silu_backward
from .noise import (
    SAMPLER_INIT_STREAM,
    TRAIN_STREAM_BASE,
    normal,
    pair_uniform_to_normal,
    philox4x32,
    philox_words,
    sampler_step_stream,
    uint_to_uniform_float,
    uniform,
)
from .process import (
    PREDICTIONS,
    STEP_COEFFICIENTS,
    VARIANCES,
    classifier_free_guidance,
    ddim_coefficients,
    ddim_step,
    ddpm_coefficients,
    ddpm_step,
    DPM_SOLVER_COEFFICIENTS,
    dpm_solver_pp_2m_step,
    dpm_solver_pp_2m_update,
    dpm_solver_pp_coefficients,
    dynamic_threshold,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    prediction_coefficients,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    sampler_step,
    v_from_x0_eps,
)
from .sampling import guided, initial_noise, sample_ddim, sample_ddpm, sample_dpm_solver_pp, sample_plan
from .sampling_plan import SAMPLER_VARIANCES, SAMPLERS, STEP_KINDS, SamplingPlan, default_num_steps, sampling_plan
from .schedules import SCHEDULE_KINDS, SPACINGS, Schedule, make_schedule, timestep_subset
from .toy_data import DATASETS, dataset_num_classes, make_dataset
from .train import ImportanceDraws, TrainingDraws, importance_draws, train_step, train_stream, training_draws  # the loop: reference.train.train
from .unet_config import UNetConfig, count_parameters, parameter_shapes
from .unet import UNet
from .variational import (
    CDF_KINDS,
    check_8bit_grid,
    discretized_gaussian_log_likelihood,
    discretized_gaussian_log_likelihood_backward,
    learned_log_variance,
    learned_log_variance_backward,
    log_variance_bounds,
    normal_kl,
    normal_kl_backward,
)
from .vlb import (
    BPD_STREAM_BASE,
    VARIANCE_KINDS,
    bits_per_dim,
    bpd_stream,
    fixed_log_variance,
    prior_bpd,
    split_model_output,
    vlb_terms,
    vlb_terms_backward,
)
from .autoencoder_config import (  # latent diffusion (issue 14)
    AUTOENCODER_STREAM_BASE,
    AutoencoderConfig,
    autoencoder_parameter_shapes,
    autoencoder_stream,
    latent_scaling_factor,
    latent_unet_config,
    scale_latents,
    unscale_latents,
)
from .autoencoder import AutoencoderKL, autoencoder_loss, autoencoder_loss_backward
from .eval_metrics import (  # sample-quality figures on features (issue 16)
    density_coverage,
    frechet_distance,
    frechet_distance_features,
    gaussian_statistics,
    inception_score,
    memorisation,
    precision_recall,
    real_halves,
    sample_subset,
)
from .feature_nets import FEATURE_NET_DATA, FEATURE_NET_PRESETS, feature_net_preset, feature_net_split
from .classifier import (  # classifier guidance (issue 12)
    ACCURACY_STREAM_BASE,
    Classifier,
    accuracy_timesteps,
    holdout_split,
    classifier_parameter_shapes,
    classifier_train_step,
    cross_entropy,
    cross_entropy_backward,
)
from .classifier_guidance import (
    GUIDANCE_COEFFICIENTS,
    GUIDED_STEP_KINDS,
    check_classifier_guidance,
    classifier_guidance_coefficients,
    guidance_rows,
)
# the score view (issue 13): VE noise levels, denoising score matching, the Langevin step, plans
from .langevin_step import SNR_NORMS, LANGEVIN_COEFFICIENTS, LANGEVIN_STEP_COEFFICIENTS, langevin_snr_coefficients, langevin_step
from .score import (PROCESSES, ScoreModel, VESchedule, check_process_schedule, dsm_loss, dsm_loss_backward,
                    geometric_sigmas, score_scale, ve_perturb, ve_schedule)
from .score_plan import PREDICTORS, SCORE_DEFAULTS, SCORE_SAMPLERS
from .sampling_plan import ALL_SAMPLERS, score_sampling_plan
from .sampling import sample_score
# DiT (issue 15): Peebles & Xie 2023, and its fused LayerNorm + adaLN modulation op
from .layer_norm_modulate import layer_norm_modulate, layer_norm_modulate_backward
from .dit_config import DIT_PRESETS, DiTConfig, dit_count_parameters, dit_parameter_shapes
from .dit import DiT
from .model_configs import ARCHS, MODEL_CONFIGS, arch_of, model_parameter_shapes
from .crops import AUGMENT_COUNTER_WORD, center_crop_box, random_crop_boxes  # data augmentation (issue 18)
