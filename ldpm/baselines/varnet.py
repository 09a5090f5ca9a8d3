"""E2E-VarNet for single-coil nPI data (:class:`ldpm.models.varnet.VarNet`) on the measured
k-space and mask, trained with an L1 loss on the magnitude, or ``loss: ssim`` (fastMRI's).
The published setting (``fastmri_examples``): Adam, StepLR 40 epochs x0.1, 50 epochs, batch 1,
SSIM loss. fastMRI's published multicoil weights are a separate method, ``varnet_official``
(:mod:`ldpm.methods.baselines`)."""

from __future__ import annotations

from typing import Any, Mapping

from . import FASTMRI_SCHEDULE, PIXEL_LOSS_SCHEMA, Baseline, pixel_loss_of


def build(cfg: Mapping[str, Any]):
    from ..models.varnet import VarNet

    return VarNet(cfg.get("model"))


def forward(model, batch: Mapping[str, Any], cfg: Mapping[str, Any], options: Mapping[str, Any]):
    return model(batch["k_u"], batch["mask"])


BASELINE = Baseline(
    name="varnet", title="E2E-VarNet", build=build, forward=forward,
    loss=pixel_loss_of(forward),
    schema={"loss": PIXEL_LOSS_SCHEMA},
    # whole images: its k-space needs them; steps chosen on val (docs/tuning.md)
    default={"model": {"num_cascades": 3, "chans": 6, "pools": 2}, "loss": "l1",
             "optimizer": "adam", "lr": 2e-3, "batch_size": 2, "crop": None, "n_steps": 600},
    paper={"model": {"num_cascades": 12, "chans": 18, "pools": 4}, "loss": "ssim",
           "optimizer": "adam", "lr": 3e-4, **FASTMRI_SCHEDULE},
)
