"""fastMRI's U-Net (:class:`ldpm.models.unet.UnetRecon`) on the zero-filled magnitude, trained
with an L1 loss in image units (fastMRI computes it in the normalised units, i.e. the same loss
divided by the input's std), or ``loss: ssim``. The published setting (``fastmri_examples``):
RMSprop, StepLR 40 epochs x0.1, 50 epochs, batch 1."""

from __future__ import annotations

from typing import Any, Mapping

from . import FASTMRI_SCHEDULE, PIXEL_LOSS_SCHEMA, Baseline, pixel_loss_of


def build(cfg: Mapping[str, Any]):
    from ..models.unet import UnetRecon

    return UnetRecon(cfg.get("model"))


def forward(model, batch: Mapping[str, Any], cfg: Mapping[str, Any], options: Mapping[str, Any]):
    return model(batch["x_u"])


BASELINE = Baseline(
    name="unet", title="U-Net", build=build, forward=forward,
    loss=pixel_loss_of(forward), image_domain=True,
    schema={"loss": PIXEL_LOSS_SCHEMA},
    # whole images: the instance normalisation needs them; steps and the weight average chosen
    # on val (docs/tuning.md: +0.3 dB, and 0.02 dB between 1 and 2 training threads, not 0.19)
    default={"model": {"chans": 8, "num_pool_layers": 3, "drop_prob": 0.0}, "loss": "l1",
             "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 2, "crop": None, "n_steps": 1200,
             "ema": 0.99},
    paper={"model": {"chans": 32, "num_pool_layers": 4, "drop_prob": 0.0}, "loss": "l1",
           "optimizer": "rmsprop", "lr": 1e-3, **FASTMRI_SCHEDULE},
)
