"""Score a method on the **val** split: the split every hyperparameter is chosen on.

The val slices get masks exactly as the test slices do (:func:`ldpm.mri.mask_for_slice`, seeded
by ``masks.seed``, the volume and the slice), the method reconstructs them through the same
registry as the test shards (:func:`ldpm.methods.reconstruct_shard`), and PSNR/SSIM/NMSE are
fastMRI's per-volume definitions (:mod:`ldpm.metrics.image`), mean and std over val volumes.
The test split is never read here.

Outputs in ``out_dir``: ``shard.h5`` (the val slices and masks), ``recon.h5``, ``summary.json``
(``{"method", "split", "n_volumes", "n_slices", "metrics": {psnr|ssim|nmse: {mean, std}}}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import LdpmInputError
from ..io import write_text_atomic
from .image import nmse, psnr, ssim


def score_split(method: str, manifest: str | Path, checkpoints: Mapping[str, Path],
                options: Mapping[str, Any], masks: Mapping[str, Any], out_dir: str | Path,
                split: str = "val") -> dict[str, Any]:
    """Reconstruct and score ``method`` on ``split`` (not ``test``); returns the summary."""
    from ..data.store import read_shard, write_test_shard
    from ..methods import reconstruct_shard

    if split == "test":
        raise LdpmInputError(f"split {split!r}", "is read only by the final evaluation",
                             "score on val (or train) while tuning")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shard, recon = out_dir / "shard.h5", out_dir / "recon.h5"
    write_test_shard(manifest, 0, 1, shard, acceleration=int(masks["acceleration"]),
                     center_fraction=float(masks["center_fraction"]),
                     mask_seed=int(masks["seed"]), split=split)
    reconstruct_shard(method, shard, recon, checkpoints=checkpoints, options=dict(options))
    data, pred = read_shard(shard), read_shard(recon)["recon"]
    if not len(data["target"]):
        raise LdpmInputError(manifest, f"has no {split!r} slices", "add subjects to the split")
    volumes = np.asarray(data["volume"])
    rows = []
    for v in sorted(set(data["volume"])):
        sel = volumes == v
        gt, x = data["target"][sel], pred[sel]
        rows.append({"psnr": psnr(gt, x), "ssim": ssim(gt, x), "nmse": nmse(gt, x)})
    metrics = {k: {"mean": float(np.mean([r[k] for r in rows])),
                   "std": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0}
               for k in ("psnr", "ssim", "nmse")}
    summary = {"method": method, "split": split, "n_volumes": len(rows),
               "n_slices": int(len(data["target"])), "metrics": metrics}
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
