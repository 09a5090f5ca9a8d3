"""Training of DiffCode's stages and the all-in-one restorers, all through the shared seeded,
resumable loop :func:`ldpm.train.loop.train`.

Data of one step (:func:`task_batch`, all randomness from the step's generator): ``batch_size``
samples, each of a task drawn uniformly from the tasks that have data; an MRI sample is a
training slice (scaled by its volume max) degraded at full size (:func:`degrade`) and then
cropped with its target to ``patch x patch`` (so the degradation keeps the test scale); a CT/PET
sample is a random crop of a real LQ/HQ pair. Every pair is divided by ``s = max(LQ)`` (from
the LQ image alone, as at test time).

Stages (see :mod:`ldpm.studies.diffcode.config`): ``bank`` (eq. 3), ``retrieval`` (eq. 6, on the frozen
bank), ``restore`` (eq. 7 + the task classifier's cross-entropy when TARS is on, on the frozen
bank and retrieval), ``unet`` / ``swinir`` (L1). Adam with cosine annealing from ``lr`` to
``lr_min`` (paper: 2e-4 -> 1e-6); TARS's task classifier keeps ``lr`` (:func:`param_groups`).

``final/`` holds ``config.json`` (the stage config) and ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ...device import resolve_device
from ...errors import LdpmInputError
from ...train.loop import train
from .checkpoints import PriorReference, build_modules, load_stage
from .config import stage_dependencies, stage_kind
from .data import read_task_pairs, split_pairs
from .degradations import DATA_TASKS, MRI_TASKS, degrade
from .models import VQAutoencoder, cosine_lr, pad_to_multiple


# ------------------------------------------------------------------------------------ data

@dataclass
class TaskData:
    """The training images of every task: MRI slices [N, 1, H, W] in [0, 1] (degraded on the
    fly) and CT/PET ``(lq, hq)`` pairs [N, 1, H, W]."""

    tasks: list[str]
    levels: dict[str, Any]
    mri: torch.Tensor | None = None
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def min_size(self) -> int:
        sizes = [] if self.mri is None else [min(self.mri.shape[-2:])]
        sizes += [min(lq.shape[-2:]) for lq, _ in self.pairs.values()]
        return min(sizes)


def _stack_pairs(task: str, cfg: Mapping, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    vols = split_pairs(read_task_pairs(task, cfg), split, cfg["split_fractions"], cfg["split_seed"])
    if not vols:
        raise LdpmInputError(cfg[DATA_TASKS[task]], f"has no {split} subjects for {task}",
                             "add subjects or change data.split_fractions")
    lq, hq = [], []
    for v in vols:
        scale = 1.0 if task == "ct_denoise" else float(max(v.hq.max(), 1e-12))
        lq.append(v.lq / scale)
        hq.append(v.hq / scale)
    shapes = {a.shape[1:] for a in lq}
    if len(shapes) != 1:
        raise LdpmInputError(cfg[DATA_TASKS[task]], f"{task} slices of several sizes {sorted(shapes)}",
                             "give every subject the same in-plane size")
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.concatenate(a), dtype=np.float32))[:, None]  # noqa: E731
    return as_t(lq), as_t(hq)


def load_task_data(cfg: Mapping, manifest: str | Path, split: str = "train") -> TaskData:
    """Every configured task's ``split`` images (MRI from the manifest, CT/PET from their folders)."""
    from ...train.stages import training_images

    tasks = list(cfg["tasks"])
    mri = training_images(manifest, split) if any(t in MRI_TASKS for t in tasks) else None
    pairs = {t: _stack_pairs(t, cfg, split) for t in tasks if t in DATA_TASKS}
    return TaskData(tasks, dict(cfg["levels"]), mri, pairs)


def _crop(images: list[torch.Tensor], size: int, generator: torch.Generator) -> list[torch.Tensor]:
    h, w = images[0].shape[-2:]
    top = int(torch.randint(h - size + 1, (1,), generator=generator))
    left = int(torch.randint(w - size + 1, (1,), generator=generator))
    return [im[..., top:top + size, left:left + size] for im in images]


def task_batch(data: TaskData, batch_size: int, patch: int, generator: torch.Generator,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """One step's samples: ``lq``, ``hq`` [B, 1, p, p] (divided by ``scale`` = max LQ) and
    ``task`` [B] (index into ``data.tasks``)."""
    size = min(int(patch), data.min_size)
    task_idx = torch.randint(len(data.tasks), (batch_size,), generator=generator)
    lqs, hqs = [], []
    for t in task_idx.tolist():
        task = data.tasks[t]
        if task in MRI_TASKS:
            x = data.mri[int(torch.randint(len(data.mri), (1,), generator=generator))]
            lq, hq = degrade(task, x, data.levels, generator), x
        else:
            lq_all, hq_all = data.pairs[task]
            j = int(torch.randint(len(lq_all), (1,), generator=generator))
            lq, hq = lq_all[j], hq_all[j]
        lq, hq = _crop([lq, hq], size, generator)
        lqs.append(lq)
        hqs.append(hq)
    lq, hq = torch.stack(lqs), torch.stack(hqs)
    scale = lq.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return {"lq": (lq / scale).to(device), "hq": (hq / scale).to(device),
            "task": task_idx.to(device), "scale": scale.to(device)}


# ---------------------------------------------------------------------------------- saving

def save_stage(folder: Path, cfg: Mapping, modules: Mapping[str, nn.Module]) -> None:
    (folder / "config.json").write_text(json.dumps(dict(cfg), indent=2, sort_keys=True) + "\n")
    save_file({f"{name}.{k}": v.detach().cpu().contiguous()
               for name, m in modules.items() for k, v in m.state_dict().items()},
              folder / "model.safetensors")


def load_code_prior(deps: Mapping[str, Path], stage_cfg: Mapping,
                    device: torch.device | str = "cpu") -> PriorReference:
    """The frozen prior a restore stage is trained from (its bank and retrieval)."""
    names = stage_dependencies(stage_cfg["stage"])
    for name in names:
        if name not in deps:
            raise LdpmInputError("ldpm diffcode-train", f"the {name} stage folder is missing",
                                 f"pass --dep {name}=results/models/diffcode_{name}")
    bank_cfg, bank = load_stage(deps[names[0]], device, expect=names[0])
    _, retr = load_stage(deps[names[1]], device, expect=names[1])
    if list(bank_cfg["tasks"]) != list(stage_cfg["tasks"]):
        raise LdpmInputError(deps[names[0]], f"was trained for tasks {bank_cfg['tasks']}, not "
                             f"{stage_cfg['tasks']}", "retrain the bank with this config")
    return PriorReference(bank_cfg, bank["vq"], retr["retrieval"])


# ------------------------------------------------------------------------------- training

def load_frozen(cfg: Mapping, deps: Mapping[str, Path], device: torch.device | str = "cpu"
                ) -> tuple[VQAutoencoder | None, PriorReference | None]:
    """The frozen networks a stage trains against: stage I's autoencoder (retrieval) or the
    prior of stages I + II (a restore stage with a prior); ``(None, None)`` otherwise."""
    kind = stage_kind(cfg["stage"])
    if kind == "retrieval":
        name = stage_dependencies(cfg["stage"])[0]
        if name not in deps:
            raise LdpmInputError("ldpm diffcode-train", f"the {name} stage folder is missing",
                                 f"pass --dep {name}=results/models/diffcode_{name}")
        bank_cfg, bank = load_stage(deps[name], device, expect=name)
        if list(bank_cfg["tasks"]) != list(cfg["tasks"]):
            raise LdpmInputError(deps[name], f"was trained for tasks {bank_cfg['tasks']}, not "
                                 f"{cfg['tasks']}", "retrain the bank with this config")
        return bank["vq"], None
    if kind == "restore" and cfg["variant"]["prior"] is not None:
        return None, load_code_prior(deps, cfg, device)
    return None, None


def bank_loss(cfg: Mapping, net: VQAutoencoder, b: Mapping[str, torch.Tensor]):
    """Eq. 3 on a batch: ``(loss, scalars, z, codebook_index, codes)`` (the last three for
    :meth:`~ldpm.studies.diffcode.models.CodebookBank.reseed_dead`)."""
    idx = b["task"] if cfg["codebook"] == "bank" else torch.zeros_like(b["task"])
    x, _ = pad_to_multiple(b["hq"], net.factor)
    loss, out, z, rq = net.loss(x, idx, float(cfg["model"]["commitment"]))
    return loss, out, z, idx, rq.codes


def codebook_perplexities(cfg: Mapping, perplexity: Mapping[int, float]) -> dict[str, float]:
    """``perplexity_<task>`` per used codebook of the bank (``perplexity`` for a single one)."""
    if cfg["codebook"] != "bank":
        return {"perplexity": perplexity[0]} if 0 in perplexity else {}
    return {f"perplexity_{cfg['tasks'][i]}": v for i, v in sorted(perplexity.items())}


def stage_loss(cfg: Mapping, net: nn.Module, b: Mapping[str, torch.Tensor], generator: torch.Generator,
               frozen_vq: VQAutoencoder | None = None,
               frozen_prior: PriorReference | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (from :func:`task_batch`) and the scalars to log:
    bank eq. 3, retrieval eq. 6, restore eq. 7 (+ ``cls_weight`` x the task cross-entropy with
    TARS), unet/swinir L1."""
    kind = stage_kind(cfg["stage"])
    if kind == "bank":
        return bank_loss(cfg, net, b)[:2]
    if kind == "retrieval":
        lq, _ = pad_to_multiple(b["lq"], net.factor)
        hq, _ = pad_to_multiple(b["hq"], net.factor)
        with torch.no_grad():
            z = frozen_vq.encoder(hq)
        loss = (net(lq, generator, z_hq=z) - z).abs().mean()  # eq. 6
        return loss, {"loss": loss.item()}
    if kind == "restore":
        ref = frozen_prior(b["lq"], b["task"], generator) if frozen_prior is not None else None
        pred, logits, _ = net(b["lq"], ref)
        l1 = (pred - b["hq"]).abs().mean()  # eq. 7
        out, loss = {"l1": l1.item()}, l1
        if logits is not None:
            ce = F.cross_entropy(logits, b["task"])
            loss = loss + float(cfg["model"]["cls_weight"]) * ce
            out.update(ce=ce.item(), task_acc=(logits.argmax(1) == b["task"]).float().mean().item())
        if ref is not None:
            out["ref_l1"] = (ref - b["hq"]).abs().mean().item()
        return loss, {"loss": loss.item(), **out}
    loss = (net(b["lq"]) - b["hq"]).abs().mean()
    return loss, {"loss": loss.item()}


def param_groups(net: nn.Module) -> list[dict]:
    """Adam's groups: the network on the cosine schedule; TARS's task classifier (if any) at the
    constant base rate, so that the routing it decides is learnt within short runs too."""
    clf = getattr(net, "classifier", None)
    own = {id(p) for p in clf.parameters()} if clf is not None else set()
    groups = [{"params": [p for p in net.parameters() if p.requires_grad and id(p) not in own],
               "schedule": "cosine"}]
    if clf is not None:
        groups.append({"params": list(clf.parameters()), "schedule": "constant"})
    return groups


def train_stage(cfg: Mapping, manifest: str | Path, out_dir: str | Path, seed: int,
                deps: Mapping[str, Path] | None = None, device: str = "cpu", log: bool = True,
                stop_after: int | None = None, data: TaskData | None = None) -> dict:
    """Train one DiffCode stage (resumable from ``out_dir/last.pt``); returns the loop's meta."""
    dev = resolve_device(device)
    data = data if data is not None else load_task_data(cfg, manifest)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(seed)
        modules = {k: m.to(dev) for k, m in build_modules(cfg).items()}
    net = next(iter(modules.values()))
    opt = torch.optim.Adam(param_groups(net), lr=float(cfg["lr"]))
    frozen_vq, frozen_prior = load_frozen(cfg, dict(deps or {}), dev)
    bs, patch = int(cfg["batch_size"]), int(cfg["patch"])

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        b = task_batch(data, bs, patch, gen, dev)
        for g in opt.param_groups:
            if g["schedule"] == "cosine":
                g["lr"] = cosine_lr(step, int(cfg["n_steps"]), float(cfg["lr"]), float(cfg["lr_min"]))
        if step == 0 and stage_kind(cfg["stage"]) == "bank":  # codebooks start from latents
            with torch.no_grad():
                net.bank.init_from(net.encoder(pad_to_multiple(b["hq"], net.factor)[0]), gen)
        bank = stage_kind(cfg["stage"]) == "bank"
        if bank:
            loss, out, z, idx, codes = bank_loss(cfg, net, b)
        else:
            loss, out = stage_loss(cfg, net, b, gen, frozen_vq, frozen_prior)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bank:  # codebook usage, and dead items re-seeded from this batch's latents
            out.update(codebook_perplexities(cfg, net.bank.reseed_dead(z, idx, codes, gen)))
        return out

    return train(step_fn, modules, {"opt": opt}, out_dir, int(cfg["n_steps"]), seed,
                 lambda d: save_stage(d, cfg, modules), log=log, stage=f"diffcode_{cfg['stage']}",
                 config=cfg, stop_after=stop_after,
                 meta_extra=lambda: {"parameters": {k: sum(p.numel() for p in m.parameters())
                                                    for k, m in modules.items()}})
