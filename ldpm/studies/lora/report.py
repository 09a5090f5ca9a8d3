"""The LoRA study's table (the two-LoRA adaptation of ``config/references.yaml``: supir_lora) from a run's ``results/`` folder.

One row per reconstructed method (:func:`ldpm.studies.lora.graph.study_methods`): LDPM with its frozen
denoiser, LDPM + LoRA at two ranks, each contrast-group adapter alone and both combined, and the
fewer-step rows. Every number is read from files this run wrote:

* PSNR, SSIM, LPIPS (mean ± std, or ``n/a`` with the reason): ``metrics/<method>/summary.json``;
* PSNR per contrast group (mean over the group's test volumes): ``metrics/<method>/per_volume.csv``;
* trainable parameters, training seconds per step: ``models/<stage>/meta.json`` of the row's own
  training stage(s) (``controlnet`` for LDPM; its parameter count from the saved weights);
* sampling seconds per slice: ``sampling_seconds`` / ``n_slices`` of the timing files that
  ``ldpm reconstruct`` writes beside ``recon/<method>/shard*.h5`` (network loading excluded).

Beside the table, :func:`make_lora_curves` draws the training loss of each row's own stage(s)
(``models/<stage>/log.csv``) into ``figures/lora_curves.{png,pdf}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ...errors import LdpmInputError
from ...methods import timing_path
from ...methods.graph import step_variant
from ...report.paper import citation
from ...report.plots import write_training_curves
from ...report.tables import load_summary, write_table
from .graph import LORA_EPS_STAGES, LORA_JOINT_STAGES, LORA_METHODS, own_stages

#: (key, column title, higher is better, decimals)
LORA_COLUMNS = [("psnr", "PSNR ↑", True, 2), ("ssim", "SSIM ↑", True, 4), ("lpips", "LPIPS ↓", False, 4),
                ("psnr_t1", "PSNR T1-w ↑", True, 2), ("psnr_t2", "PSNR T2/FLAIR ↑", True, 2),
                ("trainable", "Trainable params ↓", False, 0), ("train_s_step", "Train s/step ↓", False, 3),
                ("sample_s_slice", "Sample s/slice ↓", False, 2)]
GROUP_LABELS = {"lora_t1": "T1-w", "lora_t2": "T2/FLAIR", "lora_eps_t1": "T1-w", "lora_eps_t2": "T2/FLAIR"}
#: the contrast-group columns: (key, adapter stage whose ``contrasts`` define the group)
GROUP_COLUMNS = (("psnr_t1", "lora_t1"), ("psnr_t2", "lora_t2"))
_DEFAULT_GROUPS = {"lora_t1": ["T1", "T1PRE", "T1POST"], "lora_t2": ["T2", "FLAIR"]}


def _meta(results: Path, stage: str) -> dict | None:
    path = results / "models" / stage / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def group_contrasts(results: Path, stage: str) -> list[str]:
    """The contrasts the group adapter ``stage`` was trained on (its meta.json; else the preset's)."""
    meta = _meta(results, stage)
    contrasts = (meta or {}).get("contrasts") or ((meta or {}).get("config") or {}).get("contrasts")
    return list(contrasts or _DEFAULT_GROUPS[stage])


def row_name(method: str, results: Path, n_steps: int, mix_weights: Sequence[float]) -> str:
    """``LDPM + LoRA r=4 (joint: adapter + control branch, control loss), 10 steps`` etc., saying
    what each adapter trained with; ranks read from the stages' meta.json."""
    base, steps = step_variant(method)
    suffix = f", {steps} steps" if steps is not None else ""
    if base == "ldpm":
        return f"LDPM (frozen denoiser){suffix or f', {n_steps} steps'}"
    rank = lambda stage: ((_meta(results, stage) or {}).get("rank", "?"))  # noqa: E731
    adapters = LORA_METHODS[base][1]
    if adapters[0] in LORA_JOINT_STAGES:
        return f"LDPM + LoRA r={rank(adapters[0])} (joint: adapter + control branch, control loss){suffix}"
    trained = "prior adapter, ε-loss" if adapters[0] in LORA_EPS_STAGES else "control loss"
    labels = [f"{GROUP_LABELS[a]} r={rank(a)}" for a in adapters]
    if len(adapters) == 1:
        return f"LDPM + LoRA {labels[0]} ({trained}){suffix}"
    weights = ", ".join(f"{w:g}" for w in mix_weights)
    return f"LDPM + LoRA {' ⊕ '.join(labels)} ({trained}; weights {weights}){suffix}"


def _param_count(results: Path, stage: str) -> tuple[int | None, str | None]:
    """Parameters ``stage`` trained: its meta.json's count, or (controlnet) its saved weights."""
    meta = _meta(results, stage)
    if meta is None:
        return None, f"no {stage} training record (models/{stage}/meta.json)"
    if "trainable_parameters" in meta:
        return int(meta["trainable_parameters"]), None
    weights = results / "models" / stage / "final" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return None, f"no saved weights of {stage}"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        return int(sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())), None


def training_cost(results: Path, stages: Sequence[str]) -> dict:
    """Trainable parameters (sum over ``stages``) and seconds per step (pooled over them)."""
    counts, reasons = [], []
    for s in stages:
        n, why = _param_count(results, s)
        counts.append(n)
        reasons += [why] if why else []
    metas = [_meta(results, s) for s in stages]
    steps = sum(int(m.get("steps_done", 0)) for m in metas if m)
    seconds = sum(float(m.get("seconds", 0.0)) for m in metas if m)
    ok_time = all(metas) and steps > 0
    return {"trainable": sum(counts) if not reasons else None, "trainable_na": "; ".join(reasons) or None,
            "train_s_step": seconds / steps if ok_time else None,
            "train_s_step_na": None if ok_time else f"no training record of {', '.join(stages)}",
            "train_steps": steps if ok_time else None}


def sampling_cost(results: Path, method: str, shards: Sequence[str]) -> dict:
    """Seconds per slice spent sampling (``sampling_seconds`` of the shards' timing files, summed)."""
    seconds, slices = 0.0, 0
    for shard in shards:
        path = results / "recon" / method / shard
        if not path.is_file():
            raise LdpmInputError(path, "no reconstruction", f"run the reconstruct step for {method}")
        timing = timing_path(path)
        record = json.loads(timing.read_text()) if timing.is_file() else {}
        if "sampling_seconds" not in record:
            return {"sample_s_slice": None, "sample_s_slice_na":
                    f"no sampling time for recon/{method}/{shard} (reconstructed before times were "
                    "recorded): rerun its reconstruct job"}
        seconds += float(record["sampling_seconds"])
        slices += int(record["n_slices"])
    if slices == 0:
        return {"sample_s_slice": None, "sample_s_slice_na": "no test slices"}
    return {"sample_s_slice": seconds / slices, "sample_s_slice_na": None}


def _metric(summary: dict, key: str) -> dict:
    m = summary["metrics"].get(key) or {}
    reason = m.get("reason") if m else "not computed by this run"
    return {key: m.get("value"), f"{key}_std": m.get("std"), f"{key}_na": None if m.get("value") is not None
            else (reason or "not computed")}


def group_psnr(per_volume: pd.DataFrame, contrasts: Sequence[str], key: str, label: str) -> dict:
    vals = pd.to_numeric(per_volume.loc[per_volume["contrast"].astype(str).isin(contrasts), "psnr"],
                         errors="coerce").dropna().to_numpy(float)
    return {key: float(vals.mean()) if len(vals) else None,
            f"{key}_std": float(vals.std(ddof=1)) if len(vals) > 1 else None,
            f"{key}_n": int(len(vals)),
            f"{key}_na": None if len(vals) else f"no {label} ({'/'.join(contrasts)}) volumes in this test set"}


def lora_numeric(results: str | Path, methods: Sequence[str], n_steps: int,
                 mix_weights: Sequence[float]) -> pd.DataFrame:
    """The table's numbers: one row per method (see the module docstring for each source)."""
    results = Path(results)
    shards = sorted(p.name for p in (results / "data" / "test").glob("shard*.h5"))
    groups = {stage: group_contrasts(results, stage) for _, stage in GROUP_COLUMNS}
    rows = []
    for method in methods:
        summary_path = results / "metrics" / method / "summary.json"
        pv_path = results / "metrics" / method / "per_volume.csv"
        if not summary_path.is_file() or not pv_path.is_file():
            raise LdpmInputError(summary_path.parent, "no metrics for this method",
                                 f"run the evaluate step for {method}")
        summary = load_summary(summary_path)
        per_volume = pd.read_csv(pv_path, dtype={"volume": str, "contrast": str})
        row = {"method": method, "name": row_name(method, results, n_steps, mix_weights),
               "sampling_steps": step_variant(method)[1] or n_steps}
        for key in ("psnr", "ssim", "lpips"):
            row.update(_metric(summary, key))
        for key, stage in GROUP_COLUMNS:
            row.update(group_psnr(per_volume, groups[stage], key, GROUP_LABELS[stage]))
        row.update(training_cost(results, own_stages(method)))
        row.update(sampling_cost(results, method, shards))
        rows.append(row)
    return pd.DataFrame(rows)


def make_lora_table(results: str | Path, methods: Sequence[str], n_steps: int,
                    mix_weights: Sequence[float]) -> list[Path]:
    """Write ``results/tables/lora.{csv,md,tex}``."""
    results = Path(results)
    numeric = lora_numeric(results, methods, n_steps, mix_weights)
    groups = "; ".join(f"{GROUP_LABELS[s]}: {', '.join(group_contrasts(results, s))}"
                       for _, s in GROUP_COLUMNS)
    note = ("PSNR/SSIM/LPIPS: mean ± std over test volumes; PSNR T1-w and T2/FLAIR: mean ± std over "
            f"the test volumes of each contrast group ({groups}). Trainable params and train s/step: "
            "of the row's own training stage(s): LDPM = its control branch (`controlnet`); joint LoRA "
            "= adapter + a fresh control branch trained together, same data, loss, seed and steps as "
            "`controlnet`; group adapters = the adapter only (on LDPM's control branch, frozen); "
            "combined = both group adapters. Sample s/slice: Dual-Stage Sampler time per test slice, "
            "networks' loading excluded. Every timing was measured in this run on this machine, "
            "with other jobs sharing it. Step counts are in the row names: a row with fewer steps "
            "(the seed's \"Lightning\" point) only samples with fewer Dual-Stage Sampler steps, with "
            "the same trained networks; nothing is distilled for it.")
    return write_table(numeric, results / "tables" / "lora",
                       "LoRA adaptation of LDPM's denoiser (after " + citation("supir_lora")
                       + "): quality, parameters and time",
                       LORA_COLUMNS, note=note)


def curve_stages(methods: Sequence[str]) -> list[str]:
    """The rows' own training stages (:func:`own_stages`), each once, in row order."""
    return list(dict.fromkeys(s for m in methods for s in own_stages(m)))


def make_lora_curves(results: str | Path, methods: Sequence[str]) -> tuple[Path, pd.DataFrame]:
    """``figures/lora_curves.{png,pdf}``: the training loss of each row's own stage(s), and the
    mean loss over each stage's first and last 10% of steps
    (:func:`ldpm.report.plots.training_curves`)."""
    return write_training_curves(results, curve_stages(methods), "lora_curves")
