"""Training, loading and inference of the Table I baselines: U-Net, E2E-VarNet, SwinMR (nPI),
Score-MRI. All four are trained here from scratch on our nPI data (single-coil k-space of the
RSS image); no official weights are downloaded. fastMRI's official multicoil VarNet weights, which
the paper used, are a separate method, ``varnet_official`` (:mod:`ldpm.methods.baselines`).

Data: ``images`` [N, 1, H, W] magnitudes in [0, 1]. Each step draws a batch (with replacement)
and per-sample 8x masks seeded ``(seed, step, i)`` (:func:`ldpm.train.loop.undersampled_batch`),
all from the shared resumable loop. ``crop`` (random ``crop x crop`` windows): the U-Net and
SwinMR are undersampled on whole images and the (zero-filled, target) pair is cropped after
(:func:`crop_pair`), so the aliasing keeps the test scale; VarNet works on k-space and the score
prior sees no measurement, so for them the image is cropped first (VarNet's default: no crop).

Scale: every method sees its input divided by ``s = max |F^-1(k_u)|`` (per slice, from the
measurement alone) and its output is multiplied back by ``s``, in training and at inference, so
models trained on [0, 1] images apply to raw fastMRI magnitudes. For the U-Net (instance norm)
and VarNet (normalised regulariser, linear DC) this changes nothing; SwinMR and the Score-MRI
prior need it. The score prior is trained on the same ``x / s`` images.

Checkpoint layout (``ckpt_dir``, see :mod:`ldpm.train.loop`): ``last.pt``, ``log.csv``,
``meta.json`` and ``final/`` = ``config.json`` (``{"name", "config"}``: the whole method config)
+ ``model.safetensors`` (EMA weights where ``ema > 0``). :func:`load_baseline` reads ``final/``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoints import build_baseline, check_baseline_name, load_baseline
from ..errors import LdpmInputError
from ..losses import SwinMRLoss, dsm_loss, ssim_loss
from ..models.score import sde_from_config
from .loop import (WeightAverage, crop_pair, make_batch, random_batch, resolve_n_steps,
                   stage_masks, sync_gradients, train)
from .presets import AUGMENT
from .runtime import Runtime

_COMMON = {"epochs": None, "ckpt_every": 50, "ema": 0.0, "grad_clip": None, "warmup": 0,
           "lr_milestones": [], "lr_milestones_epochs": [], "lr_gamma": 0.1, "augment": None}

#: Tiny CPU configs: each trains in about a minute on one core (64x64 crops where they help;
#: the U-Net's instance normalisation and VarNet's k-space need whole images).
DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {**_COMMON, "model": {"chans": 8, "num_pool_layers": 3, "drop_prob": 0.0},
             "loss": "l1", "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 2, "crop": None,
             "n_steps": 300},
    "varnet": {**_COMMON, "model": {"num_cascades": 3, "chans": 6, "pools": 2},
               "loss": "l1", "optimizer": "adam", "lr": 2e-3, "batch_size": 2, "crop": None,
               "n_steps": 150},
    "swinmr": {**_COMMON, "model": {"embed_dim": 16, "depths": [2], "num_heads": [2],
                                    "window_size": 8, "mlp_ratio": 2.0},
               "loss": {"alpha": 15.0, "beta": 0.1, "gamma": 0.0025, "charbonnier_eps": 1e-9,
                        "vgg19_weights": None},
               "optimizer": "adam", "lr": 2e-3, "batch_size": 4, "crop": 64, "n_steps": 200},
    "score_mri": {**_COMMON, "model": {"block_out_channels": [8, 16, 32], "layers_per_block": 1,
                                       "norm_num_groups": 4, "add_attention": False},
                  "sde": {"sigma_min": 0.01, "sigma_max": 20.0},
                  # N = 20 only: the ancestral predictor keeps the marginal noise level right
                  # at so few steps, where the official reverse-diffusion one lags (see
                  # ldpm.sampling.score_pc); the paper preset uses the official one, N = 2000.
                  "sampler": {"n_steps": 20, "snr": 0.16, "n_corrector": 1, "eps": 1e-5,
                              "predictor": "ancestral"},
                  # an average of the weights (EMA) and twice the steps: the last weights alone
                  # moved val PSNR by 0.5 dB between 1 and 2 threads (docs/tuning.md)
                  "optimizer": "adam", "lr": 2e-3, "batch_size": 4, "crop": 64, "n_steps": 1200,
                  "grad_clip": 1.0, "ema": 0.995},
}

# the baselines see the augmentation LDPM's stages see (ldpm/train/presets.py)
for _config in DEFAULT_CONFIGS.values():
    _config["augment"] = AUGMENT

#: The published settings. fastMRI U-Net/VarNet: ``fastmri_examples`` demos (RMSprop/Adam,
#: StepLR 40 epochs x0.1, 50 epochs, batch 1; VarNet with SSIM loss). SwinMR:
#: ``train_swinmr_CCnpi_G1D30.json`` (Adam 2e-4, batch 8, MultiStepLR [50k, 80k, 90k, 100k]
#: x0.5, EMA 0.999). Score-MRI: ``fastmri_knee_320_ncsnpp_continuous`` + score_sde defaults
#: (Adam 2e-4, warmup 5000, grad clip 1, EMA 0.999, sigma 0.01..378, N 2000, snr 0.16); its
#: batch size and epoch count are not stated in the paper: 8 and 100 are our choice.
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {**_COMMON, "model": {"chans": 32, "num_pool_layers": 4, "drop_prob": 0.0},
             "loss": "l1", "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 1, "crop": None,
             "n_steps": None, "epochs": 50, "lr_milestones_epochs": [40], "ckpt_every": 1000},
    "varnet": {**_COMMON, "model": {"num_cascades": 12, "chans": 18, "pools": 4},
               "loss": "ssim", "optimizer": "adam", "lr": 3e-4, "batch_size": 1, "crop": None,
               "n_steps": None, "epochs": 50, "lr_milestones_epochs": [40], "ckpt_every": 1000},
    "swinmr": {**_COMMON, "model": {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6,
                                    "window_size": 8, "mlp_ratio": 2.0},
               "loss": {"alpha": 15.0, "beta": 0.1, "gamma": 0.0025, "charbonnier_eps": 1e-9,
                        "vgg19_weights": None},
               "optimizer": "adam", "lr": 2e-4, "batch_size": 8, "crop": None,
               "n_steps": 100000, "lr_milestones": [50000, 80000, 90000, 100000],
               "lr_gamma": 0.5, "ema": 0.999, "ckpt_every": 1000},
    "score_mri": {**_COMMON, "model": {"block_out_channels": [128, 256, 256, 256],
                                       "layers_per_block": 4, "norm_num_groups": 32,
                                       "add_attention": True},
                  "sde": {"sigma_min": 0.01, "sigma_max": 378.0},
                  "sampler": {"n_steps": 2000, "snr": 0.16, "n_corrector": 1, "eps": 1e-5,
                              "predictor": "reverse_diffusion"},
                  "optimizer": "adam", "lr": 2e-4, "batch_size": 8, "crop": None,
                  "n_steps": None, "epochs": 100, "warmup": 5000, "grad_clip": 1.0,
                  "ema": 0.999, "ckpt_every": 1000},
}


def baseline_config(name: str, overrides: Mapping[str, Any] | None = None,
                    preset: str = "default") -> dict[str, Any]:
    """A deep copy of a preset's config of ``name`` with ``overrides`` (shallow per key)."""
    check_baseline_name(name)
    out = copy.deepcopy({"default": DEFAULT_CONFIGS, "paper": PAPER_CONFIGS}[preset][name])
    out.update(copy.deepcopy(dict(overrides or {})))
    return out


# ----------------------------------------------------------------------------------------------
# Batches and losses


def compute_loss(name: str, model: nn.Module, batch: Mapping[str, torch.Tensor],
                 cfg: Mapping[str, Any], generator: torch.Generator | None = None,
                 swinmr_loss: SwinMRLoss | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (from :func:`make_batch`) and the scalars to log."""
    x = batch["target"]
    if name == "score_mri":
        loss = dsm_loss(model, x, sde_from_config(cfg), generator, float((cfg.get("sampler") or {}).get("eps", 1e-5)))
        return loss, {"loss": loss.item()}
    if name == "varnet":
        pred = model(batch["k_u"], batch["mask"])
    else:
        pred = model(batch["x_u"])
    if name == "swinmr":
        crit = swinmr_loss if swinmr_loss is not None else SwinMRLoss(cfg.get("loss"))
        loss, parts = crit(pred, x)
        return loss, {"loss": loss.item(), **parts}
    loss = ssim_loss(pred, x) if cfg.get("loss") == "ssim" else (pred - x).abs().mean()
    return loss, {"loss": loss.item()}


def lr_at(cfg: Mapping[str, Any], step: int, steps_per_epoch: int) -> float:
    """Learning rate of ``step``: linear warmup, then x``lr_gamma`` at each milestone passed."""
    lr = float(cfg["lr"])
    if cfg.get("warmup"):
        lr *= min((step + 1) / int(cfg["warmup"]), 1.0)
    miles = list(cfg.get("lr_milestones") or []) + [
        e * steps_per_epoch for e in (cfg.get("lr_milestones_epochs") or [])]
    return lr * float(cfg.get("lr_gamma", 0.1)) ** sum(step >= m for m in miles)


def make_optimizer(cfg: Mapping[str, Any], params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.get("optimizer", "adam") == "rmsprop":
        return torch.optim.RMSprop(params, lr=float(cfg["lr"]))
    return torch.optim.Adam(params, lr=float(cfg["lr"]))


# ----------------------------------------------------------------------------------------------
# Training


def train_baseline(name: str, images: torch.Tensor, cfg: Mapping[str, Any] | None,
                   ckpt_dir: str | Path, seed: int = 0, n_steps: int | None = None,
                   log: bool = True, stop_after: int | None = None,
                   runtime: Runtime | None = None) -> nn.Module:
    """Train baseline ``name`` on ``images`` [N, 1, H, W] in [0, 1]; resumable from
    ``ckpt_dir/last.pt``; writes ``ckpt_dir/final`` and returns the (EMA) model in eval mode.

    ``cfg``: overrides of :data:`DEFAULT_CONFIGS` ``[name]`` (shallow per key).
    """
    cfg = baseline_config(name, cfg)
    rt = runtime or Runtime()
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 1:
        raise LdpmInputError("train images", f"shape {tuple(images.shape)}", "pass [N, 1, H, W]")
    images = images.to(rt.device)
    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    steps_per_epoch = max(1, math.ceil(len(images) / int(cfg["batch_size"])))
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(seed)
        model = build_baseline(name, cfg).to(rt.device)
    opt = make_optimizer(cfg, model.parameters())
    modules: dict[str, nn.Module] = {"model": model}
    average = WeightAverage(model, cfg, modules)
    crit = SwinMRLoss(cfg.get("loss")).to(rt.device) if name == "swinmr" else None
    notes = [crit.note] if crit is not None and crit.note else []
    clip = cfg.get("grad_clip")

    image_domain = name in ("unet", "swinmr")

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        crop = cfg.get("crop")
        x = random_batch(images, rt.local_batch(int(cfg["batch_size"])),
                         None if image_domain else crop, gen, cfg.get("augment"))
        batch = make_batch(x, *stage_masks(cfg), seed, step)
        if image_domain and crop:
            batch = crop_pair(batch, int(crop), gen)
        loss, out = compute_loss(name, model, batch, cfg, gen, crit)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, steps_per_epoch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            sync_gradients(opt, rt)  # clip the averaged gradients, as DistributedDataParallel does
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        opt.step()
        average.update(step)
        return out

    def save_final(d: Path) -> None:
        net = average.weights
        (d / "config.json").write_text(json.dumps({"name": name, "config": cfg}, indent=2) + "\n")
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                  d / "model.safetensors")

    meta = train(step_fn, modules, {"opt": opt}, ckpt_dir, n_steps, seed, save_final,
                 int(cfg["ckpt_every"]), log, f"baseline_{name}", cfg, notes, stop_after,
                 runtime=rt)
    if meta["steps_done"] == n_steps:
        return load_baseline(ckpt_dir)[0]
    return average.weights.eval()
