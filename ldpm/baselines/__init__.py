"""The trained baselines of Table I, one module each (``unet``, ``varnet``, ``swinmr``,
``score_mri``), and the registry that every part of the pipeline asks about them.

A baseline module declares ``BASELINE = Baseline(...)``: its name (the name of its training
stage and of its reconstruction method), its title in the tables, its network builder, its
forward pass, its training loss, its presets (``default`` and ``paper``: the keys it adds to or
changes in the shared trainer's, :data:`ldpm.train.baselines.SHARED`) and the schema of the
stage keys it adds. Importing a baseline module does not import torch: the DAG, the config
check and the tables read the declarations, and each function imports what it runs.

Who asks: :mod:`ldpm.methods.graph` (the names: stages and methods), :mod:`ldpm.config` (each
baseline's ``train.stages`` and ``inference`` schema, its name among ``methods``),
:mod:`ldpm.train.baselines` (presets, loss), :mod:`ldpm.checkpoints` (network),
:mod:`ldpm.methods.baselines` (forward pass) and :mod:`ldpm.report.tables` (titles).

The registry holds every module of this package, in name order, then those named in the
environment variable ``LDPM_BASELINE_MODULES`` (importable module names, comma-separated: a
baseline kept outside the package). A new baseline is one new module here and its published
values in ``config/paper_values.yaml``; adding its name to the config's ``methods`` runs it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

from ..errors import LdpmInputError

#: importable modules that each declare one more baseline (comma-separated)
MODULES_VARIABLE = "LDPM_BASELINE_MODULES"

#: the ``loss`` key of a baseline trained with a pixel loss (:func:`ldpm.losses.pixel_loss`)
PIXEL_LOSS_SCHEMA = {"type": "string", "enum": ["l1", "ssim"]}
# fastMRI's published schedule for its U-Net and E2E-VarNet (``fastmri_examples``): batch 1, whole
# images, 50 epochs with the rate times 0.1 after 40
FASTMRI_SCHEDULE = {"batch_size": 1, "crop": None, "n_steps": None, "epochs": 50,
                    "lr_milestones_epochs": [40], "ckpt_every": 1000}


def _unchanged(cfg: dict, pretrained: Mapping[str, Any]) -> dict:
    return cfg


def pixel_loss_of(forward: Callable[..., Any]) -> Callable[..., tuple[Any, dict[str, float]]]:
    """The training loss of a network run by ``forward``: :func:`ldpm.losses.pixel_loss` of its
    output against the target (``cfg["loss"]``: ``l1`` or ``ssim``)."""
    def loss(model, batch: Mapping[str, Any], cfg: Mapping[str, Any], generator=None,
             criterion=None) -> tuple[Any, dict[str, float]]:
        from ..losses import pixel_loss

        value = pixel_loss(forward(model, batch, cfg, {}), batch["target"], cfg.get("loss"))
        return value, {"loss": value.item()}

    return loss


@dataclass(frozen=True)
class Baseline:
    """One trained baseline.

    ``build(cfg) -> nn.Module``: the network of a stage config (``cfg["model"]``).
    ``forward(model, batch, cfg, options) -> [B, 1, H, W]``: the reconstruction of a batch
    normalised by its measurement scale (keys ``x_u`` [B, 1, H, W] zero-filled magnitude,
    ``k_u`` [B, H, W] complex, ``mask`` [B, W]; at inference also ``seeds``, one per slice);
    ``options`` are the method's (``ldpm reconstruct --options``).
    ``loss(model, batch, cfg, generator, criterion) -> (loss, {name: float})``: the training
    loss of a batch of :func:`ldpm.train.loop.make_batch` (with ``target``) and the scalars to
    log; ``criterion`` is what :attr:`criterion` built for the run, or None.
    ``image_domain``: the network sees the zero-filled image, so training undersamples whole
    images and crops the (zero-filled, target) pair after; otherwise the image is cropped first.
    ``criterion(cfg) -> nn.Module``: a loss module built once per training run (moved to its
    device), or None. ``with_pretrained(cfg, pretrained) -> cfg``: the stage config with the
    run's local weights (the config's ``pretrained`` block) that it uses.
    ``schema``: JSON schema of each stage key it adds to the shared ones;
    ``inference_schema``: of its ``inference.<name>`` block (merged into its method's
    options), or None when it takes none.
    """

    name: str
    title: str
    build: Callable[[Mapping[str, Any]], Any]
    forward: Callable[..., Any]
    loss: Callable[..., tuple[Any, dict[str, float]]]
    default: Mapping[str, Any]
    paper: Mapping[str, Any]
    schema: Mapping[str, Any] = field(default_factory=dict)
    image_domain: bool = False
    criterion: Callable[[Mapping[str, Any]], Any] | None = None
    with_pretrained: Callable[[dict, Mapping[str, Any]], dict] = _unchanged
    inference_schema: Mapping[str, Any] | None = None


def _module_names() -> list[str]:
    own = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    extra = [m.strip() for m in os.environ.get(MODULES_VARIABLE, "").split(",") if m.strip()]
    return [f"{__name__}.{m}" for m in own] + extra


@lru_cache(maxsize=1)
def baselines() -> dict[str, Baseline]:
    """name -> :class:`Baseline` of every registered baseline (read once per process)."""
    out: dict[str, Baseline] = {}
    for module_name in _module_names():
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise LdpmInputError(f"baseline module {module_name!r}", f"cannot be imported ({e})",
                                 f"fix it, or remove it from {MODULES_VARIABLE}") from e
        declared = getattr(module, "BASELINE", None)
        if not isinstance(declared, Baseline):
            raise LdpmInputError(f"baseline module {module_name!r}", "declares no BASELINE",
                                 "set BASELINE = ldpm.baselines.Baseline(...) in it")
        if declared.name in out:
            raise LdpmInputError(f"baseline module {module_name!r}",
                                 f"declares {declared.name!r} a second time", "rename it")
        out[declared.name] = declared
    return out


def baseline(name: str) -> Baseline:
    """The registered baseline ``name``."""
    known = baselines()
    if name not in known:
        raise LdpmInputError(f"baseline {name!r}", "unknown baseline", f"use one of {tuple(known)}")
    return known[name]


__all__ = ["Baseline", "MODULES_VARIABLE", "PIXEL_LOSS_SCHEMA", "baseline", "baselines",
           "pixel_loss_of"]
