"""Per-volume slice stores, the slice manifest with its subject split, and test shards.

Formats (all HDF5 written atomically, see :mod:`ldpm.io`):

* slice store (one per volume): ``target`` [N, H, W] float32, ``slice_index`` [N] int64;
  attrs volume, source_file, anatomy, contrast, field_strength, subject, volume_max.
* manifest CSV: one row per slice with columns :data:`MANIFEST_COLUMNS`.
* test shard: ``target`` [N, H, W] float32, ``mask`` [N, W] float32, ``volume`` (utf-8
  strings), ``slice`` [N] int64, plus ``subject``, ``contrast``, ``field_strength``,
  ``volume_max`` per slice; attrs acceleration, center_fraction, mask_seed, shard, n_shards,
  split.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

from ..errors import LdpmInputError
from ..io import atomic_path
from ..mri import mask_for_slice
from .fastmri import read_volume

MANIFEST_COLUMNS = ["volume", "slice", "subject", "anatomy", "contrast", "field_strength",
                    "volume_max", "store", "split"]
SPLITS = ("train", "val", "test")
_STORE_ATTRS = ("volume", "source_file", "anatomy", "contrast", "field_strength", "subject")
_STR = h5py.string_dtype("utf-8")


def preprocess_volume(h5_path: str | Path, out_path: str | Path, crop_size: int,
                      drop_last_slices: int) -> Path:
    """Read a fastMRI-format file and write its slice store; nothing is written on bad input."""
    vol = read_volume(h5_path, crop_size=crop_size, drop_last_slices=drop_last_slices)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("target", data=vol.targets)
        f.create_dataset("slice_index", data=vol.slice_index.astype(np.int64))
        for key in _STORE_ATTRS:
            f.attrs[key] = vol.meta[key]
        f.attrs["volume_max"] = float(vol.targets.max())
    return Path(out_path)


def _store_rows(store: Path) -> list[dict[str, Any]]:
    if not store.is_file():
        raise LdpmInputError(store, "slice store not found", "run the preprocess step first")
    with h5py.File(store, "r") as f:
        attrs = {k: f.attrs[k] for k in (*_STORE_ATTRS, "volume_max")}
        slices = f["slice_index"][()]
    return [{"volume": str(attrs["volume"]), "slice": int(s), "subject": str(attrs["subject"]),
             "anatomy": str(attrs["anatomy"]), "contrast": str(attrs["contrast"]),
             "field_strength": float(attrs["field_strength"]),
             "volume_max": float(attrs["volume_max"]), "store": str(store)} for s in slices]


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def split_subjects(subject_groups: Mapping[str, Any], fractions: Mapping[str, float],
                   seed: int) -> dict[str, str]:
    """Assign each subject to train/val/test, stratified by its group (field strength).

    Within each group the sorted subjects are shuffled with a seed derived from ``seed`` and
    the group, then cut by the fractions. A group of >= 2 subjects gets >= 1 test subject
    (when the test fraction is > 0) and every group keeps >= 1 train subject.
    """
    groups: dict[str, list[str]] = {}
    for subject, key in subject_groups.items():
        groups.setdefault(repr(key), []).append(subject)
    assignment: dict[str, str] = {}
    for key in sorted(groups):
        subjects = sorted(groups[key])
        n = len(subjects)
        rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
        order = [subjects[i] for i in rng.permutation(n)]
        n_test = _round_half_up(n * fractions["test"])
        n_val = _round_half_up(n * fractions["val"])
        if n >= 2 and fractions["test"] > 0:
            n_test = max(n_test, 1)
        while n_test + n_val > n - 1 and n_val > 0:
            n_val -= 1
        n_test = min(n_test, n - 1)
        for i, subject in enumerate(order):
            assignment[subject] = ("test" if i < n_test else
                                   "val" if i < n_test + n_val else "train")
    return assignment


def build_manifest(store_paths: Sequence[str | Path], out_csv: str | Path,
                   split_fractions: Mapping[str, float], seed: int) -> pd.DataFrame:
    """One row per slice of every store, split by subject (seeded, stratified by field strength).

    Rows are sorted by (volume, slice), so the same stores and seed give the same CSV.
    """
    rows = [row for p in store_paths for row in _store_rows(Path(p))]
    if not rows:
        raise LdpmInputError(out_csv, "no slices to put in the manifest",
                             "check that the slice stores were built and are not empty")
    df = pd.DataFrame(rows).sort_values(["volume", "slice"], kind="stable")
    dup = df.duplicated(["volume", "slice"])
    if dup.any():
        name = df.loc[dup, "volume"].iloc[0]
        raise LdpmInputError(out_csv, f"volume {name} comes from two stores",
                             "keep one store per volume (volume names must be unique)")
    groups = {s: tuple(sorted(g)) for s, g in df.groupby("subject")["field_strength"].unique()
              .items()}
    df["split"] = df["subject"].map(split_subjects(groups, split_fractions, seed))
    df = df[MANIFEST_COLUMNS].reset_index(drop=True)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df


def read_manifest(manifest_csv: str | Path) -> pd.DataFrame:
    path = Path(manifest_csv)
    if not path.is_file():
        raise LdpmInputError(path, "manifest not found", "run the manifest step first")
    df = pd.read_csv(path, dtype={"volume": str, "subject": str, "store": str, "split": str})
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise LdpmInputError(path, f"manifest lacks columns {sorted(missing)}",
                             "rebuild it with build_manifest")
    return df


def _select_split(df: pd.DataFrame, split: str, where: str | Path) -> pd.DataFrame:
    if split not in SPLITS:
        raise LdpmInputError(where, f"unknown split {split!r}", f"use one of {SPLITS}")
    return df[df["split"] == split].sort_values(["volume", "slice"]).reset_index(drop=True)


def _resolve_store(store: str, manifest_csv: str | Path) -> Path:
    """A store path as written, else relative to the manifest's folder."""
    path = Path(store)
    if not path.is_file() and not path.is_absolute():
        alt = Path(manifest_csv).parent / path
        if alt.is_file():
            return alt
    if not path.is_file():
        raise LdpmInputError(store, "slice store listed in the manifest is missing",
                             f"rebuild the stores and {manifest_csv}")
    return path


def raw_sources(manifest_csv: str | Path, volumes: Sequence[str] | None = None) -> dict[str, Path]:
    """Volume -> the raw multicoil file its slice store was made from (attr ``source_file``),
    for ``volumes`` (default: all); only their stores are opened."""
    df = read_manifest(manifest_csv).drop_duplicates("volume")
    if volumes is not None:
        df = df[df["volume"].isin(set(volumes))]
    out: dict[str, Path] = {}
    for volume, store in df[["volume", "store"]].itertuples(index=False):
        with h5py.File(_resolve_store(str(store), manifest_csv), "r") as f:
            out[str(volume)] = Path(str(f.attrs["source_file"]))
    return out


def _load_store(path: Path) -> tuple[np.ndarray, dict[int, int]]:
    """(targets [N, H, W], slice index -> row) of one store."""
    with h5py.File(path, "r") as f:
        targets = f["target"][()]
        rows = {int(s): i for i, s in enumerate(f["slice_index"][()])}
    return targets, rows


def _gather_targets(rows: pd.DataFrame, manifest_csv: str | Path,
                    shape: tuple[int, int]) -> np.ndarray:
    out = np.empty((len(rows), *shape), dtype=np.float32)
    for store, group in rows.groupby("store", sort=False):
        targets, index = _load_store(_resolve_store(str(store), manifest_csv))
        for pos, s in zip(np.flatnonzero(rows["store"].to_numpy() == store), group["slice"]):
            out[pos] = targets[index[int(s)]]
    return out


def _image_shape(df: pd.DataFrame, manifest_csv: str | Path) -> tuple[int, int]:
    with h5py.File(_resolve_store(str(df["store"].iloc[0]), manifest_csv), "r") as f:
        return tuple(f["target"].shape[1:])  # type: ignore[return-value]


def load_split(manifest_csv: str | Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """All targets of one split [N, H, W] float32 and their manifest rows (same order)."""
    df = read_manifest(manifest_csv)
    if df.empty:
        raise LdpmInputError(manifest_csv, "manifest is empty", "rebuild it")
    rows = _select_split(df, split, manifest_csv)
    return _gather_targets(rows, manifest_csv, _image_shape(df, manifest_csv)), rows


def write_test_shard(manifest_csv: str | Path, shard: int, n_shards: int, out_path: str | Path,
                     acceleration: int, center_fraction: float, mask_seed: int,
                     split: str = "test") -> Path:
    """Write the slices of the ``split`` volumes with (volume rank % n_shards == shard).

    Volumes are ranked in sorted order; masks are :func:`ldpm.mri.mask_for_slice`, so they
    do not depend on the sharding. A shard may be empty (N = 0).
    """
    if not 0 <= shard < n_shards:
        raise LdpmInputError(out_path, f"shard {shard} is not in 0..{n_shards - 1}",
                             "use 0 <= shard < inference.n_shards")
    df = read_manifest(manifest_csv)
    if df.empty:
        raise LdpmInputError(manifest_csv, "manifest is empty", "rebuild it")
    rows = _select_split(df, split, manifest_csv)
    volumes = sorted(rows["volume"].unique())[shard::n_shards]
    rows = rows[rows["volume"].isin(volumes)].reset_index(drop=True)
    height, width = _image_shape(df, manifest_csv)
    targets = _gather_targets(rows, manifest_csv, (height, width))
    masks = np.stack([mask_for_slice(v, int(s), width, acceleration, center_fraction,
                                     base_seed=mask_seed)
                      for v, s in zip(rows["volume"], rows["slice"])]
                     ) if len(rows) else np.zeros((0, width), dtype=np.float32)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("target", data=targets)
        f.create_dataset("mask", data=masks.astype(np.float32))
        for key in ("volume", "subject", "contrast"):
            f.create_dataset(key, data=rows[key].astype(str).to_numpy(dtype=object),
                             dtype=_STR, shape=(len(rows),))
        f.create_dataset("slice", data=rows["slice"].to_numpy(dtype=np.int64))
        f.create_dataset("field_strength", data=rows["field_strength"].to_numpy(dtype=float))
        f.create_dataset("volume_max", data=rows["volume_max"].to_numpy(dtype=np.float32))
        f.attrs.update({"acceleration": int(acceleration),
                        "center_fraction": float(center_fraction), "mask_seed": int(mask_seed),
                        "shard": int(shard), "n_shards": int(n_shards), "split": split})
    return Path(out_path)


def read_shard(path: str | Path) -> dict[str, Any]:
    """A shard as a flat dict: datasets as arrays (``volume``, ``subject``, ``contrast`` as
    ``list[str]``) and the attrs (acceleration, center_fraction, mask_seed, ...)."""
    path = Path(path)
    if not path.is_file():
        raise LdpmInputError(path, "test shard not found", "run the shard step first")
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for key, ds in f.items():
            out[key] = list(ds.asstr()[()]) if ds.dtype.kind == "O" else ds[()]
        for key, value in f.attrs.items():
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out
