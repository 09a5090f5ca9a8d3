"""Samplers: respaced DDPM (w/o DSS ablation) and the Dual-Stage Sampler (eq. 8-12); the mean of
several draws (:mod:`.mean`)."""

from . import dual_stage, mean
from .dual_stage import (DualStageSampler, dual_stage_sample, kspace_guidance, kspace_residual,
                         latent_data_consistency, pixel_data_consistency)
from .mean import draw_seeds, sample_mean
from .spaced import (SpacedSchedule, base_alphas_cumprod, plain_sample, plain_spaced_ddpm,
                     posterior_step, predict_z0, respace, space_timesteps)

__all__ = [
    "SpacedSchedule", "base_alphas_cumprod", "space_timesteps", "respace", "predict_z0",
    "posterior_step", "plain_spaced_ddpm", "plain_sample", "pixel_data_consistency",
    "latent_data_consistency", "kspace_residual", "kspace_guidance", "dual_stage_sample",
    "DualStageSampler", "draw_seeds", "sample_mean",
]
