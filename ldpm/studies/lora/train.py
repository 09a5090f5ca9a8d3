"""LoRA stages: low-rank adapters on LDPM's frozen denoiser, eq. 7's loss.

The adapter sits on the denoiser's attention projections (:mod:`ldpm.studies.lora.models`); the base U-Net
stays frozen and bit-identical. The loss is MRControlNet's (eq. 7,
:func:`ldpm.train.controlnet.controlnet_loss`): ``||eps - eps_theta(z_t, "", t, c_latent)||^2``,
now with ``eps_theta`` = frozen denoiser + adapter + control branch.

* ``lora_r4``, ``lora_r16`` (rank study): the adapter and a *fresh* control branch trained
  jointly. The control branch starts as in the ``controlnet`` stage (same seed, a copy of the
  denoiser's encoder with zero-initialised condition input) and the stage uses the same
  data, batches (the loop's per-step generators), masks, noise, learning rate and number of steps
  (the presets copy the ``controlnet`` preset): the one difference from plain LDPM is the adapter
  (its own learning rate ``lora_lr``; ``B = 0`` at init, so step 0 is exactly LDPM's step 0).
* ``lora_t1``, ``lora_t2`` (two adapters, as the seed combines two LoRAs): one adapter per
  contrast group (``contrasts``: T1-weighted = T1/T1PRE/T1POST; T2/FLAIR), each trained on its
  group's training slices only. Both start from the trained ``controlnet`` stage's control
  branch, kept *frozen*, and train only the adapter: so the two adapters are deltas of one and
  the same generator and can be combined at sampling time (``set_adapters``, weights).
* ``lora_eps_t1``, ``lora_eps_t2`` (adapting the generative prior to a domain): one
  adapter per contrast group on the frozen denoiser alone, trained with the denoiser's own loss
  ``||eps - eps_theta(z_t, "", t)||^2`` (:func:`ldpm.train.denoiser.denoiser_loss`) on the MR-VAE
  latents of that group's training slices; no control branch takes part. At sampling time the
  ``controlnet`` stage's control branch conditions the adapted prior, and the two adapters combine
  as the group adapters do.

``final/``: ``pytorch_lora_weights.safetensors`` (diffusers LoRA weights with their
``LoraConfig``), ``lora.json``; joint stages also the control branch as the ``controlnet`` stage
writes it (so :func:`ldpm.checkpoints.load_controlnet` reads it). ``meta.json`` adds the
trainable parameter counts (``trainable_parameters``, ``adapter_parameters``,
``control_parameters``) to the loop's ``seconds`` and ``steps_done``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from ...data.store import load_split
from ...errors import LdpmInputError
from ...models import MRControlNet, Sketcher, save_controlnet
from ...models.controlnet import NULL_EMBEDDING_FILE
from ...sampling import base_alphas_cumprod
from ...train.controlnet import controlnet_step_fn
from ...train.loop import freeze, resolve_n_steps, train
from ...train.presets import DEFAULT_CONFIG as LDPM_DEFAULT, PAPER_CONFIG as LDPM_PAPER
from ...train.runtime import Runtime
from .graph import LORA_EPS_STAGES, LORA_GROUP_STAGES, LORA_JOINT_STAGES, LORA_STAGES
from .models import DEFAULT_TARGETS, AdapterState, add_lora, count_parameters, save_lora

#: the contrast groups (manifest ``contrast``; fastMRI's ``AXT1PRE`` is read as ``T1PRE``)
T1_GROUP = ["T1", "T1PRE", "T1POST"]
T2_GROUP = ["T2", "FLAIR"]
_LORA_KEYS = {"alpha": None, "targets": list(DEFAULT_TARGETS)}


def _controlnet_keys(controlnet_cfg: Mapping[str, Any], *drop: str) -> dict[str, Any]:
    """The controlnet stage's settings an adapter stage shares (the adapters keep their last
    step's weights: no ``ema``)."""
    return {k: v for k, v in copy.deepcopy(dict(controlnet_cfg)).items() if k not in ("ema", *drop)}


def _joint(controlnet_cfg: Mapping[str, Any], rank: int, lora_lr: float) -> dict[str, Any]:
    return {**_controlnet_keys(controlnet_cfg), "rank": rank, **copy.deepcopy(_LORA_KEYS),
            "lora_lr": lora_lr}


def _group(controlnet_cfg: Mapping[str, Any], contrasts: list[str], n_steps: int | None,
           epochs: float | None, lora_lr: float) -> dict[str, Any]:
    return {**_controlnet_keys(controlnet_cfg, "lr"), "n_steps": n_steps, "epochs": epochs, "rank": 4, **copy.deepcopy(_LORA_KEYS),
            "lora_lr": lora_lr, "contrasts": list(contrasts)}


def _eps(contrasts: list[str], batch_size: int, n_steps: int | None, epochs: float | None,
         lora_lr: float) -> dict[str, Any]:
    """An ε-loss adapter: the denoiser stage's batches of latents, only the adapter trains."""
    return {"lr_schedule": "cosine", "warmup": 0, "batch_size": batch_size, "crop": None,
            "flip": True, "n_steps": n_steps, "epochs": epochs, "ckpt_every": 100, "rank": 4,
            **copy.deepcopy(_LORA_KEYS), "lora_lr": lora_lr, "contrasts": list(contrasts)}


#: tiny CPU defaults: joint stages = the controlnet stage's preset + the adapter; group adapters
#: train for fewer steps (only the adapter learns, on about half of the slices)
DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "lora_r4": _joint(LDPM_DEFAULT["controlnet"], 4, 1e-3),
    "lora_r16": _joint(LDPM_DEFAULT["controlnet"], 16, 1e-3),
    "lora_t1": _group(LDPM_DEFAULT["controlnet"], T1_GROUP, 100, None, 1e-3),
    "lora_t2": _group(LDPM_DEFAULT["controlnet"], T2_GROUP, 100, None, 1e-3),
    "lora_eps_t1": _eps(T1_GROUP, 8, 100, None, 1e-3),
    "lora_eps_t2": _eps(T2_GROUP, 8, 100, None, 1e-3),
}
#: the paper's scale (SD 2-1-base's U-Net): LoRA's usual 1e-4, group adapters 10 epochs of their group
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "lora_r4": _joint(LDPM_PAPER["controlnet"], 4, 1e-4),
    "lora_r16": _joint(LDPM_PAPER["controlnet"], 16, 1e-4),
    "lora_t1": _group(LDPM_PAPER["controlnet"], T1_GROUP, None, 10, 1e-4),
    "lora_t2": _group(LDPM_PAPER["controlnet"], T2_GROUP, None, 10, 1e-4),
    "lora_eps_t1": _eps(T1_GROUP, 16, None, 10, 1e-4),
    "lora_eps_t2": _eps(T2_GROUP, 16, None, 10, 1e-4),
}


def group_images(manifest: str | Path, contrasts: Sequence[str], split: str = "train") -> torch.Tensor:
    """The split's slices of the given contrasts as [N, 1, H, W], each scaled by its volume max."""
    targets, rows = load_split(manifest, split)
    keep = rows["contrast"].astype(str).isin([str(c) for c in contrasts]).to_numpy()
    if not keep.any():
        found = sorted(rows["contrast"].astype(str).unique())
        raise LdpmInputError(manifest, f"has no {split!r} slices of contrasts {list(contrasts)}",
                             f"set train.stages.<stage>.contrasts to some of {found}")
    scale = rows["volume_max"].to_numpy(np.float32)[keep, None, None]
    return torch.from_numpy(np.ascontiguousarray(targets[keep] / scale, dtype=np.float32))[:, None]


def train_lora(images: torch.Tensor, cfg: Mapping[str, Any], ckpt_dir: str | Path, sketcher: Sketcher,
               vae: AutoencoderKL, model: MRControlNet, adapter: str, train_control: bool,
               seed: int = 0, n_steps: int | None = None, log: bool = True,
               stop_after: int | None = None, runtime: Runtime | None = None) -> dict[str, Any]:
    """Add adapter ``adapter`` to ``model.denoiser`` and train it (and, if ``train_control``, the
    control branch) with eq. 7's loss; returns the loop's meta dict (``final/`` as described above).

    ``model`` is a fresh :class:`MRControlNet` (joint) or the trained one (its control branch then
    stays frozen). The base denoiser's weights are never updated.
    """
    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    rt = runtime or Runtime()
    sketcher, vae = freeze(sketcher).to(rt.device), freeze(vae).to(rt.device)
    images = images.to(rt.device)
    model.controlnet.requires_grad_(train_control)
    lora_params = add_lora(model.denoiser, adapter, int(cfg["rank"]), cfg.get("alpha"),
                           cfg.get("targets") or DEFAULT_TARGETS, seed=seed)
    model = model.to(rt.device)
    groups = [{"params": list(lora_params.values()), "lr": float(cfg["lora_lr"])}]
    if train_control:
        groups.append({"params": list(model.controlnet.parameters()), "lr": float(cfg["lr"])})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    abar = base_alphas_cumprod()
    counts = {"adapter_parameters": count_parameters(lora_params),
              "control_parameters": count_parameters(model.controlnet.parameters()) if train_control else 0}
    counts["trainable_parameters"] = counts["adapter_parameters"] + counts["control_parameters"]

    step_fn = controlnet_step_fn(model, sketcher, vae, images, cfg, opt, abar, seed, rt, n_steps)

    info = {"adapter": adapter, "rank": int(cfg["rank"]),
            "alpha": float(cfg["alpha"] if cfg.get("alpha") is not None else cfg["rank"]),
            "targets": list(cfg.get("targets") or DEFAULT_TARGETS),
            "control": "fresh, trained jointly" if train_control else "controlnet stage, frozen",
            "contrasts": cfg.get("contrasts"), "n_images": int(len(images)), **counts}

    def save_final(d: Path) -> None:
        save_lora(model.denoiser, adapter, d)
        (d / "lora.json").write_text(json.dumps(info, indent=2) + "\n")
        if train_control:
            save_controlnet(model.controlnet, d)
            save_file({"null": model.null_embedding.contiguous().cpu()}, d / NULL_EMBEDDING_FILE)

    modules = {"lora": AdapterState(model.denoiser, adapter)}
    if train_control:
        modules["controlnet"] = model.controlnet
    return train(step_fn, modules, {"opt": opt}, ckpt_dir, n_steps, seed, save_final,
                 log=log, stage=adapter, config=cfg, stop_after=stop_after, runtime=rt,
                 meta_extra=lambda: info)


def train_lora_eps(images: torch.Tensor, cfg: Mapping[str, Any], ckpt_dir: str | Path,
                   vae: AutoencoderKL, denoiser, null: torch.Tensor, adapter: str, seed: int = 0,
                   n_steps: int | None = None, log: bool = True, stop_after: int | None = None,
                   runtime: Runtime | None = None) -> dict[str, Any]:
    """Add adapter ``adapter`` to the frozen ``denoiser`` and train only it with the denoiser's
    ε-loss on the latents of ``images`` divided by ``max |x_u|`` (and their mirror images if
    ``flip``), as the ``denoiser`` stage trains; returns the loop's meta dict."""
    from ...models import NullContextEps
    from ...train.denoiser import denoiser_step_fn, training_latents

    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    rt = runtime or Runtime()
    latents = training_latents(freeze(vae).to(rt.device), images.to(rt.device), cfg, seed)
    denoiser = freeze(denoiser).to(rt.device)
    lora_params = add_lora(denoiser, adapter, int(cfg["rank"]), cfg.get("alpha"),
                           cfg.get("targets") or DEFAULT_TARGETS, seed=seed)
    denoiser = denoiser.to(rt.device)
    eps_model = NullContextEps(denoiser, null.to(rt.device))
    opt = torch.optim.AdamW(list(lora_params.values()), lr=float(cfg["lora_lr"]), weight_decay=0.0)
    counts = {"adapter_parameters": count_parameters(lora_params), "control_parameters": 0}
    counts["trainable_parameters"] = counts["adapter_parameters"]
    info = {"adapter": adapter, "rank": int(cfg["rank"]),
            "alpha": float(cfg["alpha"] if cfg.get("alpha") is not None else cfg["rank"]),
            "targets": list(cfg.get("targets") or DEFAULT_TARGETS), "loss": "denoiser epsilon",
            "control": "none (the denoiser alone)", "contrasts": cfg.get("contrasts"),
            "n_images": int(len(images)), **counts}
    step_fn = denoiser_step_fn(eps_model, latents, {**cfg, "lr": float(cfg["lora_lr"])}, opt,
                               n_steps, rt)

    def save_final(d: Path) -> None:
        save_lora(denoiser, adapter, d)
        (d / "lora.json").write_text(json.dumps(info, indent=2) + "\n")

    return train(step_fn, {"lora": AdapterState(denoiser, adapter)}, {"opt": opt}, ckpt_dir, n_steps,
                 seed, save_final, log=log, stage=adapter, config=cfg, stop_after=stop_after,
                 runtime=rt, meta_extra=lambda: info)


def run_lora_stage(stage: str, manifest: str | Path, images: torch.Tensor, cfg: Mapping[str, Any],
                   out_dir: str | Path, deps: Mapping[str, Path], sd_path: str | None, seed: int,
                   runtime: Runtime | None = None) -> dict[str, Any]:
    """``ldpm train --stage lora_*``: build the generator the stage adapts, then :func:`train_lora`."""
    from ...checkpoints import load_controlnet, load_prior, load_sketcher, load_vae

    if stage not in LORA_STAGES:
        raise LdpmInputError(f"stage {stage!r}", "is not a LoRA stage", f"use one of: {', '.join(LORA_STAGES)}")
    needed = (["vae"] if stage in LORA_EPS_STAGES else
              ["sketcher", "vae", *(["controlnet"] if stage in LORA_GROUP_STAGES else [])])
    for name in needed:
        if name not in deps:
            raise LdpmInputError("ldpm train", f"the {name} checkpoint folder is missing",
                                 f"pass --dep {name}=<folder>")
    denoiser, null = load_prior(deps, sd_path)
    if stage in LORA_EPS_STAGES:
        return train_lora_eps(group_images(manifest, cfg["contrasts"]), cfg, out_dir,
                              load_vae(deps["vae"]), denoiser, null, stage, seed=seed, runtime=runtime)
    if stage in LORA_JOINT_STAGES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the controlnet stage's initialisation
            model = MRControlNet.from_denoiser(denoiser, null)
    else:
        images = group_images(manifest, cfg["contrasts"])
        model = load_controlnet(deps["controlnet"], denoiser)
    return train_lora(images, cfg, out_dir, load_sketcher(deps["sketcher"]), load_vae(deps["vae"]),
                      model, stage, train_control=stage in LORA_JOINT_STAGES, seed=seed, runtime=runtime)
