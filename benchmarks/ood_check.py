"""Out-of-distribution check of a finished run: every method on dipy's real scans, against
zero-filled, with two diagnostics that locate a loss.

    python benchmarks/ood_check.py --run results --out results/ood_check \
        [--methods zero_filled,unet,varnet,swinmr,score_mri,sketcher_only,ldpm]

Run from the repository root after `make all` (it reads `results/models/*`). The volumes are
``ldpm.data.ood`` (never in training, val or test); they go through the same CLI steps as the
DAG's data (preprocess -> manifest -> test shard with the config's masks), every slice in the
test split. Printed per method and volume, fastMRI's per-volume PSNR (dB) of:

* ``raw``: the method's reconstruction;
* ``hard DC``: the reconstruction with its sampled k-space lines replaced by the measured ones
  (how much the method changes what was measured);
* ``best scale``: the reconstruction times the one least-squares global factor (how much of the
  loss is a wrong overall intensity), printed with that factor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ldpm.config import load_config
from ldpm.data.ood import build_ood
from ldpm.methods import method_options, method_stages
from ldpm.mri import fft2c, ifft2c


def ldpm_cli(*args) -> None:
    subprocess.run(["ldpm", *map(str, args)], check=True)


def psnr_per_volume(recon: np.ndarray, target: np.ndarray, volumes: np.ndarray) -> dict[str, float]:
    """fastMRI's PSNR of each volume (its max as the data range)."""
    out = {}
    for name in np.unique(volumes):
        t, r = target[volumes == name], recon[volumes == name]
        out[str(name)] = round(float(10 * np.log10(t.max() ** 2 / np.mean((t - r) ** 2))), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("results"))
    p.add_argument("--out", type=Path, default=Path("results/ood_check"))
    p.add_argument("--methods", default="zero_filled,unet,varnet,swinmr,score_mri,sketcher_only,ldpm")
    a = p.parse_args()
    cfg = load_config()
    crop, drop, masks = cfg["data"]["crop_size"], cfg["data"]["drop_last_slices"], cfg["masks"]
    stores = []
    for raw in build_ood(a.out / "raw", cfg["embedded"], crop, drop, cfg["seed"]):
        stores.append(a.out / "slices" / raw.name)
        ldpm_cli("preprocess", "--input", raw, "--output", stores[-1], "--crop-size", crop,
                 "--drop-last-slices", drop)
    manifest = a.out / "manifest.csv"
    ldpm_cli("manifest", "--stores", *stores, "--output", manifest, "--split-fractions",
             json.dumps({"train": 0.0, "val": 0.0, "test": 1.0}), "--seed", cfg["seed"])
    df = pd.read_csv(manifest)
    df["split"] = "test"  # the by-subject split keeps one train subject per group: none here
    df.to_csv(manifest, index=False)
    shard = a.out / "shard0.h5"
    ldpm_cli("test-shard", "--manifest", manifest, "--shard", 0, "--n-shards", 1, "--output", shard,
             "--acceleration", masks["acceleration"], "--center-fraction", masks["center_fraction"],
             "--mask-seed", masks["seed"])
    with h5py.File(shard) as f:
        target, mask = f["target"][()], f["mask"][()][:, None, :]
        volumes = f["volume"][()].astype(str)
    measured = mask * fft2c(target.astype(np.complex64))
    results = {}
    for method in a.methods.split(","):
        recon_path = a.out / "recon" / f"{method}.h5"
        ckpts = [w for s in method_stages(method, False)
                 for w in ("--checkpoint", f"{s}={a.run}/models/{s}")]
        opts = {**method_options(method, cfg["inference"]), "sd_path": None}
        ldpm_cli("reconstruct", "--method", method, "--shard-data", shard, *ckpts,
                 "--options", json.dumps(opts), "--output", recon_path)
        with h5py.File(recon_path) as f:
            recon = f["recon"][()]
        hard_dc = np.abs(ifft2c(measured + (1 - mask) * fft2c(recon.astype(np.complex64))))
        scale = float((recon * target).sum() / (recon * recon).sum())
        results[method] = {"raw": psnr_per_volume(recon, target, volumes),
                           "hard_dc": psnr_per_volume(hard_dc, target, volumes),
                           "best_scale": psnr_per_volume(scale * recon, target, volumes),
                           "scale": round(scale, 3)}
        print(method, json.dumps(results[method]), flush=True)
    (a.out / "ood_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
