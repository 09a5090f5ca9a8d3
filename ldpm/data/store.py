"""Per-volume slice stores, the slice manifest with its subject split, and test shards.

Formats (all HDF5 written atomically, see :mod:`ldpm.io`):

* slice store (one per volume): ``target`` [N, H, W] float32, ``slice_index`` [N] int64;
  attrs volume, source_file, anatomy, contrast, field_strength, subject, crop_width (the
  side of the square centre crop: ``data.crop_size``, or narrower for a volume narrower than
  it, zero-padded to the crop size), volume_max.
  ``source_file`` is the raw file as preprocessing was given it: an absolute path stays
  absolute, a relative one is written relative to the store's own folder.
* manifest CSV: one row per slice with columns :data:`MANIFEST_COLUMNS`; ``store`` is
  relative to the manifest's own folder, so stores and manifest can be moved together.
  :func:`read_manifest` returns it resolved (usable from the working directory).
* test shard: ``target`` [N, H, W] float32, ``mask`` [N, W] float32, ``volume`` (utf-8
  strings), ``slice`` [N] int64, plus ``subject``, ``contrast``, ``field_strength``,
  ``volume_max`` per slice; attrs acceleration, center_fraction, mask_seed, shard, n_shards,
  split.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

from ..errors import LdpmInputError
from ..io import atomic_path, open_hdf5
from ..mri import mask_for_slice
from .fastmri import read_volume

MANIFEST_COLUMNS = ["volume", "slice", "subject", "anatomy", "contrast", "field_strength",
                    "crop_width", "volume_max", "store", "split"]
SPLITS = ("train", "val", "test")
_STORE_ATTRS = ("volume", "source_file", "anatomy", "contrast", "field_strength", "subject",
                "crop_width")
_STR = h5py.string_dtype("utf-8")
#: the fix named when a slice store is missing, unreadable or malformed
REBUILD_STORE = "rebuild it with the preprocess step (ldpm preprocess)"
_REBUILD_SHARD = "rebuild it with the test-shard step (ldpm test-shard)"


def _relative_to(path: str | Path, folder: str | Path) -> str:
    """``path`` relative to ``folder`` (both taken from the working directory)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def _source_attr(source: str | Path, store: str | Path) -> str:
    """The raw file as written in a store: absolute as given, else relative to the store."""
    return str(source) if Path(source).is_absolute() else _relative_to(source, Path(store).parent)


def preprocess_volume(h5_path: str | Path, out_path: str | Path, crop_size: int,
                      drop_last_slices: int) -> Path:
    """Read a fastMRI-format file and write its slice store; nothing is written on bad input."""
    vol = read_volume(h5_path, crop_size=crop_size, drop_last_slices=drop_last_slices)
    meta = {**vol.meta, "source_file": _source_attr(vol.meta["source_file"], out_path)}
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("target", data=vol.targets)
        f.create_dataset("slice_index", data=vol.slice_index.astype(np.int64))
        for key in _STORE_ATTRS:
            f.attrs[key] = meta[key]
        f.attrs["volume_max"] = float(vol.targets.max())
    return Path(out_path)


def _positive(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        return False


def _source_path(store: Path, source_attr: Any) -> Path:
    """The raw file a store was made from: its ``source_file`` attr, relative to the store's folder."""
    source = Path(str(source_attr))
    return source if source.is_absolute() else store.parent / source


def _subject_groups(df: pd.DataFrame) -> dict[str, tuple]:
    """Subject -> its sorted field strengths: the strata :func:`split_subjects` balances."""
    return {s: tuple(sorted(g)) for s, g in df.groupby("subject")["field_strength"].unique().items()}


def _store_rows(store: Path, manifest_dir: Path) -> list[dict[str, Any]]:
    with open_hdf5(store, "slice store", "run the preprocess step first", REBUILD_STORE) as f:
        missing = [k for k in (*_STORE_ATTRS, "volume_max") if k not in f.attrs]
        if missing or "slice_index" not in f:
            raise LdpmInputError(store, f"is not a slice store (no {missing or 'slice_index'})",
                                 REBUILD_STORE)
        attrs = {k: f.attrs[k] for k in (*_STORE_ATTRS, "volume_max")}
        slices = f["slice_index"][()]
    for key in ("volume_max", "field_strength"):
        if not _positive(attrs[key]):
            raise LdpmInputError(store, f"{key} is {attrs[key]}, not a positive number",
                                 REBUILD_STORE)
    stored = _relative_to(store, manifest_dir)
    folder = _source_path(store, attrs["source_file"]).parent.name
    return [{"volume": str(attrs["volume"]), "source_folder": folder, "slice": int(s), "subject": str(attrs["subject"]),
             "anatomy": str(attrs["anatomy"]), "contrast": str(attrs["contrast"]),
             "field_strength": float(attrs["field_strength"]), "crop_width": int(attrs["crop_width"]),
             "volume_max": float(attrs["volume_max"]), "store": stored} for s in slices]


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


#: ``data.split``: by subject over all volumes, or fastMRI's own folders; ``test``: every volume
#: in the test split (the out-of-distribution set, which nothing trains or tunes on)
SPLIT_MODES = ("subjects", "folders", "test")


def folder_split(df: pd.DataFrame, split_fractions: Mapping[str, float], seed: int,
                 where: str | Path) -> pd.Series:
    """fastMRI's split (``data.split: folders``): volumes from a ``*_val`` folder (e.g.
    ``multicoil_val/``) are the test split; those from a ``*_train`` folder are split into train
    and val by subject, in the ratio of ``split_fractions``' train and val. A subject with
    volumes in both folders is refused (it would leak into training)."""
    folders = df["source_folder"]
    other = sorted(set(f for f in folders if not f.endswith(("_train", "_val"))))
    if other:
        vol = df.loc[folders == other[0], "volume"].iloc[0]
        raise LdpmInputError(where, f"volume {vol} comes from folder {other[0]!r}, neither a "
                             "*_train nor a *_val folder", "with data.split: folders, keep the raw "
                             "files in fastMRI's multicoil_train/ and multicoil_val/ folders")
    train_pool = df[folders.str.endswith("_train")]
    if train_pool.empty or len(train_pool) == len(df):
        raise LdpmInputError(where, "data.split: folders needs volumes from both a *_train and a "
                             "*_val folder", "put fastMRI's multicoil_train/ and multicoil_val/ "
                             "under data.fastmri_root")
    shared = sorted(set(train_pool["subject"]) & set(df.loc[folders.str.endswith("_val"), "subject"]))
    if shared:
        raise LdpmInputError(where, f"subject {shared[0]!r} has volumes in both a *_train and a "
                             "*_val folder, so it would be in training and in the test split",
                             "keep each subject's volumes in one folder, or use data.split: subjects")
    tv = float(split_fractions["train"]) + float(split_fractions["val"])
    if not tv > 0 or not float(split_fractions["train"]) > 0:
        raise LdpmInputError(where, "data.split_fractions gives no train share", "set train > 0")
    fractions = {"train": split_fractions["train"] / tv, "val": split_fractions["val"] / tv,
                 "test": 0.0}
    assignment = split_subjects(_subject_groups(train_pool), fractions, seed)
    return pd.Series(np.where(folders.str.endswith("_val"), "test",
                              df["subject"].map(assignment).fillna("test")), index=df.index)


def build_manifest(store_paths: Sequence[str | Path], out_csv: str | Path,
                   split_fractions: Mapping[str, float], seed: int,
                   split: str = "subjects") -> pd.DataFrame:
    """One row per slice of every store, split by subject (seeded, stratified by field strength),
    or (``split="folders"``) by fastMRI's folders, :func:`folder_split`, or (``split="test"``)
    all in the test split.

    Rows are sorted by (volume, slice), so the same stores and seed give the same CSV. The
    ``store`` column is relative to the folder of ``out_csv``.
    """
    if split not in SPLIT_MODES:
        raise LdpmInputError(out_csv, f"unknown split {split!r}", f"use one of {SPLIT_MODES}")
    rows = [row for p in store_paths for row in _store_rows(Path(p), Path(out_csv).parent)]
    if not rows:
        raise LdpmInputError(out_csv, "no slices to put in the manifest",
                             "check that the slice stores were built and are not empty")
    df = pd.DataFrame(rows).sort_values(["volume", "slice"], kind="stable")
    dup = df.duplicated(["volume", "slice"])
    if dup.any():
        name = df.loc[dup, "volume"].iloc[0]
        raise LdpmInputError(out_csv, f"volume {name} comes from two stores",
                             "keep one store per volume (volume names must be unique)")
    if split == "folders":
        df["split"] = folder_split(df, split_fractions, seed, out_csv)
    elif split == "test":
        df["split"] = "test"
    else:
        df["split"] = df["subject"].map(split_subjects(_subject_groups(df), split_fractions, seed))
    df = df[MANIFEST_COLUMNS].reset_index(drop=True)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df


def read_manifest(manifest_csv: str | Path) -> pd.DataFrame:
    """The manifest's rows, checked, with ``store`` resolved against the manifest's folder.

    A missing or unreadable file, missing columns, empty or non-numeric cells, a volume_max
    that is not positive, or an unknown split raise :class:`LdpmInputError` naming the file.
    """
    path = Path(manifest_csv)
    fix = "rebuild it with the manifest step (ldpm manifest)"
    if not path.is_file():
        raise LdpmInputError(path, "manifest not found", "run the manifest step first")
    try:
        df = pd.read_csv(path, dtype={"volume": str, "subject": str, "anatomy": str,
                                      "contrast": str, "store": str, "split": str})
    except pd.errors.EmptyDataError as e:
        raise LdpmInputError(path, "manifest is an empty file", fix) from e
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        problem = " ".join(str(e).split())
        raise LdpmInputError(path, f"is not a readable manifest CSV ({problem})", fix) from e
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise LdpmInputError(path, f"manifest lacks columns {sorted(missing)}", fix)
    for col in ("volume", "subject", "store", "split"):
        if df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna())[0])
            raise LdpmInputError(path, f"line {row + 2} has no {col}", fix)
    for col in ("slice", "crop_width", "field_strength", "volume_max"):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        integer = col in ("slice", "crop_width")
        bad = (values != np.round(values)) if integer else np.zeros(len(values), bool)
        bad |= (values < 0) if col == "slice" else ~(values > 0)
        bad |= ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            kind = {"slice": "slice index", "crop_width": "positive integer"}.get(col, "positive number")
            raise LdpmInputError(path, f"line {row + 2} (volume {df['volume'].iloc[row]}) has "
                                 f"{col} {str(df[col].iloc[row])!r}, not a {kind}", fix)
        df[col] = values.astype(np.int64) if integer else values
    unknown = sorted(set(df["split"]) - set(SPLITS))
    if unknown:
        raise LdpmInputError(path, f"unknown split(s) {unknown}", f"{fix}; splits are {SPLITS}")
    df["store"] = [s if Path(s).is_absolute() else str(path.parent / s) for s in df["store"]]
    return df


def _select_split(df: pd.DataFrame, split: str, where: str | Path) -> pd.DataFrame:
    if split not in SPLITS:
        raise LdpmInputError(where, f"unknown split {split!r}", f"use one of {SPLITS}")
    return df[df["split"] == split].sort_values(["volume", "slice"]).reset_index(drop=True)


def _resolve_store(store: str, manifest_csv: str | Path) -> Path:
    """A store path from :func:`read_manifest` (already resolved), checked to exist."""
    path = Path(store)
    if not path.is_file():
        raise LdpmInputError(store, f"slice store listed in {manifest_csv} is missing",
                             f"rebuild the stores and {manifest_csv} (the manifest lists "
                             "stores relative to its own folder: move them together)")
    return path


def raw_sources(manifest_csv: str | Path, volumes: Sequence[str] | None = None) -> dict[str, Path]:
    """Volume -> the raw multicoil file its slice store was made from (attr ``source_file``),
    for ``volumes`` (default: all); only their stores are opened."""
    df = read_manifest(manifest_csv).drop_duplicates("volume")
    if volumes is not None:
        df = df[df["volume"].isin(set(volumes))]
    out: dict[str, Path] = {}
    for volume, store in df[["volume", "store"]].itertuples(index=False):
        path = _resolve_store(str(store), manifest_csv)
        with open_hdf5(path, "slice store", "run the preprocess step first", REBUILD_STORE) as f:
            if "source_file" not in f.attrs:
                raise LdpmInputError(path, "slice store has no source_file attr", REBUILD_STORE)
            out[str(volume)] = _source_path(path, f.attrs["source_file"])
    return out


def _load_store(path: Path) -> tuple[np.ndarray, dict[int, int]]:
    """(targets [N, H, W], slice index -> row) of one store."""
    with open_hdf5(path, "slice store", "run the preprocess step first", REBUILD_STORE) as f:
        if "target" not in f or "slice_index" not in f:
            raise LdpmInputError(path, "is not a slice store (no 'target' or 'slice_index')",
                                 REBUILD_STORE)
        targets = f["target"][()]
        slices = f["slice_index"][()]
    if targets.ndim != 3 or slices.shape != (len(targets),):
        raise LdpmInputError(path, f"target {targets.shape} and slice_index {slices.shape} "
                             "do not match", REBUILD_STORE)
    finite = np.isfinite(targets).all(axis=(1, 2))
    if not finite.all():
        raise LdpmInputError(path, f"target of slice {int(slices[~finite][0])} contains NaN "
                             "or inf", REBUILD_STORE)
    rows = {int(s): i for i, s in enumerate(slices)}
    return targets, rows


def _gather_targets(rows: pd.DataFrame, manifest_csv: str | Path,
                    shape: tuple[int, int]) -> np.ndarray:
    out = np.empty((len(rows), *shape), dtype=np.float32)
    for store, group in rows.groupby("store", sort=False):
        path = _resolve_store(str(store), manifest_csv)
        targets, index = _load_store(path)
        if targets.shape[1:] != tuple(shape):
            raise LdpmInputError(path, f"slices are {targets.shape[1:]}, the manifest's first "
                                 f"store's are {tuple(shape)}", "preprocess every volume with "
                                 "the same data.crop_size")
        for pos, s in zip(np.flatnonzero(rows["store"].to_numpy() == store), group["slice"]):
            if int(s) not in index:
                raise LdpmInputError(path, f"has no slice {int(s)} listed in {manifest_csv}",
                                     f"rebuild the stores and {manifest_csv}")
            out[pos] = targets[index[int(s)]]
    return out


def _image_shape(df: pd.DataFrame, manifest_csv: str | Path) -> tuple[int, int]:
    path = _resolve_store(str(df["store"].iloc[0]), manifest_csv)
    with open_hdf5(path, "slice store", "run the preprocess step first", REBUILD_STORE) as f:
        if "target" not in f or f["target"].ndim != 3:
            raise LdpmInputError(path, "is not a slice store (no 3-D 'target')", REBUILD_STORE)
        return tuple(f["target"].shape[1:])  # type: ignore[return-value]


def split_rows(manifest_csv: str | Path, split: str) -> pd.DataFrame:
    """The manifest rows of one split, sorted by (volume, slice), ``store`` resolved: the
    order of :func:`load_split`'s targets."""
    df = read_manifest(manifest_csv)
    if df.empty:
        raise LdpmInputError(manifest_csv, "manifest is empty", "rebuild it")
    return _select_split(df, split, manifest_csv)


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


def read_shard(path: str | Path, what: str = "test shard") -> dict[str, Any]:
    """A shard as a flat dict: datasets as arrays (``volume``, ``subject``, ``contrast`` as
    ``list[str]``) and the attrs (acceleration, center_fraction, mask_seed, ...)."""
    path = Path(path)
    out: dict[str, Any] = {}
    with open_hdf5(path, what, "run the step that writes it first", _REBUILD_SHARD) as f:
        for key, ds in f.items():
            if not isinstance(ds, h5py.Dataset):
                continue
            out[key] = list(ds.asstr()[()]) if ds.dtype.kind == "O" else ds[()]
        for key, value in f.attrs.items():
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _key_name(volume: Any, s: Any) -> str:
    volume = volume.decode() if isinstance(volume, bytes) else str(volume)
    return f"volume {volume} slice {int(s)}"


def check_test_shard(path: str | Path, target: np.ndarray, mask: np.ndarray,
                     volume: Sequence[Any], slices: np.ndarray) -> None:
    """Refuse a test shard whose arrays a method cannot reconstruct: target not [N, H, W],
    mask not [N, W] (W the target's, i.e. the k-space's, width), keys of another length, or
    a non-finite target or mask slice; the error names the file and the slice."""
    if target.ndim != 3:
        raise LdpmInputError(path, f"target has shape {target.shape}, expected [N, H, W]",
                             _REBUILD_SHARD)
    n, _, width = target.shape
    if mask.ndim != 2 or len(mask) != n:
        raise LdpmInputError(path, f"mask has shape {mask.shape}, expected [{n}, {width}] "
                             "(one row per target slice)", _REBUILD_SHARD)
    if mask.shape[1] != width:
        raise LdpmInputError(path, f"mask width {mask.shape[1]} differs from the k-space width "
                             f"{width} (target {target.shape})", _REBUILD_SHARD)
    if len(volume) != n or np.shape(slices) != (n,):
        raise LdpmInputError(path, f"volume ({len(volume)}) and slice {np.shape(slices)} keys "
                             f"do not match the {n} target slices", _REBUILD_SHARD)
    for name, values in (("target", target), ("mask", mask)):
        finite = np.isfinite(values).all(axis=tuple(range(1, values.ndim)))
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise LdpmInputError(path, f"{name} of row {i} ({_key_name(volume[i], slices[i])}) "
                                 "contains NaN or inf", _REBUILD_SHARD)


def read_test_shard(path: str | Path) -> dict[str, np.ndarray]:
    """``target``, ``mask``, ``volume`` (as stored) and ``slice`` of a test shard, checked
    with :func:`check_test_shard`; a missing dataset or unreadable file names the file."""
    path = Path(path)
    with open_hdf5(path, "test shard", "run the test-shard step first", _REBUILD_SHARD) as f:
        missing = [k for k in ("target", "mask", "volume", "slice")
                   if not isinstance(f.get(k), h5py.Dataset)]
        if missing:
            raise LdpmInputError(path, f"test shard has no {', '.join(map(repr, missing))} "
                                 "dataset", _REBUILD_SHARD)
        data = {k: f[k][()] for k in ("target", "mask", "volume", "slice")}
    for key in ("target", "mask"):
        if data[key].dtype.kind not in "fiu":
            raise LdpmInputError(path, f"{key} has dtype {data[key].dtype}, expected float",
                                 _REBUILD_SHARD)
    check_test_shard(path, data["target"], data["mask"], data["volume"], data["slice"])
    return data
