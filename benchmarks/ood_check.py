"""Diagnostics of a finished run's out-of-distribution scores: two numbers per method and volume
that locate where a loss against zero-filled comes from.

    python benchmarks/ood_check.py --run results [--out results/ood_check.json]

Run from the repository root after `make all`. It reads what the DAG wrote for Table III's OOD
column (``results/data/ood/test/shard0.h5``, the OOD set with its seeded masks, and every
``results/recon/<method>/ood.h5``) and reruns no model. Printed per method and volume,
fastMRI's per-volume PSNR (dB) of:

* ``raw``: the method's reconstruction (Table III's OOD column averages these);
* ``hard DC``: the reconstruction with its sampled k-space lines replaced by the measured ones
  (how much the method changes what was measured);
* ``best scale``: the reconstruction times the one least-squares global factor (how much of the
  loss is a wrong overall intensity), printed with that factor;
* ``anatomy`` / ``background``: the PSNR with the error counted only inside / only outside the
  anatomy (the target above 10 % of its volume's maximum, closed and hole-filled per slice).
  The two squared errors add up to the whole one, so this says where a method loses against
  zero-filled: in the anatomy, or in a background that the reference itself fills with noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

from ldpm.metrics.image import psnr
from ldpm.mri import fft2c, ifft2c


def psnr_per_volume(recon: np.ndarray, target: np.ndarray, volumes: np.ndarray,
                    region: np.ndarray | None = None) -> dict[str, float]:
    """fastMRI's PSNR of each volume (its max as the data range); with ``region`` (bool, the
    targets' shape) the squared error outside it counts as 0."""
    out = {}
    for name in np.unique(volumes):
        t, r = target[volumes == name], recon[volumes == name]
        if region is not None:
            t, r = t * region[volumes == name], r * region[volumes == name]
        out[str(name)] = round(psnr(t, r, maxval=target[volumes == name].max()), 2)
    return out


def anatomy_mask(target: np.ndarray, volumes: np.ndarray) -> np.ndarray:
    """Per slice: the target above 10 % of its volume's maximum, closed (3 iterations) and with
    its holes filled."""
    from scipy import ndimage

    mask = np.zeros(target.shape, dtype=bool)
    for name in np.unique(volumes):
        rows = np.flatnonzero(volumes == name)
        threshold = 0.1 * target[rows].max()
        for i in rows:
            closed = ndimage.binary_closing(target[i] > threshold, iterations=3)
            mask[i] = ndimage.binary_fill_holes(closed)
    return mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("results"))
    p.add_argument("--out", type=Path, default=None, help="default: <run>/ood_check.json")
    a = p.parse_args()
    shard = a.run / "data" / "ood" / "test" / "shard0.h5"
    recons = sorted(a.run.glob("recon/*/ood.h5"))
    if not shard.is_file() or not recons:
        raise SystemExit(f"ood_check: error: {shard} or {a.run}/recon/*/ood.h5 not found. Fix: run "
                         "the DAG with an out-of-distribution set (data.ood_root, or embedded.ood)")
    with h5py.File(shard) as f:
        target, mask = f["target"][()], f["mask"][()][:, None, :]
        volumes = f["volume"][()].astype(str)
    measured = mask * fft2c(target.astype(np.complex64))
    anatomy = anatomy_mask(target, volumes)
    results = {}
    for recon_path in recons:
        method = recon_path.parent.name
        with h5py.File(recon_path) as f:
            recon = f["recon"][()]
        hard_dc = np.abs(ifft2c(measured + (1 - mask) * fft2c(recon.astype(np.complex64))))
        scale = float((recon * target).sum() / (recon * recon).sum())
        results[method] = {"raw": psnr_per_volume(recon, target, volumes),
                           "hard_dc": psnr_per_volume(hard_dc, target, volumes),
                           "best_scale": psnr_per_volume(scale * recon, target, volumes),
                           "scale": round(scale, 3),
                           "anatomy": psnr_per_volume(recon, target, volumes, anatomy),
                           "background": psnr_per_volume(recon, target, volumes, ~anatomy)}
        print(method, json.dumps(results[method]), flush=True)
    out = a.out or a.run / "ood_check.json"
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
