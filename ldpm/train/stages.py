"""One pipeline training stage from the manifest: what ``ldpm train --stage NAME`` runs.

Stages of LDPM (in DAG order): ``sketcher``; ``vae_natural`` (only without SD weights: the VAE
trained on natural photographs, :mod:`ldpm.data.natural`, that MR-VAE is fine-tuned from, as
the paper fine-tunes SD's); ``vae`` (MR-VAE, fine-tuned from SD's VAE when
``pretrained.sd_path`` is set, else from ``vae_natural``); ``denoiser`` (only without SD weights: an unconditional latent
denoiser trained on MR-VAE latents, then frozen as the prior); ``controlnet`` (MRControlNet's
control branch). Baselines: one stage each (:mod:`ldpm.baselines`: ``unet``, ``varnet``,
``swinmr``, ``score_mri``). A registered study's stages (:class:`ldpm.methods.graph.Study`)
train through the study's own ``train``.

Stage configs are the preset (``ldpm.train.presets`` / each baseline's module / the study's
``presets``, ``default`` or ``paper``) with the config's ``train.stages.<stage>``
overrides; an override key the preset does not have is refused, so a typo cannot silently fall
back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..checkpoints import load_prior
from ..config import RUN_KEYS
from ..data.dataset import SliceDataset, SliceStream
from ..data.store import load_split
from ..errors import LdpmInputError
from ..methods.graph import BASELINES as BASELINE_STAGES, all_stages, stage_study
from .runtime import Runtime


def training_images(manifest: str | Path, split: str = "train") -> torch.Tensor:
    """The split's targets as [N, 1, H, W] float32, each scaled by its volume's max to ~[0, 1].

    This only keeps raw fastMRI magnitudes (~1e-4) in a sane float range; every stage then
    divides each image by ``max |x_u|`` of its simulated measurement
    (:func:`ldpm.train.loop.make_batch`), the normalisation reconstruction applies, which
    makes this first scale irrelevant.
    """
    targets, rows = load_split(manifest, split)
    if len(targets) == 0:
        raise LdpmInputError(manifest, f"has no {split!r} slices",
                             "add subjects or raise data.split_fractions.train")
    scale = rows["volume_max"].to_numpy(np.float32)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(targets / scale, dtype=np.float32))[:, None]


def training_stream(manifest: str | Path, seed: int, runtime: Runtime,
                    workers: int | None = None) -> SliceStream:
    """The split's slices as :func:`training_images` gives them, streamed from their stores
    for this data-parallel rank (:class:`ldpm.data.dataset.SliceStream`, sampler seeded by
    ``seed``). ``workers``: DataLoader worker processes (None: 0 on the CPU, 4 on a GPU)."""
    if workers is None:
        workers = 4 if runtime.device.type == "cuda" else 0
    return SliceStream(SliceDataset(manifest, "train", normalize=True), seed, runtime.rank,
                       runtime.world_size, workers, runtime.device)


def stage_config(stage: str, overrides: Mapping[str, Any] | None, preset: str,
                 masks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The preset config of ``stage`` with ``overrides``, checked against the stage's schema
    (keys, types, ranges: ``config/schemas/config.schema.yaml``).

    ``masks``: the run config's ``masks`` block; its ``acceleration`` and ``center_fraction``
    are the training masks of every stage (``cfg["masks"]``), as of the test shards.
    """
    if stage in BASELINE_STAGES:
        from .baselines import DEFAULT_CONFIGS, PAPER_CONFIGS

        base = {"default": DEFAULT_CONFIGS, "paper": PAPER_CONFIGS}[preset][stage]
    elif stage_study(stage) is not None:
        base = stage_study(stage).presets(preset)[stage]
    else:
        from .presets import DEFAULT_CONFIG, PAPER_CONFIG

        base = {"default": DEFAULT_CONFIG, "paper": PAPER_CONFIG}[preset][stage]
    from ..config import deep_merge, training_masks, validate_stage_overrides

    # a run key at its RUN_KEYS value is dropped: the stage config, its checkpoint and its
    # meta.json are then those of a run without it
    overrides = {k: v for k, v in validate_stage_overrides(stage, overrides or {}).items()
                 if not (k in RUN_KEYS and v == RUN_KEYS[k])}
    return {**deep_merge(base, overrides),
            "masks": training_masks({"masks": masks} if masks is not None else None)}


def _need(deps: Mapping[str, Path], *names: str) -> None:
    for name in names:
        if name not in deps:
            raise LdpmInputError("ldpm train", f"the {name} checkpoint folder is missing",
                                 f"pass --dep {name}=<folder>")


def run_stage(stage: str, manifest: str | Path, out_dir: str | Path, overrides: Mapping | None,
              preset: str, seed: int, deps: Mapping[str, Path],
              pretrained: Mapping[str, str | None], device: str = "auto",
              masks: Mapping[str, Any] | None = None) -> None:
    """Train ``stage`` on the manifest's training split into ``out_dir`` (resumable).

    ``masks``: the run config's ``masks`` block (training masks have the test geometry).

    ``device``: ``auto`` (a GPU if one is visible), ``cpu`` or ``cuda``; under torchrun each rank
    trains data-parallel on its own GPU (:mod:`ldpm.train.runtime`).
    """
    if stage not in all_stages():
        raise LdpmInputError(f"stage {stage!r}", "unknown stage", f"use one of: {', '.join(all_stages())}")
    from .runtime import current_runtime

    rt = current_runtime(device)
    cfg = stage_config(stage, overrides, preset, masks)
    if cfg.get("loader", "memory") == "stream":
        images = training_stream(manifest, seed, rt, cfg.get("loader_workers"))
    elif stage == "vae_natural":  # trains on photographs of the slices' size (ldpm.data.natural)
        images = torch.empty((0, 1, *SliceDataset(manifest, "train").image_shape))
    else:
        images = training_images(manifest)
    try:
        _train(stage, images, manifest, out_dir, cfg, seed, deps, pretrained, rt)
    finally:
        if isinstance(images, SliceStream):
            images.close()


def _train(stage: str, images: torch.Tensor | SliceStream, manifest: str | Path,
           out_dir: str | Path, cfg: dict[str, Any], seed: int, deps: Mapping[str, Path],
           pretrained: Mapping[str, str | None], rt: Runtime) -> None:
    """Run ``stage``'s training function on ``images`` (see :func:`run_stage`)."""
    sd_path = pretrained.get("sd_path") or None
    if stage in BASELINE_STAGES:
        from ..baselines import baseline
        from .baselines import train_baseline

        cfg = baseline(stage).with_pretrained(cfg, pretrained)
        train_baseline(stage, images, cfg, out_dir, seed=seed, runtime=rt)
    elif stage == "sketcher":
        from .sketcher import train_sketcher

        train_sketcher(images, cfg, out_dir, seed=seed, runtime=rt)
    elif stage in ("vae", "vae_natural"):
        from .vae import train_vae

        init = None
        if stage == "vae_natural":
            from ..data.natural import natural_images

            images = torch.from_numpy(natural_images(images.shape[-1]))[:, None]
        elif not sd_path:
            _need(deps, "vae_natural")
            init = deps["vae_natural"]
        train_vae(images, cfg, out_dir, seed=seed, sd_path=None if stage == "vae_natural" else sd_path,
                  vgg_weights=pretrained.get("vgg16_path") or None, runtime=rt, init=init,
                  stage=stage)
    elif stage == "denoiser":
        from ..checkpoints import load_vae
        from .denoiser import train_denoiser

        _need(deps, "vae")
        train_denoiser(images, cfg, out_dir, load_vae(deps["vae"]), seed=seed, runtime=rt)
    elif stage_study(stage) is not None:
        stage_study(stage).train(stage, manifest, images, cfg, out_dir, deps, sd_path, seed, runtime=rt)
    else:  # controlnet
        from ..checkpoints import load_sketcher, load_vae
        from .controlnet import train_controlnet

        _need(deps, "sketcher", "vae")
        denoiser, null = load_prior(deps, sd_path)
        train_controlnet(images, cfg, out_dir, load_sketcher(deps["sketcher"]), load_vae(deps["vae"]),
                         denoiser, null, seed=seed, runtime=rt)
