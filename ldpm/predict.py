"""``ldpm predict``: reconstruct a user's own fastMRI-format files with trained models.

Each input file (one ``.h5``, or every ``*.h5`` of a folder) goes through the DAG's own steps:
its RSS slices centre-cropped to ``data.crop_size`` (every slice kept), the measurement
``k_u = M F(x)`` with ``M`` the file's own ``mask`` dataset when it has one (it must then have
the crop's width), else the seeded 1-D Cartesian mask of each slice
(:func:`ldpm.mri.mask_for_slice` at the given acceleration, centre fraction and seed), then the
method (:func:`ldpm.methods.reconstruct_shard`). The output is fastMRI's submission layout
(``save_reconstructions``): ``<out_dir>/<file name>`` holding ``reconstruction`` [slices, H, W]
float32, written atomically. The checkpoints are ``<models>/<stage>`` (a finished run's
``results/models``, or after ``dvc pull``), or the folders given per stage.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
from tqdm.auto import tqdm

from .errors import LdpmInputError
from .io import atomic_path, open_hdf5
from .methods.graph import MULTICOIL_METHODS, method_options, method_stages
from .mri import mask_for_slice

_STR = h5py.string_dtype()


def input_files(path: str | Path) -> list[Path]:
    """The ``.h5`` file ``path``, or every ``*.h5`` under the folder ``path`` (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("*.h5") if p.is_file())
        if files:
            return files
        raise LdpmInputError(path, "holds no .h5 files", "pass a fastMRI-format file or a "
                             "folder of them")
    raise LdpmInputError(path, "does not exist", "pass a fastMRI-format file or a folder of them")


def stage_checkpoints(method: str, models: str | Path | None,
                      checkpoints: Mapping[str, Path] | None, with_sd: bool) -> dict[str, Path]:
    """``{stage: folder}`` for every stage ``method`` reads: the given folder, else
    ``<models>/<stage>``; a missing one is an error naming it."""
    given = dict(checkpoints or {})
    out = {}
    for stage in method_stages(method, with_sd):
        if stage not in given and not models:
            raise LdpmInputError(f"method {method}", f"needs the trained {stage} stage",
                                 "pass --models results/models (a finished run, or after dvc "
                                 f"pull) or --checkpoint {stage}=FOLDER")
        folder = Path(given[stage]) if stage in given else Path(models) / stage
        if not (folder / "final").is_dir() and not (folder / "model.safetensors").is_file():
            raise LdpmInputError(folder, f"holds no trained {stage} (no final/)",
                                 "run `make all` (or `dvc pull`) first, or pass --checkpoint "
                                 f"{stage}=FOLDER")
        out[stage] = folder
    return out


def _own_mask(path: Path, n_slices: int, width: int) -> np.ndarray | None:
    """The file's ``mask`` dataset as [n_slices, width] (None when it has none)."""
    with open_hdf5(path, "file", "pass an intact fastMRI-format file",
                   "re-download or re-export it") as f:
        if "mask" not in f:
            return None
        mask = np.asarray(f["mask"][()], dtype=np.float32)
    if mask.ndim == 1:
        mask = np.broadcast_to(mask, (n_slices, mask.shape[0]))
    if mask.shape[-1] != width or (mask.ndim == 2 and len(mask) != n_slices) or mask.ndim > 2:
        raise LdpmInputError(path, f"its mask has shape {mask.shape}, but its slices are "
                             f"reconstructed at width {width} (data.crop_size)",
                             "use a file whose k-space width is the crop size, or pass "
                             "--ignore-file-mask to simulate the configured masks")
    if not np.isfinite(mask).all() or not ((mask == 0) | (mask == 1)).all():
        raise LdpmInputError(path, "its mask holds values other than 0 and 1",
                             "fix the file's mask dataset, or pass --ignore-file-mask")
    return np.ascontiguousarray(mask)


def predict(method: str, inputs: str | Path, out_dir: str | Path, config: Mapping[str, Any],
            models: str | Path | None = None, checkpoints: Mapping[str, Path] | None = None,
            acceleration: int | None = None, center_fraction: float | None = None,
            mask_seed: int | None = None, use_file_mask: bool = True, device: str = "cpu",
            progress: bool = True) -> list[Path]:
    """Reconstruct every input file with ``method``; returns the written files."""
    from .data.fastmri import read_volume
    from .methods import reconstruct_shard

    if method in MULTICOIL_METHODS:
        raise LdpmInputError(f"method {method}", "reads the raw multicoil k-space through a "
                             "run's manifest", "use ldpm reconstruct inside the pipeline, or a "
                             "single-coil method (zero_filled, unet, varnet, ..., ldpm)")
    files = input_files(inputs)
    sd_path = (config.get("pretrained") or {}).get("sd_path")
    ckpts = stage_checkpoints(method, models, checkpoints, bool(sd_path))
    masks_cfg = config["masks"]
    acc = int(acceleration if acceleration is not None else masks_cfg["acceleration"])
    cf = float(center_fraction if center_fraction is not None else masks_cfg["center_fraction"])
    seed = int(mask_seed if mask_seed is not None else masks_cfg["seed"])
    crop = int(config["data"]["crop_size"])
    options = {**method_options(method, config["inference"]), "sd_path": sd_path, "device": device}
    out_dir = Path(out_dir)
    written = []
    with tempfile.TemporaryDirectory(prefix="ldpm-predict-") as tmp:
        for path in tqdm(files, desc=f"predict {method}", unit="file", disable=not progress):
            vol = read_volume(path, crop_size=crop, drop_last_slices=0)
            n, _, width = vol.targets.shape
            name = path.stem
            mask = _own_mask(path, n, width) if use_file_mask else None
            source = "file" if mask is not None else "seeded"
            if mask is None:
                mask = np.stack([mask_for_slice(name, int(s), width, acc, cf, base_seed=seed)
                                 for s in vol.slice_index]).astype(np.float32)
            shard, recon = Path(tmp) / f"{name}.shard.h5", Path(tmp) / f"{name}.recon.h5"
            with h5py.File(shard, "w") as f:
                f.create_dataset("target", data=vol.targets.astype(np.float32))
                f.create_dataset("mask", data=mask)
                f.create_dataset("volume", data=np.array([name] * n, dtype=object), dtype=_STR)
                f.create_dataset("slice", data=np.asarray(vol.slice_index, dtype=np.int64))
            reconstruct_shard(method, shard, recon, checkpoints=ckpts, options=dict(options))
            with h5py.File(recon) as f:
                images = f["recon"][()].astype(np.float32)
            target = out_dir / path.name
            with atomic_path(target) as t, h5py.File(t, "w") as f:
                f.create_dataset("reconstruction", data=images)
                f.attrs.update({"method": method, "mask": source, "acceleration": acc,
                                "center_fraction": cf, "mask_seed": seed})
            written.append(target)
    return written
