"""DiffCode's hyperparameters: ``DEFAULT`` (tiny, 2 CPU cores, minutes) and ``PAPER`` (section
3.1.2), chosen by the run config's ``train.preset`` as LDPM's stages, the baselines and the LoRA
study choose theirs.

Each preset has five blocks: ``model`` (stages I-III: NAF encoder/decoder, codebooks, the latent
denoiser, TARM), ``unet`` and ``swinir`` (the all-in-one comparison restorers), ``train`` (shared
by every stage) and ``steps`` (training steps per stage kind). The config's
``diffcode.overrides.<block>`` sets single keys of a block (:func:`hyperparameters`); what the
study runs on (tasks, degradation levels, data folders, variants, baselines) stays in the config's
``diffcode`` block.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from ...baselines import swinmr, unet
from ...config import deep_merge

#: tiny sizes for the default run
DEFAULT: dict[str, dict[str, Any]] = {
    "model": {
        "naf_blocks": [1, 1, 1],
        "channels": [8, 16, 32],
        "codebook_size": 64,  # items per codebook (paper 8192)
        "code_dim": 32,  # (paper 256)
        "rq_depth": 3,  # residual quantisation depth D (paper 8)
        "commitment": 0.25,  # delta in eq. 3
        # an item assigned fewer times per batch (EMA, decay 0.9) is re-seeded from the batch's
        # latents; 0: never (codebook usage: log.csv perplexity_*)
        "dead_code_threshold": 0.1,
        "diffusion_steps": 8,  # T
        "beta": [0.1, 0.99],  # beta_1 -> beta_T, linear
        "denoiser_layers": 5,
        "denoiser_hidden": 64,
        # eq. 5 as a mean only, as DiffIR ("variance removed"); true adds its noise term
        "reverse_noise": False,
        "experts": 4,  # TARM experts E
        "top_k": 1,  # experts used per image
        "cls_weight": 0.1,  # task classifier's cross-entropy weight
    },
    # the comparison restorers at the sizes of LDPM's U-Net and SwinMR (SwinIR) baselines
    "unet": copy.deepcopy(dict(unet.BASELINE.default["model"])),
    "swinir": copy.deepcopy(dict(swinmr.BASELINE.default["model"])),
    "train": {"patch": 48, "batch_size": 4, "lr": 2.0e-3, "lr_min": 1.0e-6, "ckpt_every": 100},
    # stage III at 600 steps: chosen on val (docs/tuning.md: 300 / 450 / 600 steps)
    "steps": {"bank": 200, "retrieval": 150, "restore": 600, "unet": 400, "swinir": 150},
}

#: the paper's sizes: NAF [2,2,4,4] x [64,128,256,256], 8192 x 256 codebooks, RQ depth 8, T = 8
#: with beta 0.1 -> 0.99, 5-layer denoiser, 4 experts top-1, 128 x 128 patches, batch 8, Adam
#: 2e-4 cosine to 1e-6; the rest as the default
PAPER: dict[str, dict[str, Any]] = deep_merge(DEFAULT, {
    "model": {"naf_blocks": [2, 2, 4, 4], "channels": [64, 128, 256, 256], "codebook_size": 8192,
              "code_dim": 256, "rq_depth": 8, "denoiser_hidden": 256},
    # the comparison restorers at their published sizes (fastMRI's U-Net, SwinIR's)
    "unet": copy.deepcopy(dict(unet.BASELINE.paper["model"])),
    "swinir": copy.deepcopy(dict(swinmr.BASELINE.paper["model"])),
    "train": {"patch": 128, "batch_size": 8, "lr": 2.0e-4, "ckpt_every": 1000},
    # iterations per stage are not stated in the paper: our choice
    "steps": {"bank": 200000, "retrieval": 100000, "restore": 200000, "unet": 200000,
              "swinir": 200000},
})

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"default": DEFAULT, "paper": PAPER}


def hyperparameters(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The preset ``train.preset`` names with the config's ``diffcode.overrides`` merged over it
    (:func:`ldpm.config.deep_merge`: each override key replaces the preset's)."""
    preset = PRESETS[config["train"]["preset"]]
    return deep_merge(preset, (config.get("diffcode") or {}).get("overrides") or {})
