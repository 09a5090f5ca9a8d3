"""Score-MRI: a score prior (:class:`ldpm.models.score.ScoreNet`) trained by denoising score
matching (:func:`ldpm.losses.dsm_loss`) on the training images, sampled at reconstruction by
predictor-corrector steps with k-space data consistency
(:func:`ldpm.sampling.score_pc.score_pc_sample`), each slice from its own seed; ``n_samples``
draws of a slice are averaged (:mod:`ldpm.sampling.mean`, as LDPM's are) and the mean put through
the sampler's last step, eq. 3's DC, again (the published sampler: one draw). The published
setting (``fastmri_knee_320_ncsnpp_continuous`` and ``score_sde``'s defaults): Adam 2e-4,
warmup 5000, grad clip 1, EMA 0.999, sigma 0.01..378, N 2000, snr 0.16; its batch size and
epoch count are not stated in the paper: 8 and 100 are our choice."""

from __future__ import annotations

from typing import Any, Mapping

from . import Baseline

#: sampler options a method's ``options`` (the config's ``inference.score_mri``) override
SAMPLER_OPTIONS = ("n_steps", "snr", "n_corrector", "eps", "predictor", "n_samples")


def build(cfg: Mapping[str, Any]):
    from ..models.score import ScoreNet

    return ScoreNet(cfg.get("model"))


def forward(model, batch: Mapping[str, Any], cfg: Mapping[str, Any], options: Mapping[str, Any]):
    import torch

    from ..models.score import sde_from_config
    from ..sampling.dual_stage import pixel_data_consistency
    from ..sampling.mean import draw_seeds, sample_mean
    from ..sampling.score_pc import score_pc_sample

    samp = {**cfg["sampler"], **{k: options[k] for k in SAMPLER_OPTIONS if k in options}}
    sde = sde_from_config(cfg, int(samp["n_steps"]))

    def draw(k: int):
        gens = [torch.Generator().manual_seed(s) for s in draw_seeds(batch["seeds"], k)]
        return score_pc_sample(model, batch["k_u"], batch["mask"], sde, float(samp["snr"]),
                               int(samp["n_corrector"]), float(samp["eps"]), gens,
                               str(samp["predictor"])).abs()[:, None]

    n_samples = int(samp.get("n_samples", 1))  # a checkpoint whose sampler has none: one draw
    x = sample_mean(draw, n_samples)
    if n_samples == 1:
        return x
    # the mean through the sampler's own last step, eq. 3's DC, which each draw ended with
    return pixel_data_consistency(x, batch["k_u"][:, None], batch["mask"][:, None, None, :])


def loss(model, batch: Mapping[str, Any], cfg: Mapping[str, Any], generator=None, criterion=None):
    from ..losses import dsm_loss
    from ..models.score import sde_from_config

    value = dsm_loss(model, batch["target"], sde_from_config(cfg), generator,
                     float(cfg["sampler"]["eps"]))
    return value, {"loss": value.item()}


_SAMPLER = {"n_steps": {"type": "integer", "minimum": 1},
            "snr": {"type": "number", "exclusiveMinimum": 0},
            "n_corrector": {"type": "integer", "minimum": 0},
            "predictor": {"type": "string", "enum": ["reverse_diffusion", "ancestral"]},
            "n_samples": {"type": "integer", "minimum": 1}}

BASELINE = Baseline(
    name="score_mri", title="Score-MRI", build=build, forward=forward, loss=loss,
    schema={
        "sde": {"type": "object", "additionalProperties": False, "properties": {
            "sigma_min": {"type": "number", "exclusiveMinimum": 0},
            "sigma_max": {"type": "number", "exclusiveMinimum": 0}}},
        "sampler": {"type": "object", "additionalProperties": False, "properties": {
            **_SAMPLER, "eps": {"type": "number", "exclusiveMinimum": 0}}}},
    inference_schema={"type": "object", "additionalProperties": False, "properties": _SAMPLER},
    default={"model": {"block_out_channels": [8, 16, 32], "layers_per_block": 1,
                       "norm_num_groups": 4, "add_attention": False},
             "sde": {"sigma_min": 0.01, "sigma_max": 20.0},
             # N = 20 only: the ancestral predictor keeps the marginal noise level right at so
             # few steps, where the official reverse-diffusion one lags (see
             # ldpm.sampling.score_pc); the paper preset uses the official one, N = 2000.
             # n_samples: draws averaged per slice, as many as LDPM's (docs/tuning.md)
             "sampler": {"n_steps": 20, "snr": 0.16, "n_corrector": 1, "eps": 1e-5,
                         "predictor": "ancestral", "n_samples": 4},
             # an average of the weights (EMA) and twice the steps: the last weights alone moved
             # val PSNR by 0.5 dB between 1 and 2 threads (docs/tuning.md)
             "optimizer": "adam", "lr": 2e-3, "batch_size": 4, "crop": 64, "n_steps": 1200,
             "grad_clip": 1.0, "ema": 0.995},
    paper={"model": {"block_out_channels": [128, 256, 256, 256], "layers_per_block": 4,
                     "norm_num_groups": 32, "add_attention": True},
           "sde": {"sigma_min": 0.01, "sigma_max": 378.0},
           "sampler": {"n_steps": 2000, "snr": 0.16, "n_corrector": 1, "eps": 1e-5,
                       "predictor": "reverse_diffusion", "n_samples": 1},
           "optimizer": "adam", "lr": 2e-4, "batch_size": 8, "crop": None, "n_steps": None,
           "epochs": 100, "warmup": 5000, "grad_clip": 1.0, "ema": 0.999, "ckpt_every": 1000},
)
