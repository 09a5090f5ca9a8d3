"""Stage configs in one place: ``DEFAULT_CONFIG`` (tiny, CPU, minutes) and ``PAPER_CONFIG``.

Each stage's dict is what ``train_<stage>(images, cfg, ...)`` takes; ``model`` holds the
network's own config. A stage trains for ``n_steps`` if set, else ``ceil(epochs * N / batch_size)``.
``crop: null`` trains on whole images; otherwise whole images are undersampled and the crop is
taken after. ``lr_schedule``: ``constant`` or ``cosine`` (linear warm-up over ``warmup`` steps,
then cosine decay to 0). The masks come from the run config's ``masks`` block and the
Dual-Stage Sampler's settings from its ``inference.ldpm`` block, never from here.
"""

from __future__ import annotations

import copy
from typing import Any

#: A 4x VAE (three levels): 32 x 32 latents of the 128 x 128 default slices (the paper's SD VAE is
#: 8x: 40 x 40 latents at 320 x 320); an 8x VAE of this size caps the whole method near 25 dB
#: here (docs/tuning.md).
_VAE_MODEL = {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "latent_channels": 4,
              "norm_num_groups": 8, "scaling_factor": 0.18215, "mid_block_add_attention": True,
              "init_logvar": -6.0}
_VAE_LOSS = {"mu": 1.0, "nu": 0.2, "omega": 1e-6, "lambda": 0.65}  # eq. 5

#: the default run's augmentation of the MR training images (ldpm.train.loop.augment_images),
#: shared by the Sketcher, MR-VAE, control branch and the baselines (ldpm/train/baselines.py)
AUGMENT: dict[str, list[float]] | None = None

DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "sketcher": {
        # pixel-unshuffle 2 (as DiffBIR's stage-1 SwinIR unshuffles 8): a window of 8 tokens
        # covers 16 pixels with 1/4 of the tokens, which pays for a wider, deeper net (val:
        # docs/tuning.md)
        "model": {"in_channels": 1, "out_channels": 1, "embed_dim": 48, "depths": [2, 2, 2],
                  "num_heads": [3, 3, 3], "window_size": 8, "mlp_ratio": 2.0, "unshuffle_scale": 2,
                  "img_range": 1.0},
        "lr": 1e-3, "lr_schedule": "cosine", "warmup": 20, "batch_size": 4, "crop": 64,
        "n_steps": 1000, "epochs": None, "ckpt_every": 100,
    },
    # the VAE MR-VAE starts from when there are no SD weights: trained on natural photographs
    # (ldpm.data.natural), as SD's VAE was, with eq. 5's loss (GAN off: disc_start null). The rate,
    # step count and weight average were chosen on val: lr 5e-4 for 400 steps ends 0.01 dB apart
    # between 1 and 2 training threads (lr 1e-3 for 200 steps: 0.40) and 2.7 dB higher
    # (docs/tuning.md)
    "vae_natural": {
        "model": _VAE_MODEL, "lr": 5e-4, "lr_schedule": "cosine", "warmup": 20, "disc_lr": 2e-4,
        "betas": [0.5, 0.9], "batch_size": 8, "crop": 64, "n_steps": 400, "epochs": None,
        "ckpt_every": 100, "loss_weights": _VAE_LOSS, "disc": {"ndf": 16, "n_layers": 2},
        "disc_start": None, "fit_scaling_factor": True, "ema": 0.99,
    },
    "vae": {
        "model": _VAE_MODEL,  # used only without an initial VAE (vae_natural or SD's)
        "lr": 1e-3, "lr_schedule": "cosine", "warmup": 20, "disc_lr": 2e-4, "betas": [0.5, 0.9],
        "batch_size": 8, "crop": 64, "n_steps": 450, "epochs": None, "ckpt_every": 100,
        # the GAN term of eq. 5 is off (disc_start null): at this scale it cost 1.4 dB on val even
        # in the last 150 of 1,000 steps (docs/tuning.md); the paper preset starts it at step 0
        "loss_weights": _VAE_LOSS, "disc": {"ndf": 16, "n_layers": 2}, "disc_start": None,
        # A VAE trained from scratch has no SD-like latent scale: set scaling_factor = 1/std of
        # the training latents after training (as SD's 0.18215 was obtained).
        # lr 1e-3 with a weight average: on the natural VAE above, 0.02 dB between thread counts
        # and 0.07 dB above lr 2e-3 with the last weights on val (docs/tuning.md)
        "fit_scaling_factor": True, "ema": 0.99,
    },
    "denoiser": {
        # three levels on the 32 x 32 latents, attention only at 8 x 8 (and the middle block):
        # attention at 32 x 32 costs 7x the step time (2.7 vs 0.4 s at batch 8; docs/tuning.md)
        "model": {"block_out_channels": [32, 64, 64], "layers_per_block": 1,
                  "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                  "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                  "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 16,
                  "latent_channels": 4},
        "lr": 1e-3, "lr_schedule": "cosine", "warmup": 20, "batch_size": 8, "crop": None,
        "flip": True, "n_steps": 400, "epochs": None, "ckpt_every": 100,
    },
    "controlnet": {
        # n_masks: each step draws from 8 seeded masks per training image whose Sketcher output
        # and latents were computed once (the frozen Sketcher dominated the step: 1.35 of 1.8 s)
        "lr": 1e-3, "lr_schedule": "cosine", "warmup": 20, "batch_size": 4, "crop": None,
        "n_masks": 4, "n_steps": 1000, "epochs": None, "ckpt_every": 100,
    },
}

#: The paper's sizes (III-A-2) with SD 2-1-base (a local diffusers folder, ``sd_path``).
PAPER_CONFIG: dict[str, dict[str, Any]] = {
    "sketcher": {
        # DiffBIR's stage-1 SwinIR (embed 180, 8 RSTBs of 6 blocks, 6 heads, window 8,
        # pixel-unshuffle 8 + nearest+conv upsampling), on 1-channel MR magnitudes.
        "model": {"in_channels": 1, "out_channels": 1, "embed_dim": 180, "depths": [6] * 8,
                  "num_heads": [6] * 8, "window_size": 8, "mlp_ratio": 2.0, "unshuffle_scale": 8,
                  "img_range": 1.0},
        "lr": 1e-4, "lr_schedule": "constant", "warmup": 0, "batch_size": 8, "crop": None,
        "n_steps": None, "epochs": 30,
        "ckpt_every": 1000,
    },
    # only without SD weights (the paper fine-tunes SD's VAE): as the default's
    "vae_natural": copy.deepcopy(DEFAULT_CONFIG["vae_natural"]),
    "vae": {
        "model": None,  # fine-tuned from SD 2-1-base's vae (sd_path)
        "lr": 1e-5, "lr_schedule": "constant", "warmup": 0, "disc_lr": 1e-5, "betas": [0.5, 0.9],
        "batch_size": 8, "crop": None,
        "n_steps": None, "epochs": 50,
        "ckpt_every": 1000,
        "loss_weights": {"mu": 1.0, "nu": 0.2, "omega": 1e-6, "lambda": 0.65},
        "disc": {"ndf": 64, "n_layers": 3}, "disc_start": 0,
        "fit_scaling_factor": False,  # keep SD's 0.18215
    },
    "denoiser": {
        "model": None,  # SD 2-1-base's unet (sd_path), frozen; not trained
        "lr": None, "lr_schedule": "constant", "warmup": 0, "batch_size": None, "crop": None,
        "flip": False, "n_steps": 0, "epochs": None,
        "ckpt_every": 1000,
    },
    "controlnet": {
        # The paper writes "lr = 10e-4" (literally 1e-3); DiffBIR's IRControlNet uses 1e-4.
        "lr": 1e-3, "lr_schedule": "constant", "warmup": 0, "batch_size": 16, "crop": 320,
        "n_masks": None, "n_steps": None, "epochs": 50,
        "ckpt_every": 1000,
    },
}

# the weight average the stage saves as its final weights (ldpm.train.loop.WeightAverage; 0: the
# last step's weights)
for _stage in ("vae_natural", "vae", "denoiser", "controlnet"):
    DEFAULT_CONFIG[_stage].setdefault("ema", 0.0)
    PAPER_CONFIG[_stage].setdefault("ema", 0.0)

# the image-domain MR stages augment their training images (the denoiser trains on fixed
# latents, vae_natural on photographs; the paper preset trains on fastMRI as it is)
for _stage in ("sketcher", "vae_natural", "vae", "controlnet"):
    DEFAULT_CONFIG[_stage]["augment"] = None if _stage == "vae_natural" else AUGMENT
    PAPER_CONFIG[_stage]["augment"] = None
