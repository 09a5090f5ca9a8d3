"""The shared trainer of the Table I baselines (:mod:`ldpm.baselines`: one module each, which
declares its network, loss and presets). All are trained from scratch on our nPI data
(single-coil k-space of the RSS image); no official weights are downloaded.

Data: ``images`` [N, 1, H, W] magnitudes in [0, 1], or a
:class:`ldpm.data.dataset.SliceStream` of them (stage key ``loader: stream``). Each step draws
a batch (with replacement; from a stream: its next samples) and per-sample 8x masks seeded
``(seed, step, i)`` (:func:`ldpm.train.loop.undersampled_batch`), all from the shared resumable
loop; ``grad_accum`` splits the batch into micro-batches whose gradients are accumulated
(:func:`ldpm.train.loop.accumulate_logged`; sample ``i`` keeps its mask). The baselines train
in float32 (no ``amp`` key: :func:`ldpm.config.run_keys`). ``crop`` (random ``crop x crop``
windows): an image-domain baseline (:attr:`ldpm.baselines.Baseline.image_domain`) is
undersampled on whole images and the (zero-filled, target) pair is cropped after
(:func:`crop_pair`), so the aliasing keeps the test scale; for the others the image is cropped
first.

Scale: every method sees its input divided by ``s = max |F^-1(k_u)|`` (per slice, from the
measurement alone) and its output is multiplied back by ``s``, in training and at inference, so
models trained on [0, 1] images apply to raw fastMRI magnitudes.

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

from ..baselines import baseline, baselines
from ..checkpoints import build_baseline, load_baseline
from ..data.dataset import SliceStream
from ..errors import LdpmInputError
from .loop import (WeightAverage, accumulate_logged, crop_pair, make_batch, random_batch,
                   resolve_n_steps, stage_masks, step_settings, train)
from .presets import AUGMENT
from .runtime import Runtime

#: the keys every baseline's stage takes, with their defaults (a baseline's presets add keys and
#: change values: ldpm.baselines.Baseline.default / .paper)
SHARED = {"epochs": None, "ckpt_every": 50, "ema": 0.0, "grad_clip": None, "warmup": 0,
          "lr_milestones": [], "lr_milestones_epochs": [], "lr_gamma": 0.1, "augment": None}


def _preset(declared: Mapping[str, Any], augment: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**SHARED, **copy.deepcopy(dict(declared)), "augment": augment}


#: Tiny CPU configs: each trains in about a minute on one core; the baselines see the
#: augmentation LDPM's stages see (ldpm/train/presets.py)
DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    name: _preset(b.default, AUGMENT) for name, b in baselines().items()}
#: The published settings (each baseline module says where they come from)
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    name: _preset(b.paper, None) for name, b in baselines().items()}


def baseline_config(name: str, overrides: Mapping[str, Any] | None = None,
                    preset: str = "default") -> dict[str, Any]:
    """A preset's config of ``name`` with ``overrides`` merged in (:func:`ldpm.config.deep_merge`)."""
    from ..config import deep_merge

    baseline(name)
    return deep_merge({"default": DEFAULT_CONFIGS, "paper": PAPER_CONFIGS}[preset][name],
                      overrides or {})


# ----------------------------------------------------------------------------------------------
# Batches and losses


def compute_loss(name: str, model: nn.Module, batch: Mapping[str, torch.Tensor],
                 cfg: Mapping[str, Any], generator: torch.Generator | None = None,
                 criterion: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (from :func:`make_batch`) and the scalars to log."""
    return baseline(name).loss(model, batch, cfg, generator, criterion)


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


def train_baseline(name: str, images: torch.Tensor | SliceStream, cfg: Mapping[str, Any] | None,
                   ckpt_dir: str | Path, seed: int = 0, n_steps: int | None = None,
                   log: bool = True, stop_after: int | None = None,
                   runtime: Runtime | None = None) -> nn.Module:
    """Train baseline ``name`` on ``images`` [N, 1, H, W] in [0, 1] (or a :class:`SliceStream`
    of them); resumable from ``ckpt_dir/last.pt``; writes ``ckpt_dir/final`` and returns the
    (EMA) model in eval mode.

    ``cfg``: overrides of :data:`DEFAULT_CONFIGS` ``[name]`` (merged key by key).
    """
    cfg = baseline_config(name, cfg)
    rt = runtime or Runtime()
    if not isinstance(images, SliceStream):
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
    declared = baseline(name)
    crit = declared.criterion(cfg).to(rt.device) if declared.criterion else None
    notes = [crit.note] if getattr(crit, "note", None) else []
    clip = cfg.get("grad_clip")
    image_domain = declared.image_domain
    accum, micro, _ = step_settings(cfg, rt, name)
    replicas = rt.replicate(model)

    def micro_step(step: int, j: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        crop = cfg.get("crop")
        x = random_batch(images, micro, None if image_domain else crop, gen, cfg.get("augment"))
        batch = make_batch(x, *stage_masks(cfg), seed, step, first=j * micro)
        if image_domain and crop:
            batch = crop_pair(batch, int(crop), gen)
        return compute_loss(name, model, batch, cfg, gen, crit)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, steps_per_epoch)
        opt.zero_grad(set_to_none=True)
        out = accumulate_logged(lambda j, g: micro_step(step, j, g), accum, gen, replicas)
        if clip:  # the gradients are averaged over the ranks by now
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
                 log=log, stage=f"baseline_{name}", config=cfg, notes=notes,
                 stop_after=stop_after, runtime=rt,
                 loader=images if isinstance(images, SliceStream) else None)
    if meta["steps_done"] == n_steps:
        return load_baseline(ckpt_dir)[0]
    return average.weights.eval()
