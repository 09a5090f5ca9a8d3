"""SwinMR, nPI version (:class:`ldpm.models.swinmr.SwinMR`) on the zero-filled magnitude,
trained with its own loss (:class:`ldpm.losses.SwinMRLoss`: Charbonnier image and frequency
terms, and the VGG19 perceptual term when ``pretrained.vgg19_path`` names local weights).
The published setting (``train_swinmr_CCnpi_G1D30.json``): Adam 2e-4, batch 8, MultiStepLR
[50k, 80k, 90k, 100k] x0.5, EMA 0.999."""

from __future__ import annotations

from typing import Any, Mapping

from . import Baseline

#: SwinMR's loss weights (its ``train`` section); ``vgg19_weights`` is set from the run's
#: ``pretrained.vgg19_path``
LOSS = {"alpha": 15.0, "beta": 0.1, "gamma": 0.0025, "charbonnier_eps": 1e-9, "vgg19_weights": None}


def build(cfg: Mapping[str, Any]):
    from ..models.swinmr import SwinMR

    return SwinMR(cfg.get("model"))


def forward(model, batch: Mapping[str, Any], cfg: Mapping[str, Any], options: Mapping[str, Any]):
    return model(batch["x_u"])


def swinmr_loss(cfg: Mapping[str, Any]):
    from ..losses import SwinMRLoss

    return SwinMRLoss(cfg.get("loss"))


def loss(model, batch: Mapping[str, Any], cfg: Mapping[str, Any], generator=None, criterion=None):
    pred = forward(model, batch, cfg, {})
    crit = criterion if criterion is not None else swinmr_loss(cfg)
    value, parts = crit(pred, batch["target"])
    return value, {"loss": value.item(), **parts}


def with_pretrained(cfg: dict, pretrained: Mapping[str, Any]) -> dict:
    """The perceptual term reads the run's local VGG19 weights (``pretrained.vgg19_path``)."""
    if not pretrained.get("vgg19_path"):
        return cfg
    return {**cfg, "loss": {**(cfg.get("loss") or {}), "vgg19_weights": pretrained["vgg19_path"]}}


BASELINE = Baseline(
    name="swinmr", title="SwinMR", build=build, forward=forward, loss=loss, image_domain=True,
    criterion=swinmr_loss, with_pretrained=with_pretrained,
    schema={"loss": {
        "type": "object", "additionalProperties": False,
        "description": "SwinMR's loss weights (alpha pixel, beta frequency, gamma perceptual)",
        "properties": {
            "alpha": {"type": "number", "minimum": 0}, "beta": {"type": "number", "minimum": 0},
            "gamma": {"type": "number", "minimum": 0},
            "charbonnier_eps": {"type": "number", "exclusiveMinimum": 0},
            "vgg19_weights": {"type": ["string", "null"],
                              "description": "set from pretrained.vgg19_path"}}}},
    default={"model": {"embed_dim": 16, "depths": [2], "num_heads": [2], "window_size": 8,
                       "mlp_ratio": 2.0},
             "loss": dict(LOSS), "optimizer": "adam", "lr": 2e-3, "batch_size": 4, "crop": 64,
             "n_steps": 800},  # steps chosen on val (docs/tuning.md)
    paper={"model": {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
                     "mlp_ratio": 2.0},
           "loss": dict(LOSS), "optimizer": "adam", "lr": 2e-4, "batch_size": 8, "crop": None,
           "n_steps": 100000, "lr_milestones": [50000, 80000, 90000, 100000], "lr_gamma": 0.5,
           "ema": 0.999, "ckpt_every": 1000},
)
