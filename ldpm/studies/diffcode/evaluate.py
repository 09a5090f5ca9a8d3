"""Run one trained DiffCode-family method on every task's test set: per-task PSNR/SSIM/RMSE.

Test sets: the MRI tasks degrade the test shards' ground truth (``results/data/test``) with
:func:`ldpm.studies.diffcode.degradations.degrade_test_slices` (``mri_recon`` with the shards' stored
masks, the very measurements LDPM is scored on); CT/PET use their folders' test subjects, and
without a folder their cells are ``n/a`` with the reason. A method sees only the LQ image
(divided by its own maximum ``s``; the output is multiplied back by ``s``) and the task id
(DiffCode picks the task's codebook with it; TARS routes from the LQ image alone).

Metrics per test volume, as fastMRI's evaluate (data range = the ground-truth volume's max):
PSNR over the volume, SSIM the mean over its slices; RMSE = ``sqrt(mean((gt - pred)^2))``
divided by that max (so it is in units of the volume's maximum). A task's value is the mean
(± sample std) over its volumes; the average is the mean of the task means that exist.

Outputs: ``<out>.json`` (see :func:`evaluate_diffcode_method`) and a per-volume CSV.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ...data.store import read_shard
from ...errors import LdpmInputError
from ...io import atomic_path, write_text_atomic
from ...metrics.image import psnr, rmse, ssim
from .checkpoints import PriorReference, load_stage
from .config import ORACLE, method_stages, stage_kind
from .data import read_task_pairs, split_pairs, task_availability
from .degradations import MRI_TASKS, degrade_test_slices, slice_generator, task_title

METRICS = ("psnr", "ssim", "rmse")
DEFINITIONS = (
    "Per test volume, as fastMRI's evaluate.py: data range = the ground-truth volume's max; psnr "
    "over the volume (skimage), ssim = mean over its slices (skimage, 7x7), rmse = sqrt(mean((gt - "
    "pred)^2)) / the volume's max. Task value = mean (std: sample std) over the task's test volumes; "
    "average = mean of the task values that exist. Methods see the LQ image / its own max only: the "
    "codebook of a prior is the one TARS's task classifier predicts from the LQ image (routing "
    "accuracy = its share of test slices routed to their own task); only the oracle row is given the "
    "true task id. DiffCode's sampling noise per slice from (degradation_seed, volume, slice, task).")


@dataclass
class EvalSet:
    """One task's test slices: LQ and HQ [N, H, W] float32 with their volume and slice keys."""

    task: str
    lq: np.ndarray
    hq: np.ndarray
    volumes: list[str]
    slices: np.ndarray


def mri_test_set(task: str, shards: Sequence[str | Path], cfg: Mapping) -> EvalSet:
    """A simulated MRI task on the test shards (the shards' stored masks for ``mri_recon``)."""
    parts = [read_shard(p) for p in shards]
    parts = [p for p in parts if len(p["target"])]
    if not parts:
        raise LdpmInputError(", ".join(map(str, shards)), "no test slices", "pass non-empty test shards")
    hq = np.concatenate([p["target"] for p in parts]).astype(np.float32)
    masks = np.concatenate([p["mask"] for p in parts])
    volumes = [v for p in parts for v in p["volume"]]
    slices = np.concatenate([p["slice"] for p in parts])
    vmax = np.concatenate([p["volume_max"] for p in parts])
    lq = degrade_test_slices(task, hq, masks, volumes, slices, vmax, cfg["levels"],
                             int(cfg["degradation_seed"]))
    return EvalSet(task, lq, hq, volumes, slices)


def file_test_set(task: str, cfg: Mapping) -> EvalSet:
    """A CT/PET task's test subjects (the pipeline's seeded by-subject split)."""
    vols = split_pairs(read_task_pairs(task, cfg), "test", cfg["split_fractions"], cfg["split_seed"])
    if not vols:
        raise LdpmInputError(task, "has no test subjects", "add subjects or change data.split_fractions")
    return EvalSet(task, np.concatenate([v.lq for v in vols]), np.concatenate([v.hq for v in vols]),
                   [v.name for v in vols for _ in range(len(v.hq))],
                   np.concatenate([np.arange(len(v.hq)) for v in vols]))


class MethodRunner:
    """A trained method as ``runner(lq [B,1,H,W] / s, task [B], generators) -> [B,1,H,W]``.

    A prior's codebook is picked by TARS's task classifier from ``lq`` (eq. 8's gate network's
    logits), never from ``task``; ``task`` is read only by the oracle row and to count
    :attr:`routed` (per true task: slices seen, slices routed to their own task).
    """

    def __init__(self, method: str, stage_dirs: Mapping[str, Path], device: str = "cpu"):
        self.oracle = method == ORACLE
        self.routed: dict[int, list[int]] = {}
        stages = method_stages(method)
        missing = [s for s in stages if s not in stage_dirs]
        if missing:
            raise LdpmInputError(f"diffcode method {method}", f"stage folders missing: {missing}",
                                 "pass --model STAGE=results/models/diffcode_STAGE for each")
        self.device = device
        self.prior = None
        if not stages:  # the LQ input itself
            self.kind, self.tasks = "input", None
            return
        loaded = {s: load_stage(stage_dirs[s], device, expect=s) for s in stages}
        self.cfg, modules = loaded[stages[-1]]
        self.kind = stage_kind(stages[-1])
        self.net = next(iter(modules.values()))
        self.tasks = list(self.cfg["tasks"])
        if len(stages) == 3:
            bank_cfg, bank = loaded[stages[0]]
            _, retr = loaded[stages[1]]
            self.prior = PriorReference(bank_cfg, bank["vq"], retr["retrieval"])

    def route(self, lq: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        """The task whose codebook the prior uses: the classifier's prediction (the true id for
        the oracle row); counted in :attr:`routed`."""
        logits, _ = self.net.gating(lq)
        if logits is None and not self.oracle:
            raise LdpmInputError("diffcode restorer", "has a prior but no TARS task classifier to "
                                 "route it", "train the variant with tars: true")
        chosen = task_idx if self.oracle else logits.argmax(1)
        for true, got in zip(task_idx.tolist(), chosen.tolist()):
            seen = self.routed.setdefault(int(true), [0, 0])
            seen[0] += 1
            seen[1] += int(true == got)
        return chosen

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, task_idx: torch.Tensor, generators) -> torch.Tensor:
        if self.kind == "input":
            return lq
        if self.kind != "restore":
            return self.net(lq)
        ref = (self.prior(lq, self.route(lq, task_idx), generators) if self.prior is not None
               else None)
        return self.net(lq, ref)[0]

    def routing_accuracy(self) -> dict[str, Any] | None:
        """``{"overall", "per_task": {task: share}}`` of the classifier's routing (None without a
        prior, or for the oracle row)."""
        if not self.routed or self.oracle:
            return None
        per_task = {self.tasks[t]: ok / n for t, (n, ok) in sorted(self.routed.items())}
        total = sum(n for n, _ in self.routed.values())
        return {"overall": sum(ok for _, ok in self.routed.values()) / total, "per_task": per_task}


def restore_test_set(runner: MethodRunner, test: EvalSet, seed: int, batch_size: int = 8) -> np.ndarray:
    """The method's output for every test slice, [N, H, W] float32 in the slices' units."""
    tasks = runner.tasks if runner.tasks is not None else [test.task]
    if test.task not in tasks:
        raise LdpmInputError(test.task, f"the model was trained for tasks {tasks}",
                             "retrain it with this task configured")
    t_idx = tasks.index(test.task)
    out = np.empty_like(test.hq)
    for i0 in range(0, len(test.lq), batch_size):
        lq = torch.from_numpy(np.ascontiguousarray(test.lq[i0:i0 + batch_size]))[:, None]
        s = lq.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        gens = [slice_generator(seed, test.volumes[i], int(test.slices[i]), test.task, purpose=1)
                for i in range(i0, i0 + len(lq))]
        task = torch.full((len(lq),), t_idx, dtype=torch.long)
        pred = runner((lq / s).to(runner.device), task.to(runner.device), gens).cpu() * s
        out[i0:i0 + len(lq)] = pred[:, 0].numpy()
    return out


def volume_metrics(test: EvalSet, pred: np.ndarray) -> pd.DataFrame:
    """PSNR/SSIM/RMSE per test volume (fastMRI definitions; RMSE / the volume's max)."""
    rows = []
    vols = np.asarray(test.volumes)
    for vol in sorted(set(test.volumes)):
        idx = np.flatnonzero(vols == vol)
        idx = idx[np.argsort(test.slices[idx])]
        gt, pr = test.hq[idx], pred[idx]
        vmax = float(gt.max())
        if not vmax > 0:
            raise LdpmInputError(f"volume {vol}", "ground truth is all zeros, metrics are undefined",
                                 "drop empty volumes from the test split")
        rows.append({"task": test.task, "volume": vol, "n_slices": len(idx), "psnr": psnr(gt, pr),
                     "ssim": ssim(gt, pr), "rmse": rmse(gt, pr) / vmax})
    return pd.DataFrame(rows, columns=["task", "volume", "n_slices", *METRICS])


def _entry(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=float)
    if not len(values):
        return {"value": None, "std": None, "reason": "no test volumes for this task"}
    mean = float(values.mean())
    if not math.isfinite(mean):
        return {"value": None, "std": None, "reason": "not finite (an exact restoration has infinite PSNR)"}
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"value": mean, "std": std if std is None or math.isfinite(std) else None, "reason": None}


def summarize(method: str, name: str, per_volume: pd.DataFrame, cfg: Mapping) -> dict:
    """The JSON summary: per task (in config order) and their average; ``n/a`` reasons kept."""
    availability = task_availability({"tasks": cfg["all_tasks"], "ct_path": cfg.get("ct_path"),
                                      "pet_path": cfg.get("pet_path")})
    tasks = {}
    for task in cfg["all_tasks"]:
        df = per_volume[per_volume["task"] == task]
        entry = {"title": task_title(task, cfg["levels"]), "n_volumes": int(len(df)),
                 "n_slices": int(df["n_slices"].sum()) if len(df) else 0}
        if availability[task] is not None:
            entry["metrics"] = {m: {"value": None, "std": None, "reason": availability[task]} for m in METRICS}
        else:
            entry["metrics"] = {m: _entry(df[m].to_numpy()) for m in METRICS}
        tasks[task] = entry
    average = {}
    for m in METRICS:
        vals = [t["metrics"][m]["value"] for t in tasks.values() if t["metrics"][m]["value"] is not None]
        used = [k for k, t in tasks.items() if t["metrics"][m]["value"] is not None]
        average[m] = ({"value": float(np.mean(vals)), "std": None, "reason": None, "tasks": used} if vals
                      else {"value": None, "std": None, "reason": "no task has a value", "tasks": []})
    return {"method": method, "name": name, "tasks": tasks, "average": average,
            "definitions": DEFINITIONS}


def evaluate_diffcode_method(method: str, shards: Sequence[str | Path], stage_dirs: Mapping[str, Path],
                    cfg: Mapping, out_json: str | Path, out_csv: str | Path,
                    device: str = "cpu") -> dict:
    """Score ``method`` on every configured task; write ``out_json`` and ``out_csv``."""
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    runner = MethodRunner(method, {k: Path(v) for k, v in stage_dirs.items()}, dev)
    if runner.tasks is not None and list(runner.tasks) != list(cfg["tasks"]):
        raise LdpmInputError(f"diffcode method {method}", f"trained for tasks {runner.tasks}, "
                             f"configured {cfg['tasks']}", "retrain it with this config")
    frames = []
    for task in cfg["tasks"]:
        test = mri_test_set(task, shards, cfg) if task in MRI_TASKS else file_test_set(task, cfg)
        pred = restore_test_set(runner, test, int(cfg["degradation_seed"]), int(cfg.get("batch_size", 8)))
        frames.append(volume_metrics(test, pred))
    per_volume = pd.concat(frames, ignore_index=True)
    per_volume.insert(0, "method", method)
    summary = summarize(method, cfg.get("name", method), per_volume, cfg)
    summary["routing_accuracy"] = runner.routing_accuracy()
    with atomic_path(out_csv) as tmp:
        per_volume.to_csv(tmp, index=False)
    write_text_atomic(out_json, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary
